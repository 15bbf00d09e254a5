"""Scoring a BERT: masked-token accuracy, MLM perplexity and next-sentence accuracy."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import torch

from scratchllm.data import mlm as mlm_data
from scratchllm.device import model_device


def mlm_batch(examples: mlm_data.PretrainingExamples, batch_size: int, rng: random.Random) -> dict:
    """One batch of masked examples drawn with ``rng`` (the masking and the sentence pairs too)."""
    return mlm_data.collate([examples.example(rng) for _ in range(batch_size)], examples.special.pad)


def bert_forward(
    model: Any, batch: dict[str, torch.Tensor], *, mlm: bool = True, nsp: bool = True
) -> tuple[torch.Tensor, dict[str, float]]:
    """Run a BERT on a batch: its pretraining loss and metrics
    (see :func:`~scratchllm.model.bert.bert_losses`)."""
    from scratchllm.model.bert import bert_losses

    out = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"])
    return bert_losses(out, batch["mlm_labels"] if mlm else None, batch["nsp_labels"] if nsp else None)


@torch.no_grad()
def evaluate_mlm(
    model: Any,
    examples: mlm_data.PretrainingExamples,
    *,
    batch_size: int,
    max_batches: int,
    mlm: bool = True,
    nsp: bool = True,
    progress: Callable[[Any], Any] | None = None,
) -> dict[str, float]:
    """``val_loss`` (MLM + NSP), ``perplexity`` (of the MLM loss), ``masked_token_accuracy`` and
    ``nsp_accuracy`` on ``max_batches`` held-out batches (and ``tokens``: how many it read).

    Batch ``i`` is drawn from a generator seeded with ``"val/i"``: the same positions are masked
    and the same sentence pairs made every time, so two checkpoints are scored on the same exercise
    — and with the same 15 % / 80-10-10 masking the model was trained with.
    """
    was_training = model.training
    model.eval()
    device = model_device(model)
    sums = {"loss": 0.0, "mlm_nll": 0.0, "masked": 0.0, "mlm_correct": 0.0, "nsp_correct": 0.0, "n": 0}
    tokens = 0
    try:
        steps = range(max_batches)
        for i in progress(steps) if progress else steps:
            batch = mlm_batch(examples, batch_size, random.Random(f"val/{i}"))
            tokens += int(batch["attention_mask"].sum())
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, m = bert_forward(model, batch, mlm=mlm, nsp=nsp)
            n_masked = m.get("n_masked", 0.0)
            sums["loss"] += loss.item()
            sums["mlm_nll"] += m.get("mlm_loss", 0.0) * n_masked
            sums["masked"] += n_masked
            sums["mlm_correct"] += m.get("masked_token_accuracy", 0.0) * n_masked
            sums["nsp_correct"] += m.get("nsp_accuracy", 0.0)
            sums["n"] += 1
    finally:
        model.train(was_training)
    n = max(sums["n"], 1)
    out = {"val_loss": sums["loss"] / n, "tokens": tokens}
    if mlm and sums["masked"]:
        out["perplexity"] = math.exp(min(sums["mlm_nll"] / sums["masked"], 50.0))
        out["masked_token_accuracy"] = sums["mlm_correct"] / sums["masked"]
    if nsp:
        out["nsp_accuracy"] = sums["nsp_correct"] / n
    return out
