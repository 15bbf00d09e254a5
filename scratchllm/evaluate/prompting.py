"""Zero- and few-shot prompting: classify with a language model that was never trained to classify.

A fine-tuned classifier has a head that outputs one score per label. A plain language model has
only next-token probabilities — but that is enough: write the text into a prompt, and ask how
likely the model finds each label as the continuation. The label it finds most likely is its
answer. With *K* labelled examples in the prompt first (*K-shot*), the model can pick up the
format and the labels in context, without a single weight changing (GPT-3's "in-context
learning"; Brown et al., 2020).

**The prompt** (plain format, for base models)::

    Label each text as ham or spam.          <- header naming the labels

    Text: Are we still on for lunch?          <- K examples (none for zero-shot)
    Label: ham

    Text: WINNER!! Claim your prize now       <- the query
    Label:                                    <- context ends here; each " {label}\\n" is scored

An instruction-tuned run is prompted in its own template instead (``instruct`` format): the
instruction says ``Label the text as ham or spam.`` and lists the examples, the input is the
query text, and the response scored for each label is ``{label}<|endoftext|>``. Scoring what
*ends* the label too (the newline, or ``<|endoftext|>``) keeps a label that is the prefix of
another ("pos" vs "positive") from winning just for being short. The context and the
continuation are tokenized separately, and the space before the label belongs to the
continuation, as in lm-evaluation-harness.

**Length normalisation.** Each label's score is the sum of its tokens' log-probabilities, which
favours short labels (every extra token multiplies in another probability below one). Three
options, all reported (``accuracy_by_normalization``), one chosen for the predictions:

* ``none``  — the sum itself: the likelihood of the whole continuation;
* ``token`` — the sum divided by the number of continuation tokens (mean log-prob per token);
* ``char``  — the sum divided by the number of characters of the continuation text (the
  default; like lm-evaluation-harness's ``acc_norm``, which divides by bytes, it does not depend
  on how a tokenizer happens to split the label).

Ties go to the first label in sorted order. ``loss`` is the cross-entropy of the true label
after renormalising the *unnormalised* likelihoods over the labels — comparable to a fine-tuned
head's loss.

**Choosing the examples** (:func:`choose_shots`), with ``rng = random.Random(f"{seed}/shots")``:
``K // L`` examples per label (``L`` labels) and one more for ``K % L`` labels — which ones is
decided by ``rng.shuffle`` of the sorted labels (the first ``K % L`` after shuffling); then, label
by label in sorted order, ``rng.sample`` draws that many examples from the training pool; finally
``rng.shuffle`` orders the ``K`` chosen examples (so the last example's label, which a model
tends to copy, is random too). The same examples prompt every query of one evaluation.

**Multiple choice** (JSON Lines of ``{"question", "choices", "answer"}``, ``answer`` the index
of the right choice or its text) works the same way with ``Question: ...`` / ``Answer:`` and
each choice as the scored continuation; the examples are chosen at random from the pool
(``rng.sample``), without balancing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchllm.data.classification import Example
from scratchllm.data.instruction import PromptTemplate
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluate.lm import ContinuationScore, continuation_logprobs
from scratchllm.evaluate.metrics import classification_metrics

NORMALIZATIONS = ("none", "token", "char")
FORMATS = ("plain", "instruct")


# ----------------------------------------------------------------------------- multiple-choice data


@dataclass
class Choice:
    """One multiple-choice question: ``answer`` indexes ``choices``."""

    question: str
    choices: list[str]
    answer: int


def read_choices(path: str | Path) -> list[Choice]:
    """Read a ``.jsonl`` (or ``.json`` list) of ``{"question", "choices", "answer"}`` records."""
    from scratchllm.io import read_json_records

    path = Path(path)
    records = read_json_records(path, "multiple-choice file")
    if not records:
        raise ScratchLLMError(f"{path} holds no questions")
    out = []
    for n, rec in enumerate(records, start=1):
        where = f"{path} record {n}"
        if not isinstance(rec, dict):
            raise ScratchLLMError(f"{where} is not a JSON object")
        q, choices, answer = rec.get("question"), rec.get("choices"), rec.get("answer")
        if not isinstance(q, str) or not q.strip():
            raise ScratchLLMError(f"{where} has no 'question' text (its keys: {', '.join(rec) or '(none)'})")
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c.strip() for c in choices)
        ):
            raise ScratchLLMError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
        if isinstance(answer, str) and answer in choices:
            answer = choices.index(answer)
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise ScratchLLMError(
                f"{where}: 'answer' must be the index (0-{len(choices) - 1}) of the right choice or "
                f"its text; got {answer!r}"
            )
        out.append(Choice(q, [str(c) for c in choices], answer))
    return out


# ----------------------------------------------------------------------------- examples and prompts


def choose_shots(pool: Sequence[Example], k: int, labels: Sequence[str], *, seed: int) -> list[Example]:
    """``k`` examples from ``pool``, balanced across ``labels`` (see the module docstring for the
    exact draw)."""
    if k < 0:
        raise ScratchLLMError(f"--shots must be >= 0 (got {k})")
    if k == 0:
        return []
    labels = sorted(labels)
    rng = random.Random(f"{seed}/shots")
    base, extra = divmod(k, len(labels))
    order = list(labels)
    rng.shuffle(order)
    counts = {label: base + (1 if i < extra else 0) for i, label in enumerate(order)}
    chosen: list[Example] = []
    for label in labels:
        candidates = [e for e in pool if e.label == label]
        if counts[label] > len(candidates):
            raise ScratchLLMError(
                f"--shots {k} needs {counts[label]} examples labelled {label!r} but the training pool "
                f"has {len(candidates)}; use fewer shots or more training rows"
            )
        chosen += rng.sample(candidates, counts[label])
    rng.shuffle(chosen)
    return chosen


def choose_choice_shots(pool: Sequence[Choice], k: int, *, seed: int) -> list[Choice]:
    """``k`` questions drawn at random from ``pool`` (``random.Random(f"{seed}/shots").sample``)."""
    if k < 0:
        raise ScratchLLMError(f"--shots must be >= 0 (got {k})")
    if k > len(pool):
        raise ScratchLLMError(f"--shots {k} needs {k} example questions but the pool has {len(pool)}")
    return random.Random(f"{seed}/shots").sample(list(pool), k) if k else []


def _one_of(labels: Sequence[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    labels = list(labels)
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " or " + labels[-1]


@dataclass(frozen=True)
class PromptFormat:
    """How examples and queries are written: ``plain`` text, or an instruction ``template``."""

    kind: str = "plain"
    template: PromptTemplate | None = None

    def __post_init__(self) -> None:
        if self.kind not in FORMATS:
            raise ScratchLLMError(f"unknown prompt format {self.kind!r}; choose from {', '.join(FORMATS)}")
        if self.kind == "instruct" and self.template is None:
            raise ScratchLLMError("the instruct prompt format needs the run's prompt template")

    # -- classification
    def classification_context(self, shots: Sequence[Example], text: str, labels: Sequence[str]) -> str:
        if self.kind == "plain":
            head = f"Label each text as {_one_of(labels)}.\n\n"
            body = "".join(f"Text: {e.text}\nLabel: {e.label}\n\n" for e in shots)
            return f"{head}{body}Text: {text}\nLabel:"
        instruction = f"Label the text as {_one_of(labels)}."
        if shots:
            instruction += "\n\nExamples:\n" + "".join(f"\nText: {e.text}\nLabel: {e.label}\n" for e in shots)
        assert self.template is not None
        return self.template.format(instruction, text)

    # -- multiple choice
    def choice_context(self, shots: Sequence[Choice], question: str) -> str:
        if self.kind == "plain":
            body = "".join(f"Question: {s.question}\nAnswer: {s.choices[s.answer]}\n\n" for s in shots)
            return f"{body}Question: {question}\nAnswer:"
        instruction = "Answer the question."
        if shots:
            instruction += "\n\nExamples:\n" + "".join(
                f"\nQuestion: {s.question}\nAnswer: {s.choices[s.answer]}\n" for s in shots
            )
        assert self.template is not None
        return self.template.format(instruction, question)

    def continuation(self, answer: str) -> str:
        """The text scored for one answer (``<|endoftext|>`` follows it in the instruct format)."""
        return f" {answer}\n" if self.kind == "plain" else answer

    def continuation_ids(
        self, tokenizer: Any, answer: str, encode: Callable[[str], list[int]] | None = None
    ) -> list[int]:
        ids = (encode or tokenizer.encode)(self.continuation(answer))
        return ids if self.kind == "plain" else [*ids, tokenizer.eot_id]


# ----------------------------------------------------------------------------- scoring


def check_normalization(how: str) -> None:
    if how not in NORMALIZATIONS:
        raise ScratchLLMError(f"unknown normalisation {how!r}; choose from {', '.join(NORMALIZATIONS)}")


def normalized(score: ContinuationScore, chars: int, how: str) -> float:
    """A continuation's score under a length normalisation (see the module docstring)."""
    if how == "none":
        return score.logprob
    if how == "token":
        return score.logprob / max(score.tokens, 1)
    if how == "char":
        return score.logprob / max(chars, 1)
    raise ScratchLLMError(f"unknown normalisation {how!r}; choose from {', '.join(NORMALIZATIONS)}")


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value; ties go to the first."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


@dataclass
class Scored:
    """One query's options and their scores."""

    options: list[str]
    scores: list[ContinuationScore]
    chars: list[int]

    def pick(self, how: str) -> int:
        return argmax([normalized(s, c, how) for s, c in zip(self.scores, self.chars)])

    def nll(self, truth: int) -> float:
        """``-log p(truth)`` with the unnormalised likelihoods renormalised over the options."""
        lp = [s.logprob for s in self.scores]
        top = max(lp)
        return -(lp[truth] - (top + math.log(sum(math.exp(v - top) for v in lp))))


def score_options(
    model: Any,
    tokenizer: Any,
    fmt: PromptFormat,
    contexts: Sequence[str],
    options: Sequence[Sequence[str]],
    *,
    encode: Callable[[str], list[int]] | None = None,
    batch_size: int = 16,
    progress: Callable[[Any], Any] | None = None,
) -> list[Scored]:
    """Score every option (a label, a choice) after each context, in one batched pass.

    ``encode`` turns text into ids (default ``tokenizer.encode``; the evaluator passes one that
    drops characters a char tokenizer cannot represent).
    """
    encode = encode or tokenizer.encode
    requests, shape = [], []
    for ctx, opts in zip(contexts, options, strict=True):
        ctx_ids = encode(ctx)
        conts = [fmt.continuation_ids(tokenizer, o, encode) for o in opts]
        for i, c in enumerate(conts):
            if c in conts[:i]:
                j = conts.index(c)
                raise ScratchLLMError(
                    f"the options {opts[j]!r} and {opts[i]!r} encode to the same tokens with this tokenizer "
                    "(characters outside its vocabulary are dropped), so the model cannot tell them apart"
                )
            requests.append((ctx_ids, c))
        shape.append(list(opts))
    flat = continuation_logprobs(model, requests, batch_size=batch_size, progress=progress)
    out, pos = [], 0
    for opts in shape:
        scores = flat[pos : pos + len(opts)]
        out.append(Scored(opts, scores, [len(fmt.continuation(o)) for o in opts]))
        pos += len(opts)
    return out


def prompted_metrics(
    scored: Sequence[Scored], truth: Sequence[int], labels: Sequence[str], how: str
) -> dict[str, Any]:
    """The classifier's metrics for prompted predictions, plus ``loss`` and the accuracy under
    every normalisation."""
    preds = [s.pick(how) for s in scored]
    out = classification_metrics(list(truth), preds, labels)
    n = max(len(scored), 1)
    out["loss"] = sum(s.nll(t) for s, t in zip(scored, truth)) / n
    out["accuracy_by_normalization"] = {
        h: sum(s.pick(h) == t for s, t in zip(scored, truth)) / n for h in NORMALIZATIONS
    }
    out["truncated_prompts"] = sum(any(x.dropped for x in s.scores) for s in scored)
    out["tokens"] = sum(x.read for s in scored for x in s.scores)
    return out


def classify_by_prompting(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Example],
    pool: Sequence[Example],
    labels: Sequence[str],
    *,
    shots: int = 0,
    seed: int = 0,
    normalization: str = "char",
    fmt: PromptFormat | None = None,
    texts: Sequence[str] | None = None,
    encode: Callable[[str], list[int]] | None = None,
    batch_size: int = 16,
    progress: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Zero-/few-shot classification of ``rows`` (the labels being ``labels``, sorted).

    ``texts`` replaces the rows' texts in the queries (a perturbed copy) while the examples stay
    clean. Returns :func:`prompted_metrics` plus ``shots``, ``normalization``, ``prompt_format``,
    the ``examples`` used and ``prompt`` (the first query's full context).
    """
    check_normalization(normalization)
    fmt = fmt or PromptFormat()
    labels = sorted(labels)
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({r.label for r in rows} - set(labels))
    if unknown:
        raise ScratchLLMError(f"rows have labels {unknown} outside the label set {labels}")
    examples = choose_shots(pool, shots, labels, seed=seed)
    queries = list(texts) if texts is not None else [r.text for r in rows]
    return _prompted(
        model,
        tokenizer,
        fmt,
        [fmt.classification_context(examples, q, labels) for q in queries],
        [labels] * len(rows),
        [index[r.label] for r in rows],
        labels,
        normalization=normalization,
        shots=shots,
        examples=[{"text": e.text, "label": e.label} for e in examples],
        encode=encode,
        batch_size=batch_size,
        progress=progress,
    )


def answer_by_prompting(
    model: Any,
    tokenizer: Any,
    questions: Sequence[Choice],
    pool: Sequence[Choice],
    *,
    shots: int = 0,
    seed: int = 0,
    normalization: str = "char",
    fmt: PromptFormat | None = None,
    texts: Sequence[str] | None = None,
    encode: Callable[[str], list[int]] | None = None,
    batch_size: int = 16,
    progress: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Zero-/few-shot multiple choice: the metrics of :func:`prompted_metrics` with the *position*
    of the choice as the class (``choice 1``, ``choice 2``...: the confusion matrix shows a
    position bias), plus what :func:`classify_by_prompting` adds."""
    check_normalization(normalization)
    fmt = fmt or PromptFormat()
    examples = choose_choice_shots(pool, shots, seed=seed)
    queries = list(texts) if texts is not None else [q.question for q in questions]
    width = max((len(q.choices) for q in questions), default=2)
    return _prompted(
        model,
        tokenizer,
        fmt,
        [fmt.choice_context(examples, q) for q in queries],
        [q.choices for q in questions],
        [q.answer for q in questions],
        [f"choice {i + 1}" for i in range(width)],
        normalization=normalization,
        shots=shots,
        examples=[{"question": e.question, "answer": e.choices[e.answer]} for e in examples],
        encode=encode,
        batch_size=batch_size,
        progress=progress,
    )


def _prompted(
    model: Any,
    tokenizer: Any,
    fmt: PromptFormat,
    contexts: list[str],
    options: Sequence[Sequence[str]],
    truth: Sequence[int],
    labels: Sequence[str],
    *,
    normalization: str,
    shots: int,
    examples: list[dict[str, str]],
    encode: Callable[[str], list[int]] | None,
    batch_size: int,
    progress: Callable[[Any], Any] | None,
) -> dict[str, Any]:
    """Score the options after each context; the metrics plus what the prompt was."""
    scored = score_options(
        model, tokenizer, fmt, contexts, options, encode=encode, batch_size=batch_size, progress=progress
    )
    out = prompted_metrics(scored, truth, labels, normalization)
    out.update(
        shots=shots,
        normalization=normalization,
        prompt_format=fmt.kind,
        examples=examples,
        prompt=contexts[0] if contexts else "",
    )
    return out
