"""``scratchllm eval`` as a library: score any model on whatever data it takes.

One entry point, :func:`evaluate`, for every architecture. What is measured follows from the
model's registry record (:mod:`scratchllm.architectures`), never from its name:

=================  ============  ==============================================================
capability         task          metrics
=================  ============  ==============================================================
``generates_text`` ``lm``        ``val_loss``, ``perplexity`` on shards or text
                   ``classify``  zero-/few-shot prompting (:mod:`~scratchllm.evaluate.prompting`)
                   ``choice``    multiple choice by prompting
                   ``instruct``  ``response_loss``, ``perplexity``, ``exact_match``, ``rouge_l``
``masked_lm``      ``mlm``       ``masked_token_accuracy``, ``nsp_accuracy``, MLM ``perplexity``
``translates``     ``seq2seq``   ``exact_match``, ``cer``, ``bleu``, ``val_loss``, ``perplexity``
``is_classifier``  ``classify``  accuracy, macro precision / recall / F1, confusion matrix
=================  ============  ==============================================================

A text-generating model picks its task from the data (``--task auto``): shards or text → ``lm``,
a labelled table → ``classify``, instruction records → ``instruct``, multiple-choice records →
``choice``. Every result also has ``tokens_per_s`` (tokens the model read — and, for generation,
wrote — per second of the whole evaluation; for ``lm`` the forward passes alone, as always) and
the peak memory (``peak_rss_mb``, plus ``cuda_max_memory_mb`` on a GPU).

**Robustness.** With ``perturb`` the same examples are scored again with seeded noise on their
inputs (:mod:`scratchllm.evaluate.perturb`; references, labels and few-shot examples stay clean)
and ``drop`` says how much each metric got worse: ``clean - perturbed`` for metrics where higher
is better, ``perturbed - clean`` for losses, perplexities and error rates — so a positive drop
always means the noise hurt. With ``ood_data`` the model is also scored on a second data set
(out of domain) and ``ood_drop`` compares it with the first the same way.

**Characters a char tokenizer never saw** (out-of-domain text, mostly) cannot be encoded. They are
dropped from the model's inputs and counted (``unknown_chars_dropped``), never silently.

:func:`compare` scores several models (or one model several ways) on the same rows and returns
one table — zero-shot, few-shot, fine-tuned head, LoRA.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.evaluate import inputs
from scratchllm.evaluate.perturb import format_perturb, parse_perturb, perturb_texts

TASKS = ("lm", "mlm", "seq2seq", "classify", "instruct", "choice")
#: metrics where larger is better / smaller is better (for ``drop``).
HIGHER_IS_BETTER = frozenset(
    {"accuracy", "precision", "recall", "f1", "masked_token_accuracy", "nsp_accuracy", "exact_match"}
    | {"bleu", "rouge_l"}
)
LOWER_IS_BETTER = frozenset({"val_loss", "loss", "perplexity", "cer", "response_loss"})
#: the headline metrics of each task, in display order (the first one is the main one).
HEADLINE = {
    "lm": ("val_loss", "perplexity"),
    "mlm": ("masked_token_accuracy", "nsp_accuracy", "val_loss", "perplexity"),
    "seq2seq": ("exact_match", "cer", "bleu", "val_loss", "perplexity"),
    "classify": ("accuracy", "precision", "recall", "f1", "loss"),
    "choice": ("accuracy", "loss"),
    "instruct": ("rouge_l", "exact_match", "response_loss", "perplexity"),
}
#: ``--data`` kinds a text-generating model reads, and the task each one means.
_LM_TASK_OF_KIND = {
    "shards": "lm",
    "text": "lm",
    "labelled": "classify",
    "instruct": "instruct",
    "choice": "choice",
}
#: what each file task reads.
_FILE_KINDS = {
    "classify": ("labelled", "a CSV/TSV/JSONL table with a text and a label column"),
    "choice": ("choice", "JSON lines of question, choices and answer"),
    "instruct": ("instruct", "JSON/JSONL records of instruction, input and output"),
}


@dataclass
class Subject:
    """A model under evaluation: where it came from, what ``load_model`` returned, its record."""

    path: str
    loaded: Any  # scratchllm.runs.LoadedModel
    record: Any  # scratchllm.architectures.Architecture

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def config(self) -> dict[str, Any]:
        return self.loaded.config or {}

    def train_setting(self, key: str, default: Any) -> Any:
        """A key of the run's train config (``config.json``), or ``default``."""
        value = (self.config.get("train") or {}).get(key)
        return default if value is None else value

    def need_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ScratchLLMError(
                f"{self.path} has no tokenizer.json beside the weights; copy the run's tokenizer.json there"
            )
        return self.tokenizer


@dataclass
class EvalOptions:
    """Everything ``scratchllm eval`` can be told (the CLI flags of the same names)."""

    task: str = "auto"
    split: str = "auto"
    shots: int = 0
    normalization: str = "char"
    prompt_format: str = "auto"
    seed: int = 0
    batch_size: int | None = None
    limit: int | None = None
    max_windows: int | None = 4096
    max_batches: int | None = None
    context_length: int | None = None
    max_new_tokens: int = 256
    beam: int = 1
    split_fractions: str | None = None
    split_seed: int | None = None
    text_column: str | None = None
    label_column: str | None = None
    shots_from: str | None = None
    perturb: str | None = None
    ood_data: str | None = None
    device: str = "cpu"
    #: ``progress(desc)`` → a wrapper for batch loops (a progress bar), or None.
    progress: Callable[[str], Any] | None = field(default=None, repr=False)

    def bar(self, desc: str, spec: Any = None) -> Any:
        """A progress wrapper named ``desc`` (``(perturbed)`` added for a perturbed pass), or None."""
        return self.progress(desc + (" (perturbed)" if spec else "")) if self.progress else None


# ----------------------------------------------------------------------------- choosing the task


def tasks_for(record: Any) -> tuple[str, ...]:
    """The ``--task`` values a model of this registry record can be evaluated with (first: default)."""
    if record.is_classifier:
        return ("classify",)
    if record.masked_lm:
        return ("mlm",)
    if record.translates:
        return ("seq2seq",)
    if record.generates_text:
        return ("lm", "classify", "choice", "instruct")
    return ()


def choose_task(subject: Subject, data: str, requested: str = "auto") -> str:
    """The task to run: ``requested`` when the model supports it, else chosen from the data."""
    allowed = tasks_for(subject.record)
    what = f"{subject.path} is a {subject.loaded.arch} model"
    if not allowed:
        raise ScratchLLMError(f"{what}; 'scratchllm eval' does not know how to score it")
    if requested != "auto":
        if requested not in TASKS:
            raise ScratchLLMError(f"unknown --task {requested!r}; choose from auto, {', '.join(TASKS)}")
        if requested not in allowed:
            raise ScratchLLMError(
                f"{what}; --task {requested} does not apply (it takes: {', '.join(allowed)})"
            )
        return requested
    if len(allowed) == 1:
        return allowed[0]
    kind = inputs.sniff(data)
    if kind not in _LM_TASK_OF_KIND:
        raise ScratchLLMError(
            f"{what}, which is scored on shards, text, labelled rows, instructions or multiple-choice "
            f"questions; {data!r} is the seq2seq family's built-in task"
        )
    return _LM_TASK_OF_KIND[kind]


# ----------------------------------------------------------------------------- helpers


class KnownText:
    """Drops characters a char tokenizer cannot encode (and counts them); other tokenizers encode
    any text, so nothing is dropped for them."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.alphabet = frozenset(tokenizer.chars) if getattr(tokenizer, "kind", None) == "char" else None
        self.dropped = 0

    def clean(self, text: str) -> str:
        if self.alphabet is None:
            return text
        kept = "".join(c for c in text if c in self.alphabet)
        self.dropped += len(text) - len(kept)
        return kept

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(self.clean(text))


def _spec(opts: EvalOptions) -> list[tuple[str, float]] | None:
    return parse_perturb(opts.perturb) if opts.perturb else None


def _noisy(texts: Sequence[str], spec: Any, opts: EvalOptions, known: KnownText, salt: str = "") -> list[str]:
    """``texts`` perturbed by ``spec`` (None: unchanged), then cleaned for the tokenizer."""
    if spec:
        texts = perturb_texts(texts, spec, seed=f"{opts.seed}{salt}", alphabet=known.alphabet)
    return [known.clean(t) for t in texts]


def _finish(metrics: dict[str, Any], known: KnownText | None) -> dict[str, Any]:
    if known is not None and known.dropped:
        metrics["unknown_chars_dropped"] = known.dropped
    return metrics


def drop(clean: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    """How much worse ``other`` is than ``clean`` on each metric both have (positive = worse)."""
    out = {}
    for key, a in clean.items():
        b = other.get(key)
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or isinstance(a, bool):
            continue
        if key in HIGHER_IS_BETTER:
            out[key] = a - b
        elif key in LOWER_IS_BETTER:
            out[key] = b - a
    return out


def _measured(fn: Callable[[], dict[str, Any]], device: str) -> dict[str, Any]:
    """Run one scoring pass, adding ``seconds``, ``tokens_per_s`` (if not already there) and memory."""
    from scratchllm.evaluate.lm import memory_stats

    t0 = time.perf_counter()
    out = fn()
    seconds = max(time.perf_counter() - t0, 1e-9)
    out.setdefault("seconds", seconds)
    if "tokens_per_s" not in out and "tokens" in out:
        out["tokens_per_s"] = out["tokens"] / seconds
    out.update(memory_stats(device))
    return out


def _records(subjects: Sequence[Subject]) -> list[inputs.RunRecord]:
    found = [inputs.RunRecord.of(s.path, s.config) for s in subjects]
    return [r for r in found if r is not None]


def _prompt_format(subject: Subject, opts: EvalOptions) -> Any:
    from scratchllm.data.instruction import template_of
    from scratchllm.evaluate.prompting import FORMATS, PromptFormat

    kind = opts.prompt_format
    if kind == "auto":
        kind = "instruct" if (subject.config.get("finetune") or {}).get("task") == "instruct" else "plain"
    if kind not in FORMATS:
        raise ScratchLLMError(f"unknown --prompt-format {kind!r}; choose from auto, {', '.join(FORMATS)}")
    return PromptFormat(kind, template_of(subject.config) if kind == "instruct" else None)


# ----------------------------------------------------------------------------- one evaluator per task
#
# Each has prepare(subject, data, opts, selection=None) -> Prepared (what to score, decided once)
# and score(subject, prepared, opts, spec) -> metrics (spec: a perturbation, or None for clean).


@dataclass
class Prepared:
    describe: dict[str, Any]
    payload: dict[str, Any]


class LanguageModelEval:
    """Next-token loss and perplexity on prepared shards (``--split val``/``train``) or on text."""

    def prepare(self, s: Subject, data: str, opts: EvalOptions, selection: Any = None) -> Prepared:
        import numpy as np

        from scratchllm.data.corpus import read_text_data
        from scratchllm.data.shards import load_shards

        cfg = s.model.config
        ctx = opts.context_length or cfg.context_length
        if ctx > cfg.context_length:
            raise ScratchLLMError(
                f"--context-length {ctx} exceeds the model's context_length {cfg.context_length}"
            )
        batch_size = opts.batch_size or int(s.train_setting("batch_size", 8))
        payload: dict[str, Any] = {"ctx": ctx, "batch_size": batch_size}
        if inputs.sniff(data) == "shards":
            shards = load_shards(data)
            if s.tokenizer is not None:
                shards.check_tokenizer(s.tokenizer)
            if shards.vocab_size > cfg.vocab_size:
                raise ScratchLLMError(
                    f"the data uses {shards.vocab_size} token ids but the model only knows {cfg.vocab_size}; "
                    "prepare the data with the model's tokenizer"
                )
            split = "val" if opts.split == "auto" else opts.split
            if split not in ("val", "train"):
                raise ScratchLLMError(f"--split {split}: prepared shards have a val and a train split")
            payload.update(
                tokens=shards.val if split == "val" else shards.train,
                name=f"{shards.path}/{split}.bin",
                tokenizer=s.tokenizer or shards.load_tokenizer(),
            )
            describe = {"data": str(shards.path), "split": split}
        else:
            if opts.split not in ("auto", "all"):
                raise ScratchLLMError(f"--split {opts.split}: a text file is scored whole (--split all)")
            tok = s.need_tokenizer()
            text, source = read_text_data(data, what="eval")
            known = KnownText(tok)
            ids = tok.encode(known.clean(text))
            payload.update(
                tokens=np.asarray(ids, dtype=np.int64), name=source, tokenizer=tok, dropped=known.dropped
            )
            describe = {"data": source, "split": "all"}
        return Prepared(describe, payload)

    def score(self, s: Subject, p: Prepared, opts: EvalOptions, spec: Any) -> dict[str, Any]:
        import numpy as np

        from scratchllm.evaluate.lm import evaluate_lm

        pl = p.payload
        tokens, known = pl["tokens"], None
        if spec:
            known = KnownText(pl["tokenizer"])
            n = (
                len(tokens)
                if opts.max_windows is None
                else min(len(tokens), opts.max_windows * pl["ctx"] + 1)
            )
            lines = pl["tokenizer"].decode([int(t) for t in tokens[:n]]).split("\n")
            tokens = np.asarray(known.encode("\n".join(_noisy(lines, spec, opts, known))), dtype=np.int64)
        out = evaluate_lm(
            s.model,
            tokens,
            context_length=pl["ctx"],
            batch_size=pl["batch_size"],
            max_batches=opts.max_batches,
            max_windows=opts.max_windows,
            device=opts.device,
            name=pl["name"] + (" (perturbed)" if spec else ""),
            progress=opts.bar("eval windows", spec),
        )
        if pl.get("dropped"):
            out["unknown_chars_dropped"] = pl["dropped"] + (known.dropped if known else 0)
        return out


class MaskedLMEval:
    """A BERT: masked-token accuracy, NSP accuracy and MLM perplexity, masked the way it trained."""

    def prepare(self, s: Subject, data: str, opts: EvalOptions, selection: Any = None) -> Prepared:
        from scratchllm.data import mlm as mlm_data
        from scratchllm.data.corpus import read_text_data
        from scratchllm.data.shards import load_shards

        kind = inputs.sniff(data)
        s.need_tokenizer()
        if kind == "shards":
            shards = load_shards(data)
            split = "val" if opts.split == "auto" else opts.split
            if split not in ("val", "train"):
                raise ScratchLLMError(f"--split {split}: prepared shards have a val and a train split")
            stok = shards.load_tokenizer()
            ids = [int(t) for t in (shards.val if split == "val" else shards.train)]
            docs, cur = [], []
            for t in [*ids, stok.eot_id]:
                if t == stok.eot_id:
                    docs.append(stok.decode(cur))
                    cur = []
                else:
                    cur.append(t)
            text, source = "\n\n".join(d for d in docs if d.strip()), str(shards.path)
            documents = mlm_data.split_documents(text)
        elif kind == "text":
            text, source = read_text_data(data, what="a BERT")
            documents = mlm_data.split_documents(text)
            trained_on = (s.config.get("data") or {}).get("source")
            own = trained_on == source or inputs.same_file(trained_on, data)
            split = ("val" if own else "all") if opts.split == "auto" else opts.split
            if split in ("val", "train") and not own:
                raise ScratchLLMError(
                    f"--split {split}: {s.path} was not trained on {source}, so it has no held-out part "
                    "of it; use --split all"
                )
            if split not in ("val", "train", "all"):
                raise ScratchLLMError(f"--split {split}: choose val, train or all for a BERT's text")
            if split != "all":
                train_docs, val_docs = mlm_data.split_documents_for_eval(documents, seed=0)
                documents = val_docs if split == "val" else train_docs
        else:
            raise ScratchLLMError(
                f"{s.path} is a {s.loaded.arch} model, scored by masked-token prediction on text "
                f"(a .txt file, a directory of them, 'default' or shards); {data} is a {kind} file "
                "(to classify, fine-tune it first: scratchllm finetune classify)"
            )
        if not documents:
            raise ScratchLLMError(f"no sentences found in {source}")
        cfg = s.model.config
        payload = {
            "documents": documents,
            "ctx": opts.context_length or int(s.train_setting("context_length", cfg.context_length)),
            "batch_size": opts.batch_size or int(s.train_setting("batch_size", 8)),
            "max_batches": opts.max_batches or int(s.train_setting("eval_steps", 20)),
        }
        return Prepared({"data": source, "split": split}, payload)

    def score(self, s: Subject, p: Prepared, opts: EvalOptions, spec: Any) -> dict[str, Any]:
        from scratchllm.data.mlm import PretrainingExamples
        from scratchllm.evaluate.bert import evaluate_mlm

        pl, cfg, known = p.payload, s.model.config, KnownText(s.tokenizer)
        flat = [sent for doc in pl["documents"] for sent in doc]
        noisy = iter(_noisy(flat, spec, opts, known))
        docs = [[next(noisy) for _ in doc] for doc in pl["documents"]]
        examples = PretrainingExamples.from_text(
            [[x for x in doc if x.strip()] for doc in docs],
            s.tokenizer,
            context_length=pl["ctx"],
            mlm=cfg.mlm,
            nsp=cfg.nsp,
            mask_prob=cfg.mask_prob,
            whole_word_mask=cfg.whole_word_mask,
        )
        out = evaluate_mlm(
            s.model,
            examples,
            batch_size=pl["batch_size"],
            max_batches=pl["max_batches"],
            mlm=cfg.mlm,
            nsp=cfg.nsp,
            progress=opts.bar("eval masked batches", spec),
        )
        return _finish({**out, "batches": pl["max_batches"], "batch_size": pl["batch_size"]}, known)


class Seq2SeqEval:
    """An encoder-decoder: reference loss, then exact match, CER and BLEU of its own outputs."""

    def prepare(self, s: Subject, data: str, opts: EvalOptions, selection: Any = None) -> Prepared:
        from scratchllm.data import seq2seq as s2s

        if str(data) == "dates":
            train, val = s2s.date_task_splits(seed=0)
            split = "val" if opts.split == "auto" else opts.split
            if split not in ("val", "train"):
                raise ScratchLLMError(
                    f"--split {split}: the date task has a val (500 pairs) and a train split"
                )
            pairs, source = (val if split == "val" else train), "built-in date task"
            targets = [t for _, t in train]
        else:
            if inputs.sniff(data) == "shards":
                raise ScratchLLMError(
                    f"{data} holds token shards; a seq2seq model reads source<TAB>target pairs"
                )
            every = s2s.read_parallel_tsv(data)
            own = inputs.same_file((s.config.get("data") or {}).get("source"), data)
            split = ("val" if own else "all") if opts.split == "auto" else opts.split
            if split in ("val", "train"):
                if not own:
                    raise ScratchLLMError(
                        f"--split {split}: {s.path} was not trained on {data}; use --split all"
                    )
                train, val = s2s.hold_out_pairs(every, where=str(data))
                pairs, targets = (val if split == "val" else train), [t for _, t in train]
            elif split == "all":
                pairs, targets = every, [t for _, t in every]
            else:
                raise ScratchLLMError(f"--split {split}: choose val, train or all for pairs")
            source = str(data)
        if opts.limit is not None:
            pairs = pairs[: opts.limit]
        # Decoding stops at <eos> or a little past the longest target the model trained on — the cap
        # training's own evaluation uses, so an untrained model's runaway outputs score the same.
        tok = s.need_tokenizer()
        longest = max(len(tok.encode(t)) for t in targets)
        payload = {
            "pairs": pairs,
            "batch_size": opts.batch_size or int(s.train_setting("batch_size", 64)),
            "max_decode_len": min(s.model.config.context_length, longest + 8),
        }
        return Prepared({"data": source, "split": split, "rows": len(pairs)}, payload)

    def score(self, s: Subject, p: Prepared, opts: EvalOptions, spec: Any) -> dict[str, Any]:
        from scratchllm.evaluate.seq2seq import evaluate_seq2seq

        tok, known = s.need_tokenizer(), KnownText(s.tokenizer)
        pairs = p.payload["pairs"]
        sources = _noisy([a for a, _ in pairs], spec, opts, known)
        pairs = [(a, b) for a, (_, b) in zip(sources, pairs)]
        out = evaluate_seq2seq(
            s.model,
            tok,
            pairs,
            batch_size=p.payload["batch_size"],
            max_decode_examples=len(pairs),
            max_decode_len=p.payload["max_decode_len"],
            beam=opts.beam,
            progress=opts.bar("decode", spec),
        )
        out["n"] = len(pairs)
        out["tokens"] = sum(len(tok.encode(a)) + len(tok.encode(b)) + 2 for a, b in pairs)
        return _finish(out, known)


def select_for(
    task: str, subjects: Sequence[Subject], data: str, opts: EvalOptions, *, need_pool: bool | None = None
) -> Any:
    """The rows of a file task (classify, choice, instruct), chosen once for every subject
    (``need_pool``: few-shot examples are needed; default: ``opts.shots > 0``)."""
    kind, what = _FILE_KINDS[task]
    found = inputs.sniff(data)
    if found != kind:
        raise ScratchLLMError(f"--task {task} reads {what}; {data} looks like {found} data")
    return inputs.select(
        kind,
        data,
        split=opts.split,
        records=_records(subjects),
        fractions=opts.split_fractions,
        seed=opts.split_seed,
        text_column=opts.text_column,
        label_column=opts.label_column,
        need_pool=(opts.shots > 0 and task != "instruct") if need_pool is None else need_pool,
        shots_from=opts.shots_from,
        limit=opts.limit,
    )


def _prompting(p: Prepared, opts: EvalOptions, known: KnownText, what: str) -> dict[str, Any]:
    """The keyword arguments both prompting evaluations pass on."""
    return {
        "shots": opts.shots,
        "seed": opts.seed,
        "normalization": opts.normalization,
        "fmt": p.payload["fmt"],
        "encode": known.encode,
        "batch_size": opts.batch_size or 16,
        "progress": opts.bar(f"score {what}"),
    }


class ClassifyEval:
    """Labelled rows: a fine-tuned head (``is_classifier``) or zero-/few-shot prompting of a GPT."""

    def prepare(self, s: Subject, data: str, opts: EvalOptions, selection: Any = None) -> Prepared:
        from scratchllm.data.classification import check_labels

        sel = selection or select_for("classify", [s], data, opts)
        if s.record.is_classifier:
            if opts.shots:
                raise ScratchLLMError(
                    f"{s.path} is a fine-tuned classifier with its own head; --shots applies to prompting "
                    "a language model"
                )
            labels = list(s.model.config.label_names)
            check_labels(sel.rows, labels, where=f"{data}")
            s.need_tokenizer()
            return Prepared(sel.description, {"sel": sel, "labels": labels})
        labels = sorted({r.label for r in sel.rows} | {r.label for r in sel.pool})
        if len(labels) < 2:
            raise ScratchLLMError(f"{data}: classification needs at least 2 labels; found {labels}")
        s.need_tokenizer()
        return Prepared(sel.description, {"sel": sel, "labels": labels, "fmt": _prompt_format(s, opts)})

    def score(self, s: Subject, p: Prepared, opts: EvalOptions, spec: Any) -> dict[str, Any]:
        from scratchllm.data.classification import Example

        sel, labels, tok = p.payload["sel"], p.payload["labels"], s.tokenizer
        known = KnownText(tok)
        texts = _noisy([r.text for r in sel.rows], spec, opts, known)
        if s.record.is_classifier:
            from scratchllm.evaluate.classify import encode_for_classifier, evaluate_classifier

            model = s.model
            fmt = model.text_format(tok)
            rows = [Example(t if t.strip() else "?", r.label) for t, r in zip(texts, sel.rows)]
            enc, truncated = encode_for_classifier(
                rows, tok, labels, fmt, max_length=model.config.context_length - fmt.extra
            )
            out = evaluate_classifier(
                model,
                enc,
                labels,
                pad_id=fmt.pad_id,
                batch_size=opts.batch_size or 32,
                progress=opts.bar("classify", spec),
            )
            lora = getattr(model.config, "lora_r", 0)
            out.update(
                method="classification head" + (" + LoRA" if lora else ""),
                truncated=truncated,
                tokens=sum(len(e.ids) for e in enc),
            )
            return _finish(out, known)
        from scratchllm.evaluate.prompting import classify_by_prompting

        out = classify_by_prompting(
            s.model, tok, sel.rows, sel.pool, labels, texts=texts, **_prompting(p, opts, known, "labels")
        )
        out["method"] = f"{'zero' if not opts.shots else opts.shots}-shot prompting"
        return _finish(out, known)


class ChoiceEval:
    """Multiple-choice questions by prompting a GPT (one scored continuation per choice)."""

    def prepare(self, s: Subject, data: str, opts: EvalOptions, selection: Any = None) -> Prepared:
        sel = selection or select_for("choice", [s], data, opts)
        s.need_tokenizer()
        return Prepared(sel.description, {"sel": sel, "fmt": _prompt_format(s, opts)})

    def score(self, s: Subject, p: Prepared, opts: EvalOptions, spec: Any) -> dict[str, Any]:
        from scratchllm.evaluate.prompting import answer_by_prompting

        sel, known = p.payload["sel"], KnownText(s.tokenizer)
        texts = _noisy([q.question for q in sel.rows], spec, opts, known)
        out = answer_by_prompting(
            s.model, s.tokenizer, sel.rows, sel.pool, texts=texts, **_prompting(p, opts, known, "choices")
        )
        out["method"] = f"{'zero' if not opts.shots else opts.shots}-shot prompting"
        return _finish(out, known)


class InstructEval:
    """Instruction records: response loss, then greedy answers scored by exact match and ROUGE-L."""

    def prepare(self, s: Subject, data: str, opts: EvalOptions, selection: Any = None) -> Prepared:
        from scratchllm.data.instruction import template_of

        if opts.shots:
            raise ScratchLLMError("--shots applies to --task classify and choice, not to instruct")
        sel = selection or select_for("instruct", [s], data, opts)
        s.need_tokenizer()
        return Prepared(sel.description, {"sel": sel, "template": template_of(s.config)})

    def score(self, s: Subject, p: Prepared, opts: EvalOptions, spec: Any) -> dict[str, Any]:
        from scratchllm.evaluate.instruct import evaluate_instructions

        sel, template, tok = p.payload["sel"], p.payload["template"], s.tokenizer
        known = KnownText(tok)
        instructions = _noisy([r["instruction"] for r in sel.rows], spec, opts, known)
        extra = _noisy([r["input"] for r in sel.rows], spec, opts, known, salt="/input")
        records = [
            {**r, "instruction": i if i.strip() else r["instruction"], "input": x}
            for r, i, x in zip(sel.rows, instructions, extra)
        ]
        out, replies = evaluate_instructions(
            s.model,
            tok,
            records,
            template,
            batch_size=opts.batch_size or 8,
            max_new_tokens=opts.max_new_tokens,
            progress=opts.bar,
        )
        out["tokens"] = sum(
            len(tok.encode_parts(template.parts(r["instruction"], r["input"]))) + len(tok.encode(r["output"]))
            for r in records
        ) + sum(len(tok.encode(x)) for x in replies)
        out["responses"] = [{**r, "model_response": m} for r, m in zip(records, replies)]
        out["template"] = template.name
        return _finish(out, known)


EVALUATORS: dict[str, Any] = {
    "lm": LanguageModelEval(),
    "mlm": MaskedLMEval(),
    "seq2seq": Seq2SeqEval(),
    "classify": ClassifyEval(),
    "choice": ChoiceEval(),
    "instruct": InstructEval(),
}


# ----------------------------------------------------------------------------- the entry points


def _run(s: Subject, task: str, data: str, opts: EvalOptions, selection: Any = None) -> dict[str, Any]:
    ev = EVALUATORS[task]
    spec = _spec(opts)  # parse first: a bad --perturb fails before any work
    prepared = ev.prepare(s, data, opts, selection)
    result: dict[str, Any] = {
        "task": task,
        "model": s.path,
        "source": s.loaded.source,
        "architecture": s.loaded.arch,
        "device": opts.device,
        **prepared.describe,
    }
    clean = _measured(lambda: ev.score(s, prepared, opts, None), opts.device)
    result.update(clean)
    if spec:
        perturbed = _measured(lambda: ev.score(s, prepared, opts, spec), opts.device)
        result["perturbation"] = format_perturb(spec)
        result["perturbed"] = perturbed
        result["drop"] = drop(clean, perturbed)
    if opts.ood_data:
        ood_opts = replace(opts, split="auto", limit=opts.limit)
        ood_prepared = ev.prepare(s, opts.ood_data, ood_opts)
        ood = _measured(lambda: ev.score(s, ood_prepared, ood_opts, None), opts.device)
        result["ood"] = {**ood_prepared.describe, **ood}
        result["ood_drop"] = drop(clean, ood)
    return result


def evaluate(subject: Subject, data: str, opts: EvalOptions | None = None) -> dict[str, Any]:
    """Score ``subject`` on ``data``: the metrics that fit the model and the data (see above).

    The result is one flat dict of the clean metrics plus ``task``, ``model``, ``source``,
    ``architecture``, ``data``, ``split``, ``device``; ``perturbed``/``drop`` with
    ``opts.perturb``, ``ood``/``ood_drop`` with ``opts.ood_data``.
    """
    opts = opts or EvalOptions()
    if opts.shots < 0:
        raise ScratchLLMError(f"--shots must be >= 0 (got {opts.shots})")
    task = choose_task(subject, data, opts.task)
    return _run(subject, task, data, opts)


@dataclass
class CompareRow:
    """One row of a comparison: a model and how to use it (``shots``/``normalization`` override
    the options for this row; None keeps them)."""

    subject: Subject
    name: str | None = None
    shots: int | None = None
    normalization: str | None = None


def parse_row(spec: str) -> tuple[str | None, str, dict[str, str]]:
    """``"NAME=MODEL[,key=value...]"`` (or just ``MODEL``) → ``(name, model path, options)``.

    Options: ``shots=K`` and ``normalization=none|token|char`` (``norm=`` for short).
    """
    name, model = None, spec
    head, *opts = spec.split(",")
    if "=" in head:
        name, model = head.split("=", 1)
        name = name.strip() or None
    else:
        model = head
    options: dict[str, str] = {}
    for o in opts:
        key, sep, value = o.partition("=")
        key = {"norm": "normalization"}.get(key.strip(), key.strip())
        if not sep or key not in ("shots", "normalization"):
            raise ScratchLLMError(
                f"--row {spec!r}: options are shots=K and normalization=none|token|char, after the model "
                "(e.g. --row '5-shot=runs/base,shots=5')"
            )
        options[key] = value.strip()
    if not model.strip():
        raise ScratchLLMError(f"--row {spec!r} names no model; write NAME=MODEL (e.g. fine-tuned=runs/cls)")
    if "shots" in options:
        try:
            if int(options["shots"]) < 0:
                raise ValueError
        except ValueError:
            raise ScratchLLMError(f"--row {spec!r}: shots must be an integer >= 0") from None
    return name, model.strip(), options


def _row_name(row: CompareRow, result: dict[str, Any]) -> str:
    if row.name:
        return row.name
    if result["task"] in ("classify", "choice"):
        if row.subject.record.is_classifier:
            return "LoRA" if getattr(row.subject.model.config, "lora_r", 0) else "fine-tuned"
        k = result.get("shots", 0)
        return "zero-shot" if not k else f"{k}-shot"
    return row.subject.path


def compare(rows: Sequence[CompareRow], data: str, opts: EvalOptions | None = None) -> dict[str, Any]:
    """Evaluate every row on the same rows of ``data`` (for file tasks: one selection, cut by the
    recipe the fine-tuned rows recorded) and return ``{"task", "data", "split", "rows": [...]}``,
    each row being an :func:`evaluate` result plus its ``name``."""
    opts = opts or EvalOptions()
    if not rows:
        raise ScratchLLMError("--compare needs at least one --row NAME=MODEL")
    row_opts = [
        replace(
            opts,
            shots=r.shots if r.shots is not None else opts.shots,
            normalization=r.normalization or opts.normalization,
        )
        for r in rows
    ]
    tasks = [choose_task(r.subject, data, opts.task) for r in rows]
    if len(set(tasks)) > 1:
        listing = ", ".join(f"{r.subject.path}: {t}" for r, t in zip(rows, tasks))
        raise ScratchLLMError(
            f"the rows would be scored on different tasks ({listing}); compare like with like"
        )
    task = tasks[0]
    selection = None
    if task in ("classify", "choice", "instruct"):
        need_pool = task != "instruct" and any(o.shots > 0 for o in row_opts)
        selection = select_for(task, [r.subject for r in rows], data, opts, need_pool=need_pool)
    results = []
    for r, o in zip(rows, row_opts):
        result = _run(r.subject, task, data, o, selection)
        results.append({"name": _row_name(r, result), **result})
    seen: dict[str, int] = {}
    for res in results:
        seen[res["name"]] = seen.get(res["name"], 0) + 1
        if seen[res["name"]] > 1:
            res["name"] = f"{res['name']} ({seen[res['name']]})"
    first = results[0]
    return {
        "task": task,
        "data": first.get("data", data),
        "split": first.get("split"),
        "recipe": first.get("recipe"),
        "rows": results,
    }


# ----------------------------------------------------------------------------- metrics files


def check_out(path: str, *, force: bool = False) -> None:
    """Refuse an ``--out`` that cannot be written, before any work: a ``.json`` file that exists
    (without ``force``), or a path that is a directory."""
    from pathlib import Path

    out = Path(path)
    if out.is_dir():
        raise ScratchLLMError(f"--out {path} is a directory; give a file name ending in .json or .jsonl")
    if out.suffix != ".jsonl" and out.exists() and not force:
        raise ScratchLLMError(
            f"{path} already exists; choose another --out, pass --force to overwrite, or use a .jsonl "
            "file (results are appended to it)"
        )


def save_result(path: str, result: dict[str, Any], *, force: bool = False) -> list[dict[str, Any]]:
    """Write an :func:`evaluate` result or a :func:`compare` table to ``path``.

    ``.jsonl``: one JSON object per line is *appended* — the result, or one line per row of a
    comparison (each with the table's ``task``/``data``/``split``) — each stamped with ``time``
    (UTC, ISO 8601), so evaluating checkpoint after checkpoint builds up one metrics log.
    Anything else: the whole object as JSON, written atomically (an existing file only with
    ``force``). Returns the records written.
    """
    import datetime
    import json
    import os
    from pathlib import Path

    from scratchllm.io import atomic_write_json, fsync_dir

    check_out(path, force=force)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix != ".jsonl":
        atomic_write_json(out, result)
        return [result]
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if "rows" in result and isinstance(result["rows"], list):
        shared = {k: v for k, v in result.items() if k != "rows"}
        records = [{"time": stamp, **shared, **row} for row in result["rows"]]
    else:
        records = [{"time": stamp, **result}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    new = not out.exists()
    try:
        with open(out, "a", encoding="utf-8") as f:  # one write per call: whole lines or nothing
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise ScratchLLMError(f"cannot append to {path}: {err.strerror or err}") from None
    if new:
        fsync_dir(out.parent)
    return records


# ----------------------------------------------------------------------------- text reports


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def format_robustness(result: dict[str, Any]) -> str:
    """``metric | clean | perturbed | drop`` (and out-of-domain) for the headline metrics."""
    keys = [k for k in HEADLINE[result["task"]] if k in result]
    sections = []
    if "perturbed" in result:
        sections.append((f"robustness ({result['perturbation']}", "clean", "perturbed", "perturbed", "drop"))
    if "ood" in result:
        sections.append(
            (f"out of domain ({result['ood'].get('data')}", "in-domain", "ood", "ood", "ood_drop")
        )
    lines = []
    for title, left, right, other, drops in sections:
        lines.append(f"{title}; drop > 0 means worse)")
        lines.append(f"  {'metric':<22}{left:>10}{right:>11}{'drop':>10}")
        for k in keys:
            if k in result[other]:
                d = result[drops].get(k)
                lines.append(
                    f"  {k:<22}{_fmt(result[k]):>10}{_fmt(result[other][k]):>11}"
                    f"{_fmt(d) if d is not None else '':>10}"
                )
    return "\n".join(lines)


def format_result(result: dict[str, Any]) -> str:
    """A readable report of one :func:`evaluate` result."""
    from scratchllm.evaluate.metrics import format_confusion

    task = result["task"]
    lines = [f"model      {result['source']}"]
    if task == "lm":
        split = result["split"]
        lines.append(
            f"data       {result['data']} ({split}: {result['tokens']:,} tokens scored "
            f"in {result['windows']:,} windows, {result['batches']} batches)"
        )
        lines.append(
            f"val_loss   {result['val_loss']:.4f}"
            if split == "val"
            else f"loss       {result['val_loss']:.4f}"
        )
        lines.append(f"perplexity {result['perplexity']:.2f}")
    else:
        rows = f", {result['rows']:,} rows" if "rows" in result else ""
        lines.append(f"data       {result['data']} (split {result['split']}{rows})")
        if result.get("recipe"):
            r = result["recipe"]
            lines.append(f"           cut {r['fractions']} with seed {r['seed']} ({r['origin']})")
        if result.get("note"):
            lines.append(f"           {result['note']}")
        if "method" in result:
            how = f" ({result['prompt_format']} prompt format)" if "prompt_format" in result else ""
            lines.append(f"method     {result['method']}{how}")
        for k in HEADLINE[task]:
            if k in result:
                lines.append(f"{k:<22} {_fmt(result[k])}")
        if "accuracy_by_normalization" in result:
            acc = result["accuracy_by_normalization"]
            lines.append(
                "accuracy by length normalisation: "
                + ", ".join(f"{h} {v:.4f}" for h, v in acc.items())
                + f" (predictions use {result['normalization']})"
            )
        if "confusion_matrix" in result:
            lines.append(format_confusion(result["confusion_matrix"], result["labels"]))
        if result.get("examples"):
            lines.append(f"few-shot examples ({len(result['examples'])}, in prompt order):")
            for e in result["examples"]:
                answer, text = e.get("label", e.get("answer")), e.get("text", e.get("question"))
                lines.append(f"  {answer!s:<12} {str(text)[:70]!r}")
        if result.get("truncated_prompts"):
            n = result["truncated_prompts"]
            lines.append(f"warning: {n} prompts were longer than the context and lost their start")
        for r in (result.get("responses") or [])[:3]:
            lines.append(
                f"  {r['instruction'][:50]!r} -> {r['model_response'][:60]!r} (ref {r['output'][:40]!r})"
            )
    if result.get("unknown_chars_dropped"):
        n = result["unknown_chars_dropped"]
        lines.append(f"note: {n:,} characters outside the tokenizer's vocabulary were dropped")
    speed = f"speed      {result['tokens_per_s']:,.0f} tokens/s"
    speed += (
        f" (forward only, {result['device']})"
        if task == "lm"
        else f" ({result['seconds']:.1f} s, {result['device']})"
    )
    lines.append(speed)
    mem = f"memory     peak RSS {result['peak_rss_mb']:,.0f} MiB"
    if "cuda_max_memory_mb" in result:
        mem += f", CUDA max allocated {result['cuda_max_memory_mb']:,.0f} MiB"
    lines.append(mem)
    extra = format_robustness(result)
    return "\n".join(lines + ([extra] if extra else []))


def format_compare(table: dict[str, Any]) -> str:
    """The comparison as an aligned text table (the same numbers as ``--json``)."""
    task, rows = table["task"], table["rows"]
    metrics = [k for k in HEADLINE[task] if any(k in r for r in rows)]
    main = HEADLINE[task][0]
    cols = ["row", "method", "n", *metrics, "s"]
    perturbed = any("perturbed" in r for r in rows)
    ood = any("ood" in r for r in rows)
    if perturbed:
        cols += [f"{main} perturbed", "drop"]
    if ood:
        cols += [f"{main} ood", "ood drop"]
    body = []
    for r in rows:
        cells = [
            r["name"],
            r.get("method", r["architecture"]),
            str(r.get("n", r.get("rows", r.get("tokens", "")))),
        ]
        cells += [_fmt(r[k]) if k in r else "-" for k in metrics]
        cells.append(f"{r['seconds']:.1f}")
        if perturbed:
            cells += (
                [_fmt(r["perturbed"].get(main, "-")), _fmt(r["drop"].get(main, "-"))]
                if "perturbed" in r
                else ["-", "-"]
            )
        if ood:
            cells += (
                [_fmt(r["ood"].get(main, "-")), _fmt(r["ood_drop"].get(main, "-"))]
                if "ood" in r
                else ["-", "-"]
            )
        body.append(cells)
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    head = [f"{task} on {table['data']} (split {table['split']})"]
    if table.get("recipe"):
        rc = table["recipe"]
        head.append(f"cut {rc['fractions']} with seed {rc['seed']} ({rc['origin']})")
    return "\n".join([*head, line(cols), line(["-" * w for w in widths]), *(line(b) for b in body)])
