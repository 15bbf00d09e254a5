"""Fine-tuning a pretrained model: classification, instruction following, LoRA.

* :mod:`~scratchllm.finetune.common` — the one recipe (:func:`~.common.run_finetune`): load the
  base, build the model, choose what trains, run the loop, score, write the adapter; plus the
  fine-tuning config defaults and ``lora merge``;
* :mod:`~scratchllm.finetune.classify` — a new class head (GPT: last real token; BERT: ``[CLS]``);
* :mod:`~scratchllm.finetune.instruct` — Alpaca-style instruction tuning with prompt masking.

The tasks they train are in :mod:`scratchllm.tasks`, the models in
:mod:`scratchllm.model.finetuned`, the scores in :mod:`scratchllm.evaluate`.
"""
