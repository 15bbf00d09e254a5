"""Tasks for the rest of the transformer family: BERT pretraining and seq2seq translation.

Both implement the :class:`~scratchllm.train.task.Task` protocol, so they train through the one
loop (:func:`scratchllm.train.loop.train`) with the same checkpoints, resume, metrics and plots as
the GPT. :func:`bert_task` and :func:`seq2seq_task` are the task factories that
``scratchllm train --arch bert|seq2seq`` reaches through
:data:`scratchllm.train.pretrain.TASK_FACTORIES`.

Batches are drawn from a generator seeded by ``(seed, rank, batch number)``: the batch number is the
whole state of a :class:`BatchSource`, so ``--resume`` continues with exactly the batches an
uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from scratchllm.data import mlm as mlm_data
from scratchllm.data import seq2seq as s2s_data
from scratchllm.errors import ScratchLLMError
from scratchllm.io import read_text
from scratchllm.tokenizer.base import Tokenizer
from scratchllm.train.task import model_device, unwrap


class SeededBatches:
    """A resumable ``BatchSource``: batch ``n`` is ``make(random.Random(f(seed, rank, n)))``."""

    def __init__(self, make: Callable[[random.Random], dict], *, seed: int, rank: int = 0) -> None:
        self.make, self.seed, self.rank, self.n = make, seed, rank, 0

    def next_batch(self) -> dict[str, torch.Tensor]:
        rng = random.Random(f"{self.seed}/{self.rank}/{self.n}")
        self.n += 1
        return self.make(rng)

    def state_dict(self) -> dict[str, Any]:
        return {"batches_drawn": self.n}

    def load_state_dict(self, state: dict[str, Any], *, strict: bool = True) -> None:
        self.n = int(state["batches_drawn"])


# =========================================================================== BERT


class BertPretrainingTask:
    """MLM and/or NSP pretraining (see :mod:`scratchllm.data.mlm`).

    ``evaluate`` reports ``val_loss`` (MLM + NSP), ``perplexity`` (of the MLM loss),
    ``masked_token_accuracy`` and ``nsp_accuracy`` on fixed held-out batches.
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
    ) -> None:
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.special = mlm_data.BertSpecialIds.of(tokenizer)
        self.mlm, self.nsp = mlm, nsp

        def examples(docs: list[list[str]]) -> mlm_data.PretrainingExamples:
            ids = [[tokenizer.encode(s) for s in doc] for doc in docs]
            return mlm_data.PretrainingExamples(
                ids,
                special=self.special,
                vocab_size=tokenizer.vocab_size,
                context_length=context_length,
                mlm=mlm,
                nsp=nsp,
                mask_prob=mask_prob,
            )

        self.train_examples, self.val_examples = examples(train_docs), examples(val_docs)

    def _batch(self, source: mlm_data.PretrainingExamples, rng: random.Random) -> dict:
        return mlm_data.collate([source.example(rng) for _ in range(self.batch_size)], self.special.pad)

    def train_batches(self, *, seed: int, rank: int = 0, world_size: int = 1) -> SeededBatches:
        return SeededBatches(lambda rng: self._batch(self.train_examples, rng), seed=seed, rank=rank)

    def _forward(
        self, model: Any, batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        from scratchllm.model.bert import bert_losses

        out = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"])
        return bert_losses(
            out, batch["mlm_labels"] if self.mlm else None, batch["nsp_labels"] if self.nsp else None
        )

    def loss(self, model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        loss, metrics = self._forward(model, batch)
        keep = ("masked_token_accuracy", "nsp_accuracy")
        return loss, {k: v for k, v in metrics.items() if k in keep}

    @torch.no_grad()
    def evaluate(self, model: Any, *, max_batches: int) -> dict[str, float]:
        model.eval()  # no dropout (the loop switches back to train mode afterwards)
        device = model_device(model)
        sums = {"loss": 0.0, "mlm_nll": 0.0, "masked": 0.0, "mlm_correct": 0.0, "nsp_correct": 0.0, "n": 0}
        for i in range(max_batches):
            batch = self._batch(self.val_examples, random.Random(f"val/{i}"))
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, m = self._forward(model, batch)
            n_masked = m.get("n_masked", 0.0)
            sums["loss"] += loss.item()
            sums["mlm_nll"] += m.get("mlm_loss", 0.0) * n_masked
            sums["masked"] += n_masked
            sums["mlm_correct"] += m.get("masked_token_accuracy", 0.0) * n_masked
            sums["nsp_correct"] += m.get("nsp_accuracy", 0.0)
            sums["n"] += 1
        n = max(sums["n"], 1)
        out = {"val_loss": sums["loss"] / n}
        if self.mlm and sums["masked"]:
            out["perplexity"] = math.exp(min(sums["mlm_nll"] / sums["masked"], 50.0))
            out["masked_token_accuracy"] = sums["mlm_correct"] / sums["masked"]
        if self.nsp:
            out["nsp_accuracy"] = sums["nsp_correct"] / n
        return out

    def sample(self, model: Any) -> str | None:
        """Mask every 6th character/token of a held-out sentence and show what the model fills in."""
        if not self.mlm:
            return None
        from scratchllm.model.bert import fill_mask_ids

        model.eval()
        sentence = self.val_examples.docs[0][0][: self.val_examples.context_length - 2]
        masked = [self.special.mask if k % 6 == 3 else t for k, t in enumerate(sentence)]
        filled = fill_mask_ids(
            unwrap(model), [self.special.cls, *masked, self.special.sep], self.special.mask
        )
        ids = [self.special.cls, *masked, self.special.sep]
        for pos, cands in filled:
            ids[pos] = cands[0][0]
        dec = self.tokenizer.decode
        return f"masked: {dec(masked)}\nfilled: {dec(ids[1:-1])}\nreal:   {dec(sentence)}"


# =========================================================================== seq2seq


class Seq2SeqTask:
    """Teacher-forced training on ``(source, target)`` pairs; greedy decoding for evaluation.

    ``evaluate`` reports ``val_loss`` and ``perplexity`` (plain cross-entropy, no label smoothing),
    ``exact_match`` (fraction of outputs equal to the reference) and ``bleu`` (sacrebleu corpus BLEU;
    character-level for a char tokenizer) on the held-out pairs.
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
        self.special = s2s_data.Seq2SeqSpecialIds(tokenizer)
        self.train = s2s_data.encode_pairs(train_pairs, tokenizer, max_len=context_length)
        self.val_pairs = list(val_pairs)
        self.val = s2s_data.encode_pairs(val_pairs, tokenizer, max_len=context_length)
        self.eval_examples = eval_examples
        # Decoding stops at <eos>, but an untrained model never says it: cap outputs a little above
        # the longest training target so early evaluations stay cheap.
        self.max_decode_len = min(context_length, max(len(t) for _, t in self.train) + 8)

    def _collate(self, examples: Sequence[tuple[list[int], list[int]]]) -> dict:
        return s2s_data.collate_pairs(examples, src_pad=self.special.pad, tgt=self.special)

    def train_batches(self, *, seed: int, rank: int = 0, world_size: int = 1) -> SeededBatches:
        def make(rng: random.Random) -> dict:
            return self._collate([self.train[rng.randrange(len(self.train))] for _ in range(self.batch_size)])

        return SeededBatches(make, seed=seed, rank=rank)

    def loss(self, model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = model(batch["src_ids"], batch["tgt_in"], batch["src_mask"])
        return unwrap(model).loss(logits, batch["labels"]) + unwrap(model).aux_loss(), {}

    def translate(self, model: Any, sources: Sequence[str], *, beam: int = 1) -> list[str]:
        """Decode source strings (greedy in batches for ``beam=1``, else beam search one by one)."""
        from scratchllm.model.seq2seq import translate

        m = unwrap(model)
        return translate(m, self.tokenizer, sources, beam=beam, batch_size=256, max_len=self.max_decode_len)

    @torch.no_grad()
    def evaluate(self, model: Any, *, max_batches: int) -> dict[str, float]:
        import torch.nn.functional as F

        model.eval()
        device = model_device(model)
        nll, count = 0.0, 0
        for i in range(0, min(len(self.val), max_batches * self.batch_size), self.batch_size):
            batch = {k: v.to(device) for k, v in self._collate(self.val[i : i + self.batch_size]).items()}
            logits = model(batch["src_ids"], batch["tgt_in"], batch["src_mask"])
            labels = batch["labels"]
            nll += F.cross_entropy(
                logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
            ).item()
            count += int((labels != -100).sum())
        pairs = self.val_pairs[: self.eval_examples]
        hyps = self.translate(model, [s for s, _ in pairs])
        refs = [t for _, t in pairs]
        val_loss = nll / max(count, 1)
        return {
            "val_loss": val_loss,
            "perplexity": math.exp(min(val_loss, 50.0)),
            "exact_match": sum(h == r for h, r in zip(hyps, refs, strict=True)) / max(len(refs), 1),
            "bleu": corpus_bleu(hyps, refs, char_level=self.tokenizer.kind == "char"),
        }

    @torch.no_grad()
    def sample(self, model: Any) -> str | None:
        model.eval()
        pairs = self.val_pairs[:4]
        hyps = self.translate(model, [s for s, _ in pairs])
        return "\n".join(f"{s!r} -> {h!r} (reference {t!r})" for (s, t), h in zip(pairs, hyps, strict=True))


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str], *, char_level: bool = False) -> float:
    """sacrebleu's corpus BLEU (0-100); character n-grams when ``char_level`` (short outputs like dates
    have too few words for word BLEU to say anything)."""
    import sacrebleu

    if not hyps:
        return 0.0
    return float(
        sacrebleu.corpus_bleu(list(hyps), [list(refs)], tokenize="char" if char_level else "13a").score
    )


# =========================================================================== task factories
# ``scratchllm train --arch bert|seq2seq`` finds these through
# :data:`scratchllm.train.pretrain.TASK_FACTORIES`: ``--data`` and the resolved configs in, a
# :class:`~scratchllm.train.pretrain.TaskSpec` (task, tokenizer, completed model config) out.


def _read_text_data(data: str) -> tuple[str, str]:
    """``--data`` for BERT: ``default`` (embedded corpus), a text file, or a directory of ``*.txt``."""
    from scratchllm.data.corpus import default_corpus

    if data == "default":
        return default_corpus(), "default corpus"
    path = Path(data)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            if (path / "train.bin").is_file():
                raise ScratchLLMError(
                    f"{path} holds prepared token shards; BERT needs sentences, so give the text file "
                    "itself (or --data default)"
                )
            raise ScratchLLMError(f"no .txt files in {path}; give a text file or --data default")
        return "\n\n".join(read_text(f, "training text") for f in files), str(path)
    if not path.exists():
        raise ScratchLLMError(f"training text not found: {path} (give a .txt file, a directory or 'default')")
    return read_text(path, "training text"), str(path)


def _split_docs(docs: list[list[str]], seed: int) -> tuple[list[list[str]], list[list[str]]]:
    """Hold out ~10 % of the documents (at least one) for evaluation; split sentences if only one."""
    if len(docs) == 1:
        sents = docs[0]
        cut = max(2, len(sents) // 10)
        return [sents[:-cut]], [sents[-cut:]]
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, len(docs) // 10)
    return [docs[i] for i in order[n_val:]], [docs[i] for i in order[:n_val]]


def _context(model_config: Any, cfg: Any) -> int:
    ctx = cfg.context_length or model_config.context_length
    if ctx > model_config.context_length:
        raise ScratchLLMError(
            f"train context_length {ctx} exceeds the model's context_length {model_config.context_length}"
        )
    return ctx


def bert_task(data: str | Path, model_config: Any, cfg: Any, *, tokenizer: Tokenizer | None = None) -> Any:
    """BERT pretraining from text (``default``, a ``.txt`` file or a directory of them).

    Documents are separated by blank lines; ~10 % of them are held out. Without a run tokenizer a
    char tokenizer is built from the text; ``[PAD] [CLS] [SEP] [MASK]`` are appended to it.
    """
    from dataclasses import replace

    from scratchllm.tokenizer import CharTokenizer
    from scratchllm.train.pretrain import TaskSpec

    text, source = _read_text_data(str(data))
    docs = mlm_data.split_documents(text)
    tok = mlm_data.with_special_tokens(tokenizer or CharTokenizer.train(text), mlm_data.BERT_SPECIAL_TOKENS)
    model_config = replace(model_config, vocab_size=tok.vocab_size)
    train_docs, val_docs = _split_docs(docs, seed=0)
    task = BertPretrainingTask(
        tok,
        train_docs,
        val_docs,
        context_length=_context(model_config, cfg),
        batch_size=cfg.batch_size,
        mlm=model_config.mlm,
        nsp=model_config.nsp,
        mask_prob=model_config.mask_prob,
    )
    extra = {"data": {"source": source, "train_documents": len(train_docs), "val_documents": len(val_docs)}}
    return TaskSpec(task=task, tokenizer=tok, model_config=model_config, extra=extra)


def seq2seq_task(data: str | Path, model_config: Any, cfg: Any, *, tokenizer: Tokenizer | None = None) -> Any:
    """Seq2seq on ``dates`` (the built-in task: 20,000 train / 500 held-out pairs) or a TSV file
    (10 % of the pairs, at most 500, held out). One shared char vocabulary by default."""
    from dataclasses import replace

    from scratchllm.tokenizer import CharTokenizer
    from scratchllm.train.pretrain import TaskSpec

    if str(data) == "dates":
        train_pairs, val_pairs = s2s_data.date_task_splits(seed=0)
        source, alphabet = "built-in date task", s2s_data.date_task_alphabet()
    else:
        pairs = s2s_data.read_parallel_tsv(data)
        if len(pairs) < 2:
            raise ScratchLLMError(f"{data} needs at least 2 pairs (one is held out for evaluation)")
        random.Random(0).shuffle(pairs)
        n_val = max(1, min(500, len(pairs) // 10))
        train_pairs, val_pairs = pairs[n_val:], pairs[:n_val]
        source, alphabet = str(data), "".join(s + t for s, t in pairs)
    base = tokenizer or CharTokenizer.train(alphabet, special_tokens=())
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
    task = Seq2SeqTask(
        tok, train_pairs, val_pairs, context_length=_context(model_config, cfg), batch_size=cfg.batch_size
    )
    extra = {"data": {"source": source, "train_pairs": len(train_pairs), "val_pairs": len(val_pairs)}}
    return TaskSpec(task=task, tokenizer=tok, model_config=model_config, extra=extra)
