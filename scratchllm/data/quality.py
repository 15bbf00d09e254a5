"""Heuristic quality filters: the well-known rules that drop junk documents before training.

Web crawls are full of text no one would want a model to imitate: menus, tag clouds, tables of
numbers, spam that repeats one phrase, pages that are mostly code or symbols. Gopher's authors
(Rae et al. 2021, *Scaling Language Models: Methods, Analysis & Insights from Training Gopher*,
appendix A) published a short list of document-level rules with thresholds that removed most of
it; C4 (Raffel et al. 2020) and FineWeb (Penedo et al. 2024) added rules about how lines end.
Each rule below is a switch, and every threshold can be changed (``--threshold NAME=VALUE``):

==================  ===========================================================  ============
rule                a document is removed when                                   source
==================  ===========================================================  ============
word_count          it has fewer than ``min_words`` (50) or more than            Gopher
                    ``max_words`` (100,000) words
mean_word_length    its mean word length is outside [``min_mean_word_length``    Gopher
                    (3), ``max_mean_word_length`` (10)] characters
symbol_ratio        ``#`` signs or ellipses (``...``, ``…``) per word exceed     Gopher
                    ``max_symbol_ratio`` (0.1)
bullet_lines        more than ``max_bullet_lines`` (90 %) of its lines start     Gopher
                    with a bullet (``-``, ``*``, ``•``, ``‣``, ``◦``, ``⁃``)
ellipsis_lines      more than ``max_ellipsis_lines`` (30 %) of its lines end     Gopher
                    with an ellipsis
alpha_words         fewer than ``min_alpha_words`` (80 %) of its words contain   Gopher
                    a letter
stop_words          it has fewer than ``min_stop_words`` (2) of: the, be, to,    Gopher
                    of, and, that, have, with
line_punctuation    fewer than ``min_punctuated_lines`` (12 %) of its lines end  FineWeb (C4
                    in terminal punctuation (``. ! ? " '`` ``” ’ …``)            keeps such lines)
dup_lines           repeated lines are more than ``max_dup_lines`` (30 %) of     Gopher
                    its lines or hold more than ``max_dup_line_chars`` (20 %)
                    of its characters
dup_paragraphs      the same for paragraphs (blank-line separated):              Gopher
                    ``max_dup_paragraphs`` (30 %), ``max_dup_paragraph_chars``
                    (20 %)
top_ngrams          its most frequent word 2-, 3- or 4-gram covers more than     Gopher
                    ``max_top_2gram`` (20 %), ``max_top_3gram`` (18 %),
                    ``max_top_4gram`` (16 %) of its word characters
dup_ngrams          repeated word n-grams (n = 5 ... 10) cover more than         Gopher
                    ``max_dup_5gram`` (15 %) ... ``max_dup_10gram`` (10 %) of
                    its word characters
==================  ===========================================================  ============

Definitions (they follow the papers and the public reimplementations closely, not exactly):
a *word* is a run of non-whitespace characters; its length counts characters (not bytes). Stop
words are matched on lower-cased letter/digit runs, so ``"The,"`` counts. A *repeated* line,
paragraph or n-gram is an occurrence after the first one in the same document; its characters
are counted once even where repeated n-grams overlap. "Has a letter" means an ASCII letter or
any non-ASCII character (other scripts pass; these rules were designed for English).

A document is charged to the **first** rule it fails, in the order of the table, so the report's
counts add up. All statistics are computed for a whole batch of documents at once with numpy
(:mod:`scratchllm.data.hashing`): this module never loops over words in Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scratchllm.data import hashing as H
from scratchllm.errors import ScratchLLMError

#: Every threshold and its default (see the table in the module docstring).
DEFAULT_THRESHOLDS: dict[str, float] = {
    "min_words": 50,
    "max_words": 100_000,
    "min_mean_word_length": 3,
    "max_mean_word_length": 10,
    "max_symbol_ratio": 0.1,
    "max_bullet_lines": 0.9,
    "max_ellipsis_lines": 0.3,
    "min_alpha_words": 0.8,
    "min_stop_words": 2,
    "min_punctuated_lines": 0.12,
    "max_dup_lines": 0.30,
    "max_dup_line_chars": 0.20,
    "max_dup_paragraphs": 0.30,
    "max_dup_paragraph_chars": 0.20,
    "max_top_2gram": 0.20,
    "max_top_3gram": 0.18,
    "max_top_4gram": 0.16,
    **{f"max_dup_{n}gram": round(0.15 - 0.01 * (n - 5), 2) for n in range(5, 11)},
}


@dataclass(frozen=True)
class Rule:
    """A filter: its name, the statistic it reports, what it tests, and where the rule comes from."""

    name: str
    stat: str  # the statistic shown for removed examples
    thresholds: tuple[str, ...]
    description: str
    source: str


RULES: tuple[Rule, ...] = (
    Rule("word_count", "words", ("min_words", "max_words"), "number of words", "Gopher"),
    Rule("mean_word_length", "mean_word_length", ("min_mean_word_length", "max_mean_word_length"),
         "mean word length in characters", "Gopher"),
    Rule("symbol_ratio", "symbol_ratio", ("max_symbol_ratio",), "'#' or ellipses per word", "Gopher"),
    Rule("bullet_lines", "bullet_lines", ("max_bullet_lines",), "share of lines starting with a bullet",
         "Gopher"),
    Rule("ellipsis_lines", "ellipsis_lines", ("max_ellipsis_lines",), "share of lines ending in an ellipsis",
         "Gopher"),
    Rule("alpha_words", "alpha_words", ("min_alpha_words",), "share of words with a letter", "Gopher"),
    Rule("stop_words", "stop_words", ("min_stop_words",),
         "occurrences of the, be, to, of, and, that, have, with", "Gopher"),
    Rule("line_punctuation", "punctuated_lines", ("min_punctuated_lines",),
         "share of lines ending in terminal punctuation", "FineWeb / C4"),
    Rule("dup_lines", "dup_lines", ("max_dup_lines", "max_dup_line_chars"),
         "share of repeated lines (and of their characters)", "Gopher"),
    Rule("dup_paragraphs", "dup_paragraphs", ("max_dup_paragraphs", "max_dup_paragraph_chars"),
         "share of repeated paragraphs (and of their characters)", "Gopher"),
    Rule("top_ngrams", "top_ngram", ("max_top_2gram", "max_top_3gram", "max_top_4gram"),
         "characters in the most frequent 2/3/4-gram", "Gopher"),
    Rule("dup_ngrams", "dup_ngram", tuple(f"max_dup_{n}gram" for n in range(5, 11)),
         "characters in repeated 5..10-grams", "Gopher"),
)  # fmt: skip
RULE_NAMES = tuple(r.name for r in RULES)

_WHITESPACE = H.byte_table(b" \t\n\r\x0b\x0c")
_ALNUM = H.byte_table(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", non_ascii=True)
_LETTER = H.byte_table(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", non_ascii=True)
ASCII_LOWER = np.arange(256, dtype=np.uint8)
ASCII_LOWER[ord("A") : ord("Z") + 1] += 32
_END_PUNCT = H.byte_table(b".!?\"'")
STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
_WORD_TABLE = H.run_table(_WHITESPACE)
_TOKEN_TABLE = H.run_table(~_ALNUM, byte_map=ASCII_LOWER)


@dataclass(frozen=True)
class QualityConfig:
    """Which rules run and their thresholds (defaults: all rules, the published thresholds)."""

    rules: frozenset[str] = frozenset(RULE_NAMES)
    thresholds: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))

    @classmethod
    def make(
        cls,
        *,
        skip: Iterable[str] = (),
        only: Iterable[str] | None = None,
        thresholds: Mapping[str, float] | None = None,
    ) -> QualityConfig:
        """Validated config: ``only`` (None = all) minus ``skip``; ``thresholds`` override defaults."""
        for name in [*skip, *(only or ())]:
            if name not in RULE_NAMES:
                raise ScratchLLMError(f"unknown quality filter {name!r}; choose from {', '.join(RULE_NAMES)}")
        merged = dict(DEFAULT_THRESHOLDS)
        for key, value in (thresholds or {}).items():
            if key not in DEFAULT_THRESHOLDS:
                raise ScratchLLMError(
                    f"unknown threshold {key!r}; choose from {', '.join(DEFAULT_THRESHOLDS)}"
                )
            if not np.isfinite(value) or value < 0:
                raise ScratchLLMError(f"threshold {key} must be a finite number >= 0, got {value}")
            merged[key] = float(value)
        rules = set(RULE_NAMES if only is None else only) - set(skip)
        return cls(frozenset(rules), merged)

    def to_dict(self) -> dict[str, Any]:
        return {"rules": [r for r in RULE_NAMES if r in self.rules], "thresholds": dict(self.thresholds)}


def _per_doc(doc_of: np.ndarray, weights: np.ndarray | None, n_docs: int) -> np.ndarray:
    return np.bincount(doc_of, weights=weights, minlength=n_docs).astype(np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def _in_doc_keys(hashes: np.ndarray, doc_of: np.ndarray) -> np.ndarray:
    """Hashes made unique per document, so equal spans in different documents never match."""
    with np.errstate(over="ignore"):
        return H.mix64(hashes ^ (doc_of.astype(np.uint64) * H.NGRAM_MULT[30]))


class Segments:
    """Lines or paragraphs of a batch, described by the words they hold (empty ones do not count)."""

    def __init__(self, bt: BatchText, breaks: np.ndarray) -> None:
        # breaks: sorted byte positions of the separators; a word's segment = separators before it.
        seg = np.searchsorted(breaks, bt.w_start)
        self.first = np.flatnonzero(np.concatenate(([True], seg[1:] != seg[:-1]))) if len(seg) else seg
        self.last = np.append(self.first[1:], len(seg)) - 1 if len(seg) else seg
        self.words = self.last - self.first + 1
        self.doc = bt.w_doc[self.first]
        wprefix = bt.word_char_prefix
        self.chars = wprefix[self.last + 1] - wprefix[self.first] + (self.words - 1)  # single spaces
        self.repeat = H.repeats(_in_doc_keys(H.sequence_hashes(bt.w_hash, self.first), self.doc))


class BatchText:
    """A batch of documents as one byte array, with the words every statistic starts from.

    Words (runs of non-whitespace bytes) are found once; their hashes, the lower-cased
    letter/digit tokens, the lines and the paragraphs are computed on first use and kept.
    Documents are joined by a blank line, so no word, line or paragraph crosses two documents.
    """

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.n = len(texts)
        self.data, self.doc_start, self.doc_end = H.concat_texts(texts)
        data = self.data
        self.ascii = not len(data) or int(data.max()) < 0x80
        self.w_start, self.w_end = H.runs(~_WHITESPACE[data])
        self.w_doc = H.owner(self.w_start, self.doc_start)
        w_bytes = self.w_end - self.w_start
        if self.ascii or not len(w_bytes):
            self.w_chars = w_bytes
        else:  # characters = bytes that do not continue a UTF-8 sequence (whitespace has none)
            cont = np.add.reduceat(((data & 0xC0) == 0x80).astype(np.int32), self.w_start)
            self.w_chars = w_bytes - cont
        self.word_char_prefix = np.concatenate(([0], np.cumsum(self.w_chars)))
        self.doc_chars = np.fromiter((len(t) for t in texts), dtype=np.float64, count=self.n)
        self._cache: dict[str, Any] = {}

    @property
    def w_hash(self) -> np.ndarray:
        if "w_hash" not in self._cache:
            self._cache["w_hash"] = H.run_hashes(self.data, self.w_start, self.w_end, _WORD_TABLE)
        return self._cache["w_hash"]

    def lower_tokens(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Runs of letters/digits (and non-ASCII bytes), hashed lower-cased: (hashes, doc, start)."""
        if "tokens" not in self._cache:
            starts, ends = H.runs(_ALNUM[self.data])
            hashes = H.run_hashes(self.data, starts, ends, _TOKEN_TABLE)
            self._cache["tokens"] = (hashes, H.owner(starts, self.doc_start), starts)
        return self._cache["tokens"]

    @property
    def lines(self) -> Segments:
        if "lines" not in self._cache:
            self._cache["lines"] = Segments(self, np.flatnonzero(self.data == ord("\n")))
        return self._cache["lines"]

    @property
    def paragraphs(self) -> Segments:
        if "paragraphs" not in self._cache:
            nl = self.data == ord("\n")
            self._cache["paragraphs"] = Segments(self, np.flatnonzero(nl[:-1] & nl[1:]))
        return self._cache["paragraphs"]


_STOP_HASHES: np.ndarray | None = None


def _stop_hashes() -> np.ndarray:
    global _STOP_HASHES
    if _STOP_HASHES is None:
        data = np.frombuffer(" ".join(STOP_WORDS).encode(), dtype=np.uint8)
        starts, ends = H.runs(_ALNUM[data])
        _STOP_HASHES = np.sort(H.run_hashes(data, starts, ends, _TOKEN_TABLE))
    return _STOP_HASHES


def _line_shapes(bt: BatchText, lines: Segments) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per line: starts with a bullet, ends with an ellipsis, ends with terminal punctuation."""
    d = bt.data
    s = bt.w_start[lines.first]  # the line's first byte that is not whitespace
    e = bt.w_end[lines.last]  # one past its last one
    n = len(d)

    def at(idx: np.ndarray) -> np.ndarray:
        return d[np.clip(idx, 0, n - 1)]

    def triple(first: np.ndarray, codes: list[str]) -> np.ndarray:
        b0, b1, b2 = at(first), at(first + 1), at(first + 2)
        hit = np.zeros(len(first), dtype=bool)
        for c in (code.encode() for code in codes):
            hit |= (b0 == c[0]) & (b1 == c[1]) & (b2 == c[2])
        return hit & (e - s >= 3)

    first = at(s)
    bullet = (first == ord("-")) | (first == ord("*")) | triple(s, ["•", "‣", "◦", "⁃"])
    ellipsis = triple(e - 3, ["...", "…"])
    punct = _END_PUNCT[at(e - 1)] | triple(e - 3, ["”", "’", "…"])
    return bullet, ellipsis, punct


def _ngram_stats(
    bt: BatchText, thresholds: Mapping[str, float], need_top: bool, need_dup: bool
) -> dict[str, np.ndarray]:
    """Top 2/3/4-gram and repeated 5..10-gram character fractions per document."""
    out: dict[str, np.ndarray] = {}
    n_docs = bt.n
    word_h = bt.w_hash
    wprefix = bt.word_char_prefix
    doc_word_chars = _per_doc(bt.w_doc, bt.w_chars.astype(np.float64), n_docs)
    n_words = len(word_h)

    def grams(n: int, docs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Start word, doc and in-doc key of every n-gram inside one document (of ``docs``)."""
        if n_words < n:
            z = np.zeros(0, dtype=np.int64)
            return z, z, z.astype(np.uint64)
        k = np.arange(n_words - n + 1)
        valid = bt.w_doc[k] == bt.w_doc[k + n - 1]
        if docs is not None:
            valid &= docs[bt.w_doc[k]]
        k = k[valid]
        return k, bt.w_doc[k], _in_doc_keys(H.ngram_hashes(word_h, n)[valid], bt.w_doc[k])

    if need_top:
        for n in (2, 3, 4):
            k, doc, keys = grams(n)
            top = np.zeros(n_docs)
            if len(k):
                positions, start, counts = H.sorted_groups(keys)
                first = positions[start]
                value = counts * (wprefix[k[first] + n] - wprefix[k[first]])
                np.maximum.at(top, doc[first], value.astype(np.float64))
            out[f"top_{n}gram"] = _ratio(top, doc_word_chars)
    if need_dup:
        candidates = np.ones(n_docs, dtype=bool)  # docs still worth checking at the next n
        floor = min(thresholds[f"max_dup_{n}gram"] for n in range(5, 11))
        for n in range(5, 11):
            frac = np.zeros(n_docs)
            if candidates.any():
                k, doc, keys = grams(n, candidates)
                if len(k):
                    rep = H.repeats(keys)
                    cover = np.zeros(n_words + 1, dtype=np.int64)
                    np.add.at(cover, k[rep], 1)
                    np.add.at(cover, k[rep] + n, -1)
                    covered = np.cumsum(cover[:-1]) > 0
                    frac = _ratio(
                        _per_doc(bt.w_doc[covered], bt.w_chars[covered].astype(np.float64), n_docs),
                        doc_word_chars,
                    )
            out[f"dup_{n}gram"] = frac
            # A repeated (n+1)-gram contains repeated n-grams covering the same words, so the
            # fraction never grows with n: only documents above the smallest threshold can fail later.
            candidates &= frac > floor
    return out


def document_stats(
    texts: list[str], config: QualityConfig | None = None, batch: BatchText | None = None
) -> dict[str, np.ndarray]:
    """Every statistic the rules use, one array entry per document (see the module docstring).

    ``batch``: the texts already as a :class:`BatchText` (its words and hashes are reused).
    """
    config = config or QualityConfig()
    bt = batch or BatchText(texts)
    n = bt.n
    rules = config.rules
    words = _per_doc(bt.w_doc, None, n)
    stats: dict[str, np.ndarray] = {"words": words, "chars": bt.doc_chars}
    stats["mean_word_length"] = _ratio(_per_doc(bt.w_doc, bt.w_chars.astype(np.float64), n), words)
    if "symbol_ratio" in rules:
        hashes = np.array([t.count("#") for t in texts], dtype=np.float64)
        ellipses = np.array([t.count("...") + t.count("…") for t in texts], dtype=np.float64)
        stats["symbol_ratio"] = _ratio(np.maximum(hashes, ellipses), words)
    if "alpha_words" in rules:
        if len(bt.w_start):
            has_letter = np.logical_or.reduceat(_LETTER[bt.data], bt.w_start)  # (+ trailing spaces)
        else:
            has_letter = np.zeros(0, dtype=bool)
        stats["alpha_words"] = _ratio(_per_doc(bt.w_doc[has_letter], None, n), words)
    if "stop_words" in rules:
        tok_h, tok_doc, _ = bt.lower_tokens()
        stop = np.isin(tok_h, _stop_hashes())
        stats["stop_words"] = _per_doc(tok_doc[stop], None, n)
    if rules & {"bullet_lines", "ellipsis_lines", "line_punctuation", "dup_lines"}:
        lines = bt.lines
        n_lines = _per_doc(lines.doc, None, n)
        bullet, ellipsis, punct = _line_shapes(bt, lines)
        stats["lines"] = n_lines
        stats["bullet_lines"] = _ratio(_per_doc(lines.doc[bullet], None, n), n_lines)
        stats["ellipsis_lines"] = _ratio(_per_doc(lines.doc[ellipsis], None, n), n_lines)
        stats["punctuated_lines"] = _ratio(_per_doc(lines.doc[punct], None, n), n_lines)
        rep = lines.repeat
        stats["dup_lines"] = _ratio(_per_doc(lines.doc[rep], None, n), n_lines)
        stats["dup_line_chars"] = _ratio(
            _per_doc(lines.doc[rep], lines.chars[rep].astype(np.float64), n), stats["chars"]
        )
    if "dup_paragraphs" in rules:
        paras = bt.paragraphs
        n_paras = _per_doc(paras.doc, None, n)
        rep = paras.repeat
        stats["dup_paragraphs"] = _ratio(_per_doc(paras.doc[rep], None, n), n_paras)
        stats["dup_paragraph_chars"] = _ratio(
            _per_doc(paras.doc[rep], paras.chars[rep].astype(np.float64), n), stats["chars"]
        )
    if rules & {"top_ngrams", "dup_ngrams"}:
        stats.update(_ngram_stats(bt, config.thresholds, "top_ngrams" in rules, "dup_ngrams" in rules))
    return stats


def _fails(rule: str, s: dict[str, np.ndarray], t: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """(fails, value shown) for one rule over the batch."""
    if rule == "word_count":
        return (s["words"] < t["min_words"]) | (s["words"] > t["max_words"]), s["words"]
    if rule == "mean_word_length":
        m = s["mean_word_length"]
        return (m < t["min_mean_word_length"]) | (m > t["max_mean_word_length"]), m
    if rule == "symbol_ratio":
        return s["symbol_ratio"] > t["max_symbol_ratio"], s["symbol_ratio"]
    if rule == "bullet_lines":
        return s["bullet_lines"] > t["max_bullet_lines"], s["bullet_lines"]
    if rule == "ellipsis_lines":
        return s["ellipsis_lines"] > t["max_ellipsis_lines"], s["ellipsis_lines"]
    if rule == "alpha_words":
        return s["alpha_words"] < t["min_alpha_words"], s["alpha_words"]
    if rule == "stop_words":
        return s["stop_words"] < t["min_stop_words"], s["stop_words"]
    if rule == "line_punctuation":
        return s["punctuated_lines"] < t["min_punctuated_lines"], s["punctuated_lines"]
    if rule == "dup_lines":
        fail = (s["dup_lines"] > t["max_dup_lines"]) | (s["dup_line_chars"] > t["max_dup_line_chars"])
        return fail, np.maximum(s["dup_lines"], s["dup_line_chars"])
    if rule == "dup_paragraphs":
        p, pc = s["dup_paragraphs"], s["dup_paragraph_chars"]
        return (p > t["max_dup_paragraphs"]) | (pc > t["max_dup_paragraph_chars"]), np.maximum(p, pc)
    if rule == "top_ngrams":
        fail = np.zeros(len(s["words"]), dtype=bool)
        for n in (2, 3, 4):
            fail |= s[f"top_{n}gram"] > t[f"max_top_{n}gram"]
        return fail, np.max([s[f"top_{n}gram"] for n in (2, 3, 4)], axis=0)
    if rule == "dup_ngrams":
        fail = np.zeros(len(s["words"]), dtype=bool)
        for n in range(5, 11):
            fail |= s[f"dup_{n}gram"] > t[f"max_dup_{n}gram"]
        return fail, s["dup_5gram"]
    raise KeyError(rule)  # pragma: no cover


def judge(
    texts: list[str], config: QualityConfig | None = None, batch: BatchText | None = None
) -> tuple[list[str | None], list[float | None]]:
    """For each document: the first rule it fails (None = kept) and that rule's statistic.

    ``batch``: the same texts as a :class:`BatchText`, when the caller has one to share.
    """
    config = config or QualityConfig()
    if not texts:
        return [], []
    if not config.rules:
        return [None] * len(texts), [None] * len(texts)
    stats = document_stats(texts, config, batch)
    reason: list[str | None] = [None] * len(texts)
    value: list[float | None] = [None] * len(texts)
    undecided = np.ones(len(texts), dtype=bool)
    for rule in RULES:
        if rule.name not in config.rules:
            continue
        fail, shown = _fails(rule.name, stats, config.thresholds)
        for i in np.flatnonzero(fail & undecided):
            reason[i] = rule.name
            value[i] = round(float(shown[i]), 4)
        undecided &= ~fail
    return reason, value
