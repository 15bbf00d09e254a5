"""Shared settings of the sweep tests."""

#: A recipe small enough that a point trains in about a second: 4 x 32 = 128 tokens per step.
TINY_SETS = ["--set", "context_length=32", "--set", "batch_size=4"]
