"""The ``scratchllm`` command line: one thin module per verb over library functions."""
