"""Converters between scratchllm's formats and other ecosystems.

:mod:`scratchllm.convert.hf_gpt2` reads and writes GPT-2 checkpoints in the Hugging Face
``transformers`` layout, so a model trained here can be used there and OpenAI's GPT-2 weights
(downloaded from the Hugging Face hub) can be run, evaluated and fine-tuned here.
"""
