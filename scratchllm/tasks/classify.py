"""Classification fine-tuning's task: cross-entropy on the class logits of labelled texts.

The data side (reading labelled CSV/TSV/JSONL, balancing, splitting) is
:mod:`scratchllm.data.classification`; the model side (a GPT read at its last real token, or a
BERT's pooled ``[CLS]``) is :mod:`scratchllm.model.finetuned`; scoring is
:mod:`scratchllm.evaluate.classify`. The whole job — base model in, fine-tuned run out — is
:func:`scratchllm.finetune.classify.finetune_classify`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from scratchllm.data.batches import EpochBatches
from scratchllm.data.classification import (  # noqa: F401  (ClassificationData, load_...: re-exported)
    ClassificationData,
    EncodedExample,
    collate_classification,
    load_classification_data,
)
from scratchllm.device import unwrap
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluate.classify import evaluate_classifier


class ClassificationTask:
    """The loop's :class:`~scratchllm.tasks.base.Task` for classification.

    Loss: cross-entropy between the model's class logits for each row and its label.
    Evaluation: val loss, accuracy and macro F1 over (up to ``max_batches``) val batches.
    """

    def __init__(
        self,
        train: Sequence[EncodedExample],
        val: Sequence[EncodedExample],
        labels: Sequence[str],
        *,
        batch_size: int,
        pad_id: int,
        eval_batch_size: int | None = None,
    ) -> None:
        if not train:
            raise ScratchLLMError("no training examples")
        self.train, self.val, self.labels = list(train), list(val), list(labels)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.pad_id = pad_id

    def collate(self, items: list[EncodedExample]) -> dict[str, torch.Tensor]:
        return collate_classification(items, self.pad_id)

    def train_batches(self, *, seed: int, rank: int = 0, world_size: int = 1) -> EpochBatches:
        return EpochBatches(
            self.train, self.batch_size, self.collate, seed=seed, rank=rank, world_size=world_size
        )

    def loss(self, model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = model(batch["input_ids"], lengths=batch["lengths"])
        # aux_loss: zero for dense models, the load-balancing loss for a Mixture-of-Experts base.
        loss = F.cross_entropy(logits, batch["labels"]) + unwrap(model).aux_loss()
        accuracy = (logits.detach().argmax(-1) == batch["labels"]).float().mean()
        return loss, {"accuracy": accuracy}

    def evaluate(self, model: Any, *, max_batches: int) -> dict[str, float]:
        if not self.val:
            return {}
        scores = evaluate_classifier(
            unwrap(model),
            self.val,
            self.labels,
            pad_id=self.pad_id,
            batch_size=self.eval_batch_size,
            max_batches=max_batches,
        )
        return {"val_loss": scores["loss"], "accuracy": scores["accuracy"], "f1": scores["f1"]}

    def sample(self, model: Any) -> str | None:
        return None
