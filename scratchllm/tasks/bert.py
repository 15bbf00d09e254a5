"""BERT pretraining: masked language modelling (MLM) and next-sentence prediction (NSP)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from scratchllm.data import mlm as mlm_data
from scratchllm.data.batches import SeededBatches
from scratchllm.device import unwrap
from scratchllm.evaluate.bert import bert_forward, evaluate_mlm, mlm_batch
from scratchllm.tasks.base import TaskSpec, data_record, read_text_data, train_context
from scratchllm.tokenizer.base import Tokenizer


class BertPretrainingTask:
    """MLM and/or NSP pretraining (see :mod:`scratchllm.data.mlm`).

    ``evaluate`` reports ``val_loss`` (MLM + NSP), ``perplexity`` (of the MLM loss),
    ``masked_token_accuracy`` and ``nsp_accuracy`` on fixed held-out batches
    (:func:`scratchllm.evaluate.bert.evaluate_mlm`).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        train_docs: list[list[str]],
        val_docs: list[list[str]],
        *,
        context_length: int,
        batch_size: int,
        mlm: bool = True,
        nsp: bool = True,
        mask_prob: float = 0.15,
        whole_word_mask: bool = False,
    ) -> None:
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.special = mlm_data.BertSpecialIds.of(tokenizer)
        self.mlm, self.nsp = mlm, nsp

        def examples(docs: list[list[str]]) -> mlm_data.PretrainingExamples:
            return mlm_data.PretrainingExamples.from_text(
                docs,
                tokenizer,
                context_length=context_length,
                mlm=mlm,
                nsp=nsp,
                mask_prob=mask_prob,
                whole_word_mask=whole_word_mask,
            )

        self.train_examples, self.val_examples = examples(train_docs), examples(val_docs)

    def train_batches(self, *, seed: int, rank: int = 0, world_size: int = 1) -> SeededBatches:
        return SeededBatches(
            lambda rng: mlm_batch(self.train_examples, self.batch_size, rng), seed=seed, rank=rank
        )

    def loss(self, model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        loss, metrics = bert_forward(model, dict(batch), mlm=self.mlm, nsp=self.nsp)
        keep = ("masked_token_accuracy", "nsp_accuracy")
        return loss + unwrap(model).aux_loss(), {k: v for k, v in metrics.items() if k in keep}

    def evaluate(self, model: Any, *, max_batches: int) -> dict[str, float]:
        return evaluate_mlm(
            model,
            self.val_examples,
            batch_size=self.batch_size,
            max_batches=max_batches,
            mlm=self.mlm,
            nsp=self.nsp,
        )

    def sample(self, model: Any) -> str | None:
        """Mask every 6th token of a held-out sentence (with whole-word masking: every 4th word, all
        its tokens) and show what the model fills in."""
        if not self.mlm:
            return None
        from scratchllm.generate.fill_mask import fill_mask_ids

        model.eval()
        n = self.val_examples.context_length - 2
        sentence = self.val_examples.docs[0][0][:n]
        word_starts = self.val_examples.word_starts
        masked, word = [], -1
        for k, t in enumerate(sentence):
            if word_starts is not None:
                word += word_starts[0][0][k]
                hide = word % 4 == 2
            else:
                hide = k % 6 == 3
            masked.append(self.special.mask if hide else t)
        filled = fill_mask_ids(
            unwrap(model), [self.special.cls, *masked, self.special.sep], self.special.mask
        )
        ids = [self.special.cls, *masked, self.special.sep]
        for pos, cands in filled:
            ids[pos] = cands[0][0]
        dec = self.tokenizer.decode
        return f"masked: {dec(masked)}\nfilled: {dec(ids[1:-1])}\nreal:   {dec(sentence)}"


def bert_task(
    data: str | Path, model_config: Any, cfg: Any, *, tokenizer: Tokenizer | None = None
) -> TaskSpec:
    """BERT pretraining from text (``default``, a ``.txt`` file or a directory of them).

    Documents are separated by blank lines; ~10 % of them are held out. ``tokenizer`` is a trained
    one (``--tokenizer``: char, word, BPE, GPT-2's) or, on resume, the run's own; without one a
    char tokenizer is built from the text. ``[PAD] [CLS] [SEP] [MASK]`` are appended to it.
    """
    from scratchllm.tokenizer import CharTokenizer

    text, source = read_text_data(data, what="BERT")
    docs = mlm_data.split_documents(text)
    tok = mlm_data.with_special_tokens(tokenizer or CharTokenizer.train(text), mlm_data.BERT_SPECIAL_TOKENS)
    model_config = replace(model_config, vocab_size=tok.vocab_size)
    train_docs, val_docs = mlm_data.split_documents_for_eval(docs, seed=0)
    task = BertPretrainingTask(
        tok,
        train_docs,
        val_docs,
        context_length=train_context(model_config, cfg),
        batch_size=cfg.batch_size,
        mlm=model_config.mlm,
        nsp=model_config.nsp,
        mask_prob=model_config.mask_prob,
        whole_word_mask=model_config.whole_word_mask,
    )
    extra = data_record(source, tok, train_documents=len(train_docs), val_documents=len(val_docs))
    return TaskSpec(task=task, tokenizer=tok, model_config=model_config, extra=extra)
