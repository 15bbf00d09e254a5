"""Encoder-decoder training: teacher-forced ``(source, target)`` pairs, greedy decoding to evaluate."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from scratchllm.data import mlm as mlm_data
from scratchllm.data import seq2seq as s2s_data
from scratchllm.data.batches import SeededBatches
from scratchllm.device import unwrap
from scratchllm.evaluate.seq2seq import collate_pairs, evaluate_seq2seq
from scratchllm.tasks.base import TaskSpec, data_record, train_context
from scratchllm.tokenizer.base import Tokenizer


class Seq2SeqTask:
    """Teacher-forced training on ``(source, target)`` pairs; greedy decoding for evaluation.

    ``evaluate`` reports ``val_loss`` and ``perplexity`` (plain cross-entropy, no label smoothing),
    ``exact_match`` (fraction of outputs equal to the reference), ``cer`` (character error rate)
    and ``bleu`` (sacrebleu corpus BLEU; character-level for a char tokenizer) on the held-out pairs
    (:func:`scratchllm.evaluate.seq2seq.evaluate_seq2seq`).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        train_pairs: Sequence[tuple[str, str]],
        val_pairs: Sequence[tuple[str, str]],
        *,
        context_length: int,
        batch_size: int,
        eval_examples: int = 200,
    ) -> None:
        self.tokenizer, self.batch_size, self.context_length = tokenizer, batch_size, context_length
        self.train = s2s_data.encode_pairs(train_pairs, tokenizer, max_len=context_length)
        self.val_pairs = list(val_pairs)
        s2s_data.encode_pairs(val_pairs, tokenizer, max_len=context_length)  # fail now, not at eval
        self.eval_examples = eval_examples
        # Decoding stops at <eos>, but an untrained model never says it: cap outputs a little above
        # the longest training target so early evaluations stay cheap.
        self.max_decode_len = min(context_length, max(len(t) for _, t in self.train) + 8)

    def train_batches(self, *, seed: int, rank: int = 0, world_size: int = 1) -> SeededBatches:
        def make(rng: random.Random) -> dict:
            chosen = [self.train[rng.randrange(len(self.train))] for _ in range(self.batch_size)]
            return collate_pairs(chosen, self.tokenizer)

        return SeededBatches(make, seed=seed, rank=rank)

    def loss(self, model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = model(batch["src_ids"], batch["tgt_in"], batch["src_mask"])
        return unwrap(model).loss(logits, batch["labels"]) + unwrap(model).aux_loss(), {}

    def translate(self, model: Any, sources: Sequence[str], *, beam: int = 1) -> list[str]:
        """Decode source strings (greedy in batches for ``beam=1``, else beam search one by one)."""
        from scratchllm.generate.seq2seq import translate

        return translate(
            unwrap(model), self.tokenizer, sources, beam=beam, batch_size=256, max_len=self.max_decode_len
        )

    def evaluate(self, model: Any, *, max_batches: int) -> dict[str, float]:
        return evaluate_seq2seq(
            model,
            self.tokenizer,
            self.val_pairs,
            batch_size=self.batch_size,
            max_loss_examples=max_batches * self.batch_size,
            max_decode_examples=self.eval_examples,
            max_decode_len=self.max_decode_len,
            max_len=self.context_length,
        )

    @torch.no_grad()
    def sample(self, model: Any) -> str | None:
        model.eval()
        pairs = self.val_pairs[:4]
        hyps = self.translate(model, [s for s, _ in pairs])
        return "\n".join(f"{s!r} -> {h!r} (reference {t!r})" for (s, t), h in zip(pairs, hyps, strict=True))


def with_seq2seq_vocabulary(base: Tokenizer, model_config: Any) -> tuple[Tokenizer, Any]:
    """``base`` with ``<pad> <bos> <eos>`` appended, and ``model_config`` sized for it.

    Source and target share that one vocabulary; the config's pad/bos/eos ids point at the
    appended tokens. Returns ``(tokenizer, validated config)``."""
    tok = mlm_data.with_special_tokens(base, s2s_data.SEQ2SEQ_SPECIAL_TOKENS)
    sp = s2s_data.Seq2SeqSpecialIds(tok)
    model_config = replace(
        model_config,
        src_vocab_size=tok.vocab_size,
        tgt_vocab_size=tok.vocab_size,
        pad_id=sp.pad,
        bos_id=sp.bos,
        eos_id=sp.eos,
        src_pad_id=sp.pad,
    )
    model_config.validate()
    return tok, model_config


def seq2seq_task(
    data: str | Path, model_config: Any, cfg: Any, *, tokenizer: Tokenizer | None = None
) -> TaskSpec:
    """Seq2seq on ``dates`` (the built-in task: 20,000 train / 500 held-out pairs) or a TSV file
    (10 % of the pairs, at most 500, held out).

    Source and target share one vocabulary: ``tokenizer`` (a trained one from ``--tokenizer``, or
    the run's own on resume) or, without one, the characters of the data; ``<pad> <bos> <eos>``
    are appended to it.
    """
    from scratchllm.tokenizer import CharTokenizer

    if str(data) == "dates":
        train_pairs, val_pairs = s2s_data.date_task_splits(seed=0)
        source, alphabet = "built-in date task", s2s_data.date_task_alphabet()
    else:
        pairs = s2s_data.read_parallel_tsv(data)
        train_pairs, val_pairs = s2s_data.hold_out_pairs(pairs, where=str(data))
        source, alphabet = str(data), "".join(s + t for s, t in pairs)
    base = tokenizer or CharTokenizer.train(alphabet, special_tokens=())
    tok, model_config = with_seq2seq_vocabulary(base, model_config)
    task = Seq2SeqTask(
        tok,
        train_pairs,
        val_pairs,
        context_length=train_context(model_config, cfg),
        batch_size=cfg.batch_size,
    )
    extra = data_record(source, tok, train_pairs=len(train_pairs), val_pairs=len(val_pairs))
    return TaskSpec(task=task, tokenizer=tok, model_config=model_config, extra=extra)
