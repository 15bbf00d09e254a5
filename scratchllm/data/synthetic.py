"""A synthetic web-like corpus with planted duplicates and junk at known rates (ground truth included).

How do you know a de-duplicator works? Plant copies you know about and count what it finds. This
module writes JSONL shards of English-looking documents (a Zipf-distributed vocabulary of
pronounceable pseudo-words mixed with real function words, sentences ending in full stops,
paragraphs on lines) where each record says what it is:

* ``original`` — a new document;
* ``exact`` — a copy of an earlier original, with case and whitespace changed (the normalised
  text is the same: an exact duplicate);
* ``near`` — a copy of an earlier original with a few percent of its words replaced, deleted
  or inserted; ``jaccard`` is the *true* Jaccard similarity of the two documents' word-5-gram sets,
  computed exactly with the same shingling that :mod:`scratchllm.data.dedup` uses;
* ``related`` — a document that shares at most half of its paragraphs with an earlier original
  (``jaccard`` mostly 0.2-0.6): similar, but not a near duplicate — a de-duplicator must keep it;
* ``junk`` — the kinds of page the quality filters exist for (symbol soup, one phrase repeated,
  a list of bullets, a handful of words).

Records: ``{"text", "id", "kind", "of" (the id of the copied document), "jaccard"}``.
Everything is drawn from ``numpy.random.default_rng(seed)``: the same arguments give the same files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FUNCTION_WORDS = (
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
)
_ONSETS = [
    "b",
    "c",
    "d",
    "f",
    "g",
    "h",
    "j",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "w",
    "z",
    "br",
    "cl",
    "dr",
    "fl",
    "gr",
    "pl",
    "st",
    "tr",
    "sh",
    "ch",
    "th",
    "qu",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io", "y"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "rk", "ng"]


@dataclass(frozen=True)
class Rates:
    """Share of documents of each kind (the rest are originals)."""

    exact: float = 0.05
    near: float = 0.10
    related: float = 0.03
    junk: float = 0.05


def _vocabulary(rng: np.random.Generator, size: int) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        n = int(rng.integers(1, 4))
        w = "".join(
            _ONSETS[rng.integers(len(_ONSETS))]
            + _VOWELS[rng.integers(len(_VOWELS))]
            + _CODAS[rng.integers(len(_CODAS))]
            for _ in range(n)
        )
        if 2 < len(w) < 14:
            words.add(w)
    return sorted(words)


class CorpusGenerator:
    """Draws documents; keeps the originals it may copy later (a bounded pool, so memory is flat)."""

    def __init__(
        self, seed: int = 0, rates: Rates = Rates(), vocab_size: int = 30_000, pool: int = 2000
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.rates = rates
        content = _vocabulary(self.rng, vocab_size)
        self.rng.shuffle(content)  # ranks must not follow the alphabet
        # One distribution over function words (about a third of running English text) and a
        # Zipf-distributed content vocabulary.
        zipf = 1.0 / np.arange(1, len(content) + 1, dtype=np.float64) ** 1.05
        fw = 1.0 / np.arange(1, len(FUNCTION_WORDS) + 1, dtype=np.float64)
        p = np.concatenate([0.35 * fw / fw.sum(), 0.65 * zipf / zipf.sum()])
        self.words = np.array([*FUNCTION_WORDS, *content], dtype=object)
        self.cdf = np.cumsum(p)
        self.cdf[-1] = 1.0
        self.pool: list[tuple[int, str]] = []
        self.pool_size = pool
        self.next_id = 0

    # ---------------------------------------------------------------- pieces
    def _words(self, n: int) -> list[str]:
        return self.words[np.searchsorted(self.cdf, self.rng.random(n))].tolist()

    def _paragraph(self) -> str:
        return self._text(int(self.rng.integers(2, 7)), 1)

    def _text(self, sentences: int, paragraphs: int) -> str:
        """``sentences`` sentences of 6-21 words in ``paragraphs`` paragraphs."""
        return self._texts(np.array([sentences]), np.array([paragraphs]))[0]

    def _texts(self, sentences: np.ndarray, paragraphs: np.ndarray) -> list[str]:
        """Many texts at once (the ``k``-th: ``sentences[k]`` sentences in ``paragraphs[k]`` paragraphs).

        All words of all texts are drawn in one go and glued with one ``str.join``: building
        text word by word in Python would make a gigabyte take many minutes.
        """
        rng = self.rng
        n_sent = int(sentences.sum())
        lengths = rng.integers(6, 22, size=n_sent)
        n = int(lengths.sum())
        tokens = self.words[np.searchsorted(self.cdf, rng.random(n))]
        ends = np.cumsum(lengths) - 1
        starts = ends - lengths + 1
        tokens[starts] = [t.capitalize() for t in tokens[starts].tolist()]
        tokens[ends] = [
            t + m for t, m in zip(tokens[ends].tolist(), np.where(rng.random(n_sent) < 0.05, "?", "."))
        ]
        seps = np.full(n, " ", dtype=object)
        # Sentence k of text d ends a paragraph with probability (paragraphs - 1) / (sentences - 1).
        text_of = np.repeat(np.arange(len(sentences)), sentences)
        p_break = np.where(sentences > 1, (paragraphs - 1) / np.maximum(sentences - 1, 1), 0)[text_of]
        seps[ends[rng.random(n_sent) < p_break]] = "\n\n"
        last = np.cumsum(sentences) - 1  # the last sentence of each text
        seps[ends[last]] = "\x00"
        out = np.empty(2 * n, dtype=object)
        out[0::2], out[1::2] = tokens, seps
        return "".join(out.tolist()).split("\x00")[:-1]

    def _documents(self, k: int) -> list[str]:
        paragraphs = self.rng.integers(3, 10, size=k)
        return self._texts(paragraphs * self.rng.integers(2, 7, size=k), paragraphs)

    # ---------------------------------------------------------------- the kinds
    def _edit(self, text: str, rate: float) -> str:
        """Delete, replace, or insert after, a ``rate`` share of the words (a third each; at least one)."""
        words = np.array(text.split(" "), dtype=object)
        r = self.rng.random(len(words))
        if not (r < rate).any():
            r[int(self.rng.integers(len(r)))] = 0.5 * rate  # a near copy always differs somewhere
        replace = (r >= rate / 3) & (r < 2 * rate / 3)
        words[replace] = self._words(int(replace.sum()))
        insert = (r >= 2 * rate / 3) & (r < rate)
        words[insert] = [w + " " + x for w, x in zip(words[insert].tolist(), self._words(int(insert.sum())))]
        return " ".join(words[r >= rate / 3].tolist())

    def _exact_copy(self, text: str) -> str:
        out = text.upper() if self.rng.random() < 0.3 else text
        out = out.replace(". ", ".  ") if self.rng.random() < 0.5 else out
        return "  " + out.replace("\n\n", "\n \n\n") + " \n"

    def _related(self, text: str) -> str:
        """Keep at most half of the paragraphs (in a new order) and write new ones for the rest."""
        paras = text.split("\n\n")
        keep = [paras[i] for i in self.rng.permutation(len(paras))[: max(1, len(paras) // 2)]]
        mixed = keep + [self._paragraph() for _ in range(len(paras) - len(keep) + 1)]
        return "\n\n".join(mixed[i] for i in self.rng.permutation(len(mixed)))

    def _junk(self) -> str:
        kind = int(self.rng.integers(4))
        if kind == 0:
            return " ".join("#" + w for w in self._words(80))
        if kind == 1:
            phrase = " ".join(self._words(4))
            return ". ".join([phrase] * 60) + "."
        if kind == 2:
            return "\n".join("- " + " ".join(self._words(3)) for _ in range(40))
        return " ".join(self._words(12)) + "."

    def records(self) -> Iterator[dict[str, Any]]:
        """An endless stream of records (see the module docstring)."""
        rates = self.rates
        originals: list[str] = []
        while True:
            doc_id = self.next_id
            self.next_id += 1
            r = self.rng.random()
            rec: dict[str, Any] = {"id": doc_id}
            if self.pool and r < rates.exact:
                of, src = self.pool[int(self.rng.integers(len(self.pool)))]
                rec.update(kind="exact", of=of, text=self._exact_copy(src))
            elif self.pool and r < rates.exact + rates.near:
                of, src = self.pool[int(self.rng.integers(len(self.pool)))]
                rec.update(kind="near", of=of, text=self._edit(src, float(self.rng.uniform(0.002, 0.03))))
                rec["_source_text"] = src  # for the truth; not written
            elif self.pool and r < rates.exact + rates.near + rates.related:
                of, src = self.pool[int(self.rng.integers(len(self.pool)))]
                rec.update(kind="related", of=of, text=self._related(src))
                rec["_source_text"] = src
            elif r < rates.exact + rates.near + rates.related + rates.junk:
                rec.update(kind="junk", text=self._junk())
            else:
                if not originals:
                    originals = self._documents(256)
                text = originals.pop()
                rec.update(kind="original", text=text)
                if len(self.pool) < self.pool_size:
                    self.pool.append((doc_id, text))
                else:
                    self.pool[int(self.rng.integers(self.pool_size))] = (doc_id, text)
            yield rec


def true_jaccard(a: str, b: str, ngram: int = 5) -> float:
    """Exact Jaccard similarity of two texts' word-n-gram sets, shingled as clean shingles them."""
    from scratchllm.data import dedup
    from scratchllm.data.normalize import normalize
    from scratchllm.data.quality import BatchText

    tok_h, tok_doc, _ = BatchText([normalize(a), normalize(b)]).lower_tokens()
    sh, doc = dedup.shingles(tok_h, tok_doc, 2, ngram)
    return dedup.jaccard(sh[doc == 0], sh[doc == 1])


def true_jaccards(pairs: list[tuple[str, str]], ngram: int = 5) -> list[float]:
    """:func:`true_jaccard` for many pairs at once (one vectorised shingling pass)."""
    from scratchllm.data import dedup
    from scratchllm.data.normalize import normalize
    from scratchllm.data.quality import BatchText

    if not pairs:
        return []
    tok_h, tok_doc, _ = BatchText([normalize(t) for pair in pairs for t in pair]).lower_tokens()
    sh, doc = dedup.shingles(tok_h, tok_doc, 2 * len(pairs), ngram)
    bounds = np.searchsorted(doc, np.arange(2 * len(pairs) + 1))
    sets = [sh[bounds[i] : bounds[i + 1]] for i in range(2 * len(pairs))]
    return [dedup.jaccard(sets[2 * k], sets[2 * k + 1]) for k in range(len(pairs))]


def write_corpus(
    out_dir: str | os.PathLike,
    total_bytes: int,
    *,
    seed: int = 0,
    rates: Rates = Rates(),
    shard_bytes: int = 64 << 20,
    with_truth: bool = True,
) -> dict[str, Any]:
    """Write about ``total_bytes`` of JSONL shards ``synthetic-00000.jsonl`` ...; returns a summary.

    ``with_truth``: compute each near or related copy's true Jaccard similarity (``jaccard``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = CorpusGenerator(seed, rates).records()
    counts: dict[str, int] = {}
    written = 0
    shards: list[str] = []
    while written < total_bytes:
        name = f"synthetic-{len(shards):05d}.jsonl"
        shards.append(name)
        size = 0
        with open(out / name, "w", encoding="utf-8") as f:
            while size < shard_bytes and written + size < total_bytes:
                chunk = [next(records) for _ in range(500)]
                near = [r for r in chunk if r["kind"] in ("near", "related")]
                if with_truth:
                    for r, j in zip(near, true_jaccards([(r["_source_text"], r["text"]) for r in near])):
                        r["jaccard"] = round(j, 4)
                for rec in chunk:
                    rec.pop("_source_text", None)
                    line = json.dumps(rec, ensure_ascii=False) + "\n"
                    f.write(line)
                    size += len(line.encode("utf-8"))
                    counts[rec["kind"]] = counts.get(rec["kind"], 0) + 1
        written += size
    summary = {"dir": str(out), "bytes": written, "shards": shards, "documents": sum(counts.values())}
    return {**summary, "kinds": counts}
