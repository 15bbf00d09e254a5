"""Metrics: classification scores, exact match, ROUGE-L, BLEU.

Plain Python on lists — no torch — so they are easy to read, test and reuse.

Classification
    *accuracy* is the share of right answers. Per class, *precision* asks "of the rows predicted
    as this class, how many were?" and *recall* "of the rows of this class, how many were found?";
    *F1* is their harmonic mean. The **macro** averages weight every class equally, so a model
    that always answers the majority class scores badly even when accuracy looks fine. The
    *confusion matrix* has a row per true label and a column per predicted label.

Generated text
    *exact match* compares whitespace-normalised strings. *ROUGE-L* (Lin, 2004) measures the
    longest common subsequence (LCS) of words between a response and its reference: precision is
    ``LCS / len(response)``, recall ``LCS / len(reference)``, and the score is their F1. Unlike
    n-gram overlap it rewards words that appear in the same order even with gaps between them.
    *BLEU* (Papineni et al., 2002; computed by ``sacrebleu``, the reference implementation) is the
    geometric mean of 1- to 4-gram precisions times a brevity penalty, 0-100.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, per-class scores and the confusion matrix.

    ``y_true``/``y_pred`` are class indices into ``labels``. A class that is never predicted has
    precision 0 (and likewise recall for a class absent from ``y_true``), the usual convention.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    k = len(labels)
    confusion = [[0] * k for _ in range(k)]
    for t, p in zip(y_true, y_pred):
        confusion[t][p] += 1
    n = len(y_true)
    correct = sum(confusion[i][i] for i in range(k))
    per_class: dict[str, dict[str, float]] = {}
    for i, name in enumerate(labels):
        tp = confusion[i][i]
        predicted = sum(confusion[r][i] for r in range(k))
        actual = sum(confusion[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    mean = lambda key: sum(c[key] for c in per_class.values()) / k if k else 0.0  # noqa: E731
    return {
        "accuracy": correct / n if n else 0.0,
        "precision": mean("precision"),
        "recall": mean("recall"),
        "f1": mean("f1"),
        "n": n,
        "labels": list(labels),
        "per_class": per_class,
        "confusion_matrix": confusion,
    }


def format_confusion(confusion: Sequence[Sequence[int]], labels: Sequence[str]) -> str:
    """The confusion matrix as an aligned text table (rows: true label, columns: predicted)."""
    names = [str(x) for x in labels]
    w = max([len("true\\pred"), *map(len, names), *(len(str(v)) for row in confusion for v in row)])
    lines = ["true\\pred".ljust(w) + "  " + "  ".join(n.rjust(w) for n in names)]
    for name, row in zip(names, confusion):
        lines.append(name.ljust(w) + "  " + "  ".join(str(v).rjust(w) for v in row))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- generated text

_WORD = re.compile(r"\w+|[^\w\s]")


def normalize_text(text: str) -> str:
    """Lower-case and collapse whitespace: "The  answer." and "the answer." compare equal."""
    return " ".join(text.lower().split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_text(prediction) == normalize_text(reference))


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks, the units ROUGE-L compares."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence, by dynamic programming in O(len(a)·len(b)).

    ``row[j]`` holds the LCS of the prefix of ``a`` seen so far and ``b[:j]``; keeping one row
    (plus the diagonal value) makes memory linear.
    """
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diag = 0  # LCS(a[:i-1], b[:j-1])
        for j, y in enumerate(b, start=1):
            up = row[j]
            row[j] = diag + 1 if x == y else max(row[j], row[j - 1])
            diag = up
    return row[-1]


def rouge_l(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-L precision, recall and F1 over words (both empty → a perfect 1.0)."""
    p, r = words(prediction), words(reference)
    if not p and not r:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    lcs = lcs_length(p, r)
    precision = lcs / len(p) if p else 0.0
    recall = lcs / len(r) if r else 0.0
    f1 = 2 * precision * recall / (precision + recall) if lcs else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean exact match and mean ROUGE-L F1 over pairs of generated and reference texts."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    n = len(predictions)
    if n == 0:
        return {"exact_match": 0.0, "rouge_l": 0.0, "n": 0}
    em = sum(exact_match(p, r) for p, r in zip(predictions, references)) / n
    rl = sum(rouge_l(p, r)["f1"] for p, r in zip(predictions, references)) / n
    return {"exact_match": em, "rouge_l": rl, "n": n}


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str], *, char_level: bool = False) -> float:
    """sacrebleu's corpus BLEU (0-100); character n-grams when ``char_level`` (short outputs like dates
    have too few words for word BLEU to say anything)."""
    import sacrebleu

    if not hyps:
        return 0.0
    return float(
        sacrebleu.corpus_bleu(list(hyps), [list(refs)], tokenize="char" if char_level else "13a").score
    )


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning ``a`` into ``b``."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def character_error_rate(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus character error rate: total edit distance / total reference characters (0 is perfect;
    it can exceed 1 when outputs are much longer than the references)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} outputs but {len(refs)} references")
    chars = sum(len(r) for r in refs)
    if chars == 0:
        return 0.0 if all(not h for h in hyps) else 1.0
    return sum(edit_distance(h, r) for h, r in zip(hyps, refs)) / chars
