"""Scoring and using classifiers: predictions, probabilities, loss and the classification metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from scratchllm.data.batches import fixed_batches
from scratchllm.data.classification import EncodedExample, Example, collate_classification, encode_examples
from scratchllm.device import model_device
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluate.metrics import classification_metrics


def encode_for_classifier(
    examples: Sequence[Example], tokenizer: Any, labels: Sequence[str], fmt: Any, *, max_length: int
) -> tuple[list[EncodedExample], int]:
    """:func:`~scratchllm.data.classification.encode_examples`, each row then wrapped in the model's
    :class:`~scratchllm.model.finetuned.TextFormat` (``fmt``: ``[CLS] ... [SEP]`` for a BERT).

    ``max_length`` is the room for the text itself (the context length minus ``fmt.extra``).
    Returns the examples and how many texts were truncated.
    """
    if max_length < 1:
        raise ScratchLLMError(f"--max-length leaves no room for text (the model adds {fmt.extra} tokens)")
    enc, truncated = encode_examples(examples, tokenizer, labels, max_length=max_length)
    return [EncodedExample(fmt.wrap(e.ids), e.label) for e in enc], truncated


@torch.no_grad()
def predict(
    model: Any,
    examples: Sequence[EncodedExample],
    *,
    pad_id: int,
    batch_size: int = 32,
    max_batches: int | None = None,
    progress: Callable[[Any], Any] | None = None,
) -> tuple[list[int], list[list[float]], float]:
    """Class predictions, class probabilities and the mean cross-entropy over ``examples``."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    preds: list[int] = []
    probs: list[list[float]] = []
    total, n = 0.0, 0
    batches = fixed_batches(examples, batch_size, max_batches)
    for chunk in progress(batches) if progress else batches:
        b = collate_classification(chunk, pad_id)
        logits = model(b["input_ids"].to(device), lengths=b["lengths"].to(device)).float()
        total += F.cross_entropy(logits, b["labels"].to(device), reduction="sum").item()
        n += len(chunk)
        p = logits.softmax(-1)
        preds.extend(p.argmax(-1).tolist())
        probs.extend(p.tolist())
    model.train(was_training)
    return preds, probs, total / max(n, 1)


def evaluate_classifier(
    model: Any,
    examples: Sequence[EncodedExample],
    labels: Sequence[str],
    *,
    pad_id: int,
    batch_size: int = 32,
    max_batches: int | None = None,
    progress: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Loss plus :func:`~scratchllm.evaluate.metrics.classification_metrics` on ``examples``."""
    preds, _, loss = predict(
        model, examples, pad_id=pad_id, batch_size=batch_size, max_batches=max_batches, progress=progress
    )
    truth = [e.label for e in examples[: len(preds)]]
    return {"loss": loss, **classification_metrics(truth, preds, labels)}


@torch.no_grad()
def classify_texts(model: Any, tokenizer: Any, texts: Sequence[str]) -> list[dict[str, Any]]:
    """Label texts with a loaded ``gpt-classifier`` or ``bert-classifier``.

    Returns one dict per text: ``text``, ``label``, its ``probability`` and all ``probabilities``.
    """
    labels = model.config.label_names
    fmt = model.text_format(tokenizer)
    room = model.config.context_length - fmt.extra
    examples = []
    for t in texts:
        if not t.strip():
            raise ScratchLLMError("cannot classify an empty text")
        ids = tokenizer.encode(t)[:room]
        examples.append(EncodedExample(fmt.wrap(ids), 0))
    preds, probs, _ = predict(model, examples, pad_id=fmt.pad_id)
    return [
        {
            "text": t,
            "label": labels[p],
            "probability": pr[p],
            "probabilities": {name: pr[i] for i, name in enumerate(labels)},
        }
        for t, p, pr in zip(texts, preds, probs)
    ]
