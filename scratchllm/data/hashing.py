"""Vectorised, deterministic hashing of text spans with numpy: the engine under cleaning and dedup.

Cleaning a corpus asks the same questions of millions of documents: which words repeat, which
lines occur in many documents, which documents share most of their 5-word phrases. Every answer
starts with *hashing spans of text* — words, lines, n-grams — into 64-bit numbers that can be
sorted and compared. Doing that one Python call per word would take hours on a large corpus, so
this module hashes all spans of a batch of documents with a handful of numpy operations:

1. **Bytes.** A batch of texts is UTF-8 encoded into one ``uint8`` array (documents separated by
   a blank line, so no span crosses two documents).
2. **Runs** are maximal stretches of bytes of a class — "not whitespace" for words, "letter or
   digit" for tokens — found with :func:`runs` from a boolean mask (where it switches on and off).
3. **Tabulation hashing** (Carter & Wegman's universal hashing, in the form Zobrist used for
   chess positions): a fixed table of random 64-bit numbers ``T[position, byte]``; a run hashes to
   the XOR of ``T[k, b_k]`` over its bytes ``b_k`` (:func:`run_hashes`). One lookup per byte and one
   ``bitwise_xor.reduceat`` hash every run at once. Positions are taken modulo 64 and each block
   of 64 bytes multiplies its values by its own odd constant, so every byte position counts and
   runs of any length hash well. A final "mix" (the SplitMix64 finaliser) spreads the bits.
4. **Sequences**: n-grams of consecutive word hashes combine as ``sum_i h[k+i] * C_i`` (wrapping
   ``uint64`` arithmetic, distinct odd ``C_i``), lines and paragraphs as the XOR of their words'
   hashes mixed with their positions — so word order matters, and long spans cost one step per
   word, not per byte.

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
TABLE_FLAT = TABLE.ravel()  # T[p, b] is TABLE_FLAT[p * 256 + b]: a 1-D take is ~3x faster
#: An odd multiplier for each block of 64 byte positions (position // 64, capped); block 0: 1.
BLOCK_MULT = _rng.integers(0, 2**63, size=_BLOCKS, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
BLOCK_MULT[0] = 1
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


def run_table(separators: np.ndarray, byte_map: np.ndarray | None = None) -> np.ndarray:
    """The flat tabulation table for hashing runs of non-separator bytes (see :func:`run_hashes`).

    Columns of separator bytes are zero, so they add nothing to a XOR; ``byte_map`` (256 entries)
    maps bytes first, e.g. upper- to lower-case ASCII, so ``"The"`` and ``"the"`` hash alike.
    """
    table = TABLE[:, np.arange(256) if byte_map is None else byte_map].copy()
    table[:, np.asarray(separators, dtype=bool)] = 0
    return table.ravel()


def run_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, table: np.ndarray) -> np.ndarray:
    """64-bit hashes of the maximal runs ``data[starts[i]:ends[i]]`` of non-separator bytes.

    ``table`` comes from :func:`run_table` with the same separators that delimit the runs. Each
    byte's position inside its run is found for the whole array at once (a running maximum of
    run starts), every byte looks up ``T[position, byte]`` (separators give 0), and one
    ``bitwise_xor.reduceat`` at the run starts folds each run — the separators after it add
    nothing. Equal runs get equal hashes wherever they are; different runs collide with
    probability about 2^-64 per pair (tabulation hashing is 3-wise independent).
    """
    if len(starts) == 0:
        return np.zeros(0, dtype=np.uint64)
    n = len(data)
    last_start = np.zeros(n, dtype=np.int32 if n < 2**31 else np.int64)
    last_start[starts] = starts
    np.maximum.accumulate(last_start, out=last_start)
    pos = np.arange(n, dtype=last_start.dtype)
    pos -= last_start  # position inside the current run (garbage on separators: they look up 0)
    key = pos & (_TABLE_POSITIONS - 1)
    key <<= 8
    key |= data
    values = table.take(key)
    lengths = ends - starts
    if lengths.max() > _TABLE_POSITIONS:  # long runs: each further block of 64 bytes its own multiplier
        far = np.flatnonzero(pos >= _TABLE_POSITIONS)
        with np.errstate(over="ignore"):
            values[far] *= BLOCK_MULT[np.minimum(pos[far] >> 6, _BLOCKS - 1)]
    h = np.bitwise_xor.reduceat(values, starts)
    with np.errstate(over="ignore"):
        return mix64(h ^ (lengths.astype(np.uint64) * NGRAM_MULT[31]))


def sequence_hashes(item_hashes: np.ndarray, group_first: np.ndarray) -> np.ndarray:
    """One hash per group of consecutive items (``group_first``: index of each group's first item).

    Each item's hash is mixed with its position in the group before the groups are XOR-reduced,
    so order matters: ``[a, b]`` and ``[b, a]`` differ. Used to hash lines and paragraphs from the
    hashes of their words instead of from their bytes (far fewer elements to touch).
    """
    if len(group_first) == 0:
        return np.zeros(0, dtype=np.uint64)
    counts = np.diff(np.append(group_first, len(item_hashes)))
    pos = np.arange(len(item_hashes), dtype=np.uint64) - np.repeat(group_first.astype(np.uint64), counts)
    with np.errstate(over="ignore"):
        return mix64(np.bitwise_xor.reduceat(mix64(item_hashes ^ (pos * NGRAM_MULT[28])), group_first))


#: Sorting packed keys: the high 40 bits are a hash, the low 24 bits a position.
POSITION_BITS = 24
_POS_MASK = np.uint64((1 << POSITION_BITS) - 1)


def sorted_groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group equal keys: ``(sorted positions, group start in that order, group sizes)``.

    Positions within a group come in increasing order, so ``positions[group_start]`` is each
    group's first occurrence. Packs (high 40 bits of the key, position) into one uint64 and uses
    ``np.sort`` (SIMD-accelerated, several times faster than ``argsort``); two different keys
    share their top 40 bits with probability 2^-40 per pair, which these statistics can bear.
    Falls back to a stable argsort beyond 2^24 elements.
    """
    n = len(keys)
    if n == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    if n < 1 << POSITION_BITS:
        packed = np.sort((keys & ~_POS_MASK) | np.arange(n, dtype=np.uint64))
        positions = (packed & _POS_MASK).astype(np.int64)
        top = packed >> np.uint64(POSITION_BITS)
    else:  # pragma: no cover - batches are far smaller
        positions = np.argsort(keys, kind="stable")
        top = keys[positions]
    start = np.flatnonzero(np.concatenate(([True], top[1:] != top[:-1])))
    return positions, start, np.diff(np.append(start, n))


def repeats(keys: np.ndarray) -> np.ndarray:
    """True for every element whose key occurred at an earlier position (first occurrences: False)."""
    positions, start, _ = sorted_groups(keys)
    rep = np.ones(len(keys), dtype=bool)
    rep[positions[start]] = False
    return rep


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
