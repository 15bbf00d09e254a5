"""Fine-tuning a pretrained GPT: classification, instruction following, LoRA.

* :mod:`~scratchllm.finetune.classify` — a new class head read at the last real token;
* :mod:`~scratchllm.finetune.instruct` — Alpaca-style instruction tuning with prompt masking;
* :mod:`~scratchllm.finetune.models` — the ``gpt-classifier`` and ``gpt-lora`` architectures;
* :mod:`~scratchllm.finetune.common` — base loading, trainable-parameter selection, adapters;
* :mod:`~scratchllm.finetune.metrics` — accuracy/precision/recall/F1, exact match, ROUGE-L.

All of them hand a *task* to the one training loop (:func:`scratchllm.train.loop.train`).
"""
