"""Vectorised, deterministic hashing of text spans with numpy: the engine under cleaning and dedup.

Cleaning a corpus asks the same questions of millions of documents: which words repeat, which
lines occur in many documents, which documents share most of their 5-word phrases. Every answer
starts with *hashing spans of text* — words, lines, n-grams — into 64-bit numbers that can be
sorted and compared. Doing that one Python call per word would take hours on a large corpus, so
this module hashes all spans of a batch of documents with a handful of numpy operations:

1. **Bytes.** A batch of texts is UTF-8 encoded into one ``uint8`` array (documents separated by
   a blank line, so no span crosses two documents).
2. **Spans** are maximal runs of bytes of a class — "not whitespace" for words, "not a newline"
   for lines — found with :func:`runs` from a boolean mask (where it switches on and off).
3. **Tabulation hashing** (Carter & Wegman's universal hashing, in the form Zobrist used for
   chess positions): a fixed table of random 64-bit numbers ``T[position, byte]``; a span hashes to
   the XOR of ``T[k, b_k]`` over its bytes ``b_k``. One gather and one ``bitwise_xor.reduceat``
   hash every span at once. Positions are taken modulo 64 and each block of 64 bytes multiplies
   its values by its own odd constant, so every byte position counts and spans of any length hash
   well. A final "mix" (the SplitMix64 finaliser) spreads the bits.
4. **N-grams** of consecutive span hashes combine as ``sum_i h[k+i] * C_i`` (wrapping ``uint64``
   arithmetic, distinct odd ``C_i``), so word order matters.

Everything is seeded by constants, so a hash is the same in every process and on every run
(Python's built-in ``hash()`` is salted per process, which would make worker counts change results).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

_SEED = 0x5C1A7C11
_TABLE_POSITIONS = 64
_BLOCKS = 256

_rng = np.random.default_rng(_SEED)
#: ``T[position % 64, byte]``: the tabulation table.
TABLE = _rng.integers(0, 2**64, size=(_TABLE_POSITIONS, 256), dtype=np.uint64, endpoint=False)
#: An odd multiplier for each block of 64 byte positions (position // 64, capped).
BLOCK_MULT = _rng.integers(0, 2**63, size=_BLOCKS, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
#: Odd multipliers for combining consecutive hashes into an n-gram hash (n up to 32).
NGRAM_MULT = _rng.integers(0, 2**63, size=32, dtype=np.uint64) * np.uint64(2) + np.uint64(1)

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: every input bit affects every output bit (vectorised, wrapping)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of every maximal run of ``True`` in a boolean array."""
    m = np.concatenate(([False], np.asarray(mask, dtype=bool), [False]))
    edges = np.flatnonzero(m[1:] != m[:-1])
    return edges[0::2].astype(np.int64), edges[1::2].astype(np.int64)


def span_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """64-bit hashes of the byte spans ``data[starts[i]:ends[i]]`` (non-empty, non-overlapping).

    Equal spans get equal hashes wherever they are; different spans collide with probability
    about 2^-64 per pair (tabulation hashing is 3-wise independent).
    """
    lengths = (ends - starts).astype(np.int64)
    if lengths.size == 0:
        return np.zeros(0, dtype=np.uint64)
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths  # where each span starts in the concatenation
    pos = np.arange(total, dtype=np.int64) - np.repeat(offsets, lengths)  # position inside the span
    src = np.repeat(starts.astype(np.int64), lengths) + pos
    with np.errstate(over="ignore"):
        values = TABLE[pos & (_TABLE_POSITIONS - 1), data[src]]
        values *= BLOCK_MULT[np.minimum(pos >> 6, _BLOCKS - 1)]
        h = np.bitwise_xor.reduceat(values, offsets)
        return mix64(h ^ (lengths.astype(np.uint64) * NGRAM_MULT[31]))


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """Hashes of every ``n`` consecutive items: ``len(hashes) - n + 1`` values (none if fewer)."""
    k = len(hashes) - n + 1
    if k <= 0:
        return np.zeros(0, dtype=np.uint64)
    acc = np.zeros(k, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(n):
            acc += hashes[i : i + k] * NGRAM_MULT[i]
    return mix64(acc)


def concat_texts(texts: list[str], separator: bytes = b"\n\n") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ``uint8`` array of all texts (UTF-8) joined by ``separator``, with each text's byte range.

    Returns ``(data, starts, ends)``. The separator (a blank line by default) ends every word,
    line and paragraph, so no span ever crosses two documents.
    """
    encoded = [t.encode("utf-8") for t in texts]
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    starts = np.cumsum(lengths + len(separator)) - lengths - len(separator)
    data = np.frombuffer(separator.join(encoded) + separator, dtype=np.uint8)
    return data, starts, starts + lengths


def owner(positions: np.ndarray, doc_starts: np.ndarray) -> np.ndarray:
    """Index of the document each byte position belongs to (``doc_starts`` sorted)."""
    return np.searchsorted(doc_starts, positions, side="right") - 1


def stable_hash64(data: bytes | str) -> int:
    """A 64-bit hash of a whole string or bytes, the same in every process (BLAKE2b)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def byte_table(chars: bytes | str, *, non_ascii: bool = False) -> np.ndarray:
    """A 256-entry boolean lookup table: True for the given ASCII bytes (and bytes >= 0x80 if asked)."""
    table = np.zeros(256, dtype=bool)
    table[np.frombuffer(chars.encode() if isinstance(chars, str) else chars, dtype=np.uint8)] = True
    if non_ascii:
        table[0x80:] = True
    return table


def as_list(x: Any) -> list:
    """A numpy array (or scalar) as plain Python values (for JSON)."""
    return np.asarray(x).tolist()
