"""Scoring an encoder-decoder: loss on the references, then exact match and BLEU of its own outputs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from scratchllm.data import seq2seq as s2s_data
from scratchllm.device import model_device, unwrap
from scratchllm.evaluate.metrics import corpus_bleu


def collate_pairs(examples: Sequence[tuple[list[int], list[int]]], tokenizer: Any) -> dict[str, torch.Tensor]:
    """Pad encoded pairs into one teacher-forcing batch (``src_ids``, ``tgt_in``, ``labels``...)."""
    special = s2s_data.Seq2SeqSpecialIds(tokenizer)
    return s2s_data.collate_pairs(examples, src_pad=special.pad, tgt=special)


@torch.no_grad()
def reference_loss(
    model: Any,
    tokenizer: Any,
    encoded: Sequence[tuple[list[int], list[int]]],
    *,
    batch_size: int,
    max_examples: int | None = None,
) -> float:
    """Mean per-token cross-entropy of the reference targets under teacher forcing (no label
    smoothing: this is the loss whose exp is a perplexity)."""
    device = model_device(model)
    nll, count = 0.0, 0
    n = len(encoded) if max_examples is None else min(len(encoded), max_examples)
    for i in range(0, n, batch_size):
        batch = {
            k: v.to(device) for k, v in collate_pairs(encoded[i : min(i + batch_size, n)], tokenizer).items()
        }
        logits = model(batch["src_ids"], batch["tgt_in"], batch["src_mask"])
        labels = batch["labels"]
        nll += F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
        ).item()
        count += int((labels != -100).sum())
    return nll / max(count, 1)


def output_metrics(hyps: Sequence[str], refs: Sequence[str], *, char_level: bool) -> dict[str, float]:
    """Exact match (share of outputs equal to the reference), character error rate and corpus BLEU."""
    from scratchllm.evaluate.metrics import character_error_rate

    n = max(len(refs), 1)
    return {
        "exact_match": sum(h == r for h, r in zip(hyps, refs, strict=True)) / n,
        "cer": character_error_rate(hyps, refs),
        "bleu": corpus_bleu(hyps, refs, char_level=char_level),
    }


@torch.no_grad()
def evaluate_seq2seq(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int,
    max_loss_examples: int | None = None,
    max_decode_examples: int = 200,
    max_decode_len: int | None = None,
    max_len: int | None = None,
    beam: int = 1,
    progress: Callable[[Any], Any] | None = None,
) -> dict[str, float]:
    """``val_loss`` and ``perplexity`` on the reference targets, then ``exact_match``, ``cer`` and
    ``bleu`` (character BLEU for a char tokenizer) of the model's own greedy (or beam) outputs for
    the first ``max_decode_examples`` pairs. Pairs longer than ``max_len`` (default: the model's
    context length) are an error naming the first one."""
    from scratchllm.generate.seq2seq import translate

    was_training = model.training
    model.eval()
    try:
        m = unwrap(model)
        encoded = s2s_data.encode_pairs(pairs, tokenizer, max_len=max_len or m.config.context_length)
        loss = reference_loss(m, tokenizer, encoded, batch_size=batch_size, max_examples=max_loss_examples)
        chosen = list(pairs)[:max_decode_examples]
        sources = [s for s, _ in chosen]
        # Decoded 256 sources at a time (``progress`` wraps that loop): the batches translate makes.
        chunks = [sources[i : i + 256] for i in range(0, len(sources), 256)]
        hyps = [
            h
            for chunk in (progress(chunks) if progress else chunks)
            for h in translate(m, tokenizer, chunk, beam=beam, batch_size=256, max_len=max_decode_len)
        ]
    finally:
        model.train(was_training)
    return {
        "val_loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        **output_metrics(hyps, [t for _, t in chosen], char_level=tokenizer.kind == "char"),
    }
