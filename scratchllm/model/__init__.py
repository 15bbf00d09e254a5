"""Models: the GPT (its variants are config switches), BERT, the encoder-decoder, and their parts.

* :mod:`~scratchllm.model.config` — :class:`BlockConfig` (what every transformer block reads),
  :class:`GPTConfig` and the named presets;
* :mod:`~scratchllm.model.layers` — norms, activations, the feed-forward net, positional encodings;
* :mod:`~scratchllm.model.attention` — the attention every model runs;
  :mod:`~scratchllm.model.teaching` — the book's step-by-step attention classes;
* :mod:`~scratchllm.model.kv_cache` — the preallocated key/value cache;
* :mod:`~scratchllm.model.gpt` — the transformer block and ``GPTModel``, top to bottom;
* :mod:`~scratchllm.model.moe`, :mod:`~scratchllm.model.bert`, :mod:`~scratchllm.model.seq2seq` —
  Mixture-of-Experts, the encoder-only and the encoder-decoder transformers;
* :mod:`~scratchllm.model.lora`, :mod:`~scratchllm.model.finetuned` — LoRA layers, and the
  fine-tuned models (LoRA GPT, GPT and BERT classifiers);
* :mod:`~scratchllm.model.quantize` — int8 weights for fast CPU decoding.

Which name in a ``config.json`` means which class is the architecture registry,
:mod:`scratchllm.architectures`. Importing this package imports nothing heavy.
"""
