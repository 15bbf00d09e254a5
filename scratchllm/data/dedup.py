"""Duplicate removal: exact copies by hash, near-copies with MinHash + locality-sensitive hashing.

Corpora are full of copies: the same article syndicated on ten sites, a template page with one
word changed, a forum post quoted whole. Training on copies wastes compute, teaches the model to
memorise, and — when a copy lands in the validation split — makes the validation loss lie.

**Exact duplicates.** Two documents whose normalised text (case-folded, whitespace collapsed) is
equal have equal 64-bit BLAKE2b hashes; sorting the hashes finds every group. The first document
of a group is kept.

**Near duplicates** are measured by the **Jaccard similarity** of their *shingle sets*: the sets
of word n-grams (5-grams by default) they contain, ``J(A, B) = |A ∩ B| / |A ∪ B|``. Comparing every
pair of N documents is N²/2 comparisons — 31 billion for 250,000 documents. Three ideas make it
linear:

1. **MinHash** (Broder 1997). Hash every shingle with a random permutation ``π`` of the hash
   space and keep the minimum. For two sets, ``P[min π(A) = min π(B)] = J(A, B)``: the minimum is
   the same exactly when the smallest element of ``A ∪ B`` lies in ``A ∩ B``. With ``K``
   independent permutations (here ``π_k(x) = (a_k x + b_k) mod 2^64``, top 32 bits kept) a
   document becomes a *signature* of ``K`` numbers, and the fraction of equal positions in two
   signatures estimates their Jaccard similarity (standard error ``sqrt(J(1-J)/K)``).
2. **LSH banding** (Indyk & Motwani 1998; Leskovec, Rajaraman & Ullman, *Mining of Massive
   Datasets*, ch. 3). Cut each signature into ``b`` bands of ``r`` rows and hash each band. Two
   documents become *candidates* when any band is equal, which happens with probability
   ``1 - (1 - J^r)^b`` — an S-curve: near 0 for dissimilar pairs, near 1 for similar ones.
   Finding equal band hashes is a sort, so candidates cost O(N log N), not O(N²).
   :func:`lsh_params` picks ``(b, r)`` so that a pair exactly at the threshold becomes a
   candidate with probability at least 99 % while as few dissimilar pairs as possible do.
3. **Verification.** A candidate pair is confirmed by computing its Jaccard similarity exactly
   from the stored shingle sets (``verify="exact"``, the default: no estimation error at the
   threshold) or estimating it from the signatures (``verify="signature"``: no shingle sets on
   disk, about ±0.035 of noise at K=128).

A document is removed when it is a confirmed near-copy of an **earlier** document (input order),
so the first of each group survives. Everything is computed from seeded constants: the same
input gives the same output, whatever the number of worker processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from scratchllm.data import hashing as H
from scratchllm.errors import ScratchLLMError

VERIFY_CHOICES = ("exact", "signature")


@dataclass(frozen=True)
class DedupConfig:
    """Exact and near-duplicate removal settings (near: MinHash over word n-gram shingles + LSH)."""

    exact: bool = True
    near: bool = True
    threshold: float = 0.8
    ngram: int = 5
    num_perm: int = 128
    bands: int | None = None  # None: chosen by lsh_params from threshold and num_perm
    rows: int | None = None
    verify: str = "exact"
    seed: int = 1

    def validated(self) -> DedupConfig:
        if not 0.0 < self.threshold <= 1.0:
            raise ScratchLLMError(f"--near-threshold must be in (0, 1], got {self.threshold}")
        if not 1 <= self.ngram <= 32:
            raise ScratchLLMError(f"--shingle-size must be between 1 and 32, got {self.ngram}")
        if not 8 <= self.num_perm <= 1024:
            raise ScratchLLMError(f"--num-perm must be between 8 and 1024, got {self.num_perm}")
        if self.verify not in VERIFY_CHOICES:
            raise ScratchLLMError(f"--near-verify must be one of {', '.join(VERIFY_CHOICES)}")
        if (self.bands is None) != (self.rows is None):
            raise ScratchLLMError("give both --lsh-bands and --lsh-rows, or neither")
        if (
            self.bands is not None
            and self.rows is not None
            and (self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm)
        ):
            raise ScratchLLMError(
                f"--lsh-bands x --lsh-rows must be at most --num-perm {self.num_perm} (and both >= 1)"
            )
        return self

    def lsh(self) -> tuple[int, int]:
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return lsh_params(self.threshold, self.num_perm)


def candidate_probability(similarity: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """Probability that LSH with ``bands`` x ``rows`` makes a pair of this Jaccard similarity a candidate."""
    return 1.0 - (1.0 - np.asarray(similarity, dtype=np.float64) ** rows) ** bands


def lsh_params(threshold: float, num_perm: int, *, recall_at_threshold: float = 0.99) -> tuple[int, int]:
    """``(bands, rows)``: the most rows per band (fewest false candidates) whose S-curve still makes a
    pair at ``threshold`` a candidate with probability >= ``recall_at_threshold``."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if candidate_probability(threshold, bands, rows) >= recall_at_threshold:
            return bands, rows
    return num_perm, 1


def exact_key(text: str) -> int:
    """The exact-duplicate key: a 64-bit hash of the case-folded text with whitespace collapsed."""
    return H.stable_hash64(" ".join(text.casefold().split()))


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The MinHash permutations ``x -> a*x + b (mod 2^32)``: ``a`` odd (so a bijection), ``b`` random.

    32-bit arithmetic on 32-bit shingle hashes is three times faster in numpy than 64-bit, and
    the shingle hashes are already well mixed, so these affine maps order them independently
    enough for MinHash (the tests check the estimate against the exact Jaccard similarity).
    """
    rng = np.random.default_rng([0x3141, seed])
    a = rng.integers(0, 2**31, size=num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = rng.integers(0, 2**32, size=num_perm, dtype=np.uint32, endpoint=False)
    return a, b


def shingles(
    token_hashes: np.ndarray, token_doc: np.ndarray, n_docs: int, ngram: int
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct word-n-gram shingles of each document as 32-bit hashes: ``(hashes, doc)``,
    sorted by document, then hash.

    ``token_hashes``/``token_doc``: the documents' word hashes in order and the document of each.
    A document with fewer than ``ngram`` words (but at least one) has one shingle: all its words.
    32 bits per shingle are plenty to compare two sets of a few thousand (a false match between
    two given shingles: 2^-32).
    """
    k = len(token_hashes) - ngram + 1
    parts_h, parts_d = [], []
    if k > 0:
        start = np.arange(k)
        valid = token_doc[start] == token_doc[start + ngram - 1]
        parts_h.append(H.ngram_hashes(token_hashes, ngram)[valid])
        parts_d.append(token_doc[start[valid]])
    counts = np.bincount(token_doc, minlength=n_docs)
    short = np.flatnonzero((counts > 0) & (counts < ngram))
    if len(short):
        first = np.searchsorted(token_doc, short)
        for d, f in zip(short.tolist(), first.tolist()):
            parts_h.append(H.ngram_hashes(token_hashes[f : f + counts[d]], int(counts[d])))
            parts_d.append(np.array([d], dtype=np.int64))
    if not parts_h:
        return np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=np.int64)
    # (document, top 32 bits of the hash) packed in one uint64: a single SIMD sort orders both.
    packed = (np.concatenate(parts_d).astype(np.uint64) << np.uint64(32)) | (
        np.concatenate(parts_h) >> np.uint64(32)
    )
    packed = np.sort(packed)  # (np.unique would hash instead of sorting: slower here)
    packed = packed[np.concatenate(([True], packed[1:] != packed[:-1]))]
    return (packed & np.uint64(0xFFFFFFFF)).astype(np.uint32), (packed >> np.uint64(32)).astype(np.int64)


def minhash(
    shingle_hashes: np.ndarray, shingle_doc: np.ndarray, n_docs: int, perms: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """MinHash signatures ``[n_docs, K]`` (uint32); a document without shingles gets all 0xFFFFFFFF.

    ``shingle_doc`` must be sorted. Shingles are processed in blocks so the ``[block, K]``
    permuted-hash matrix stays in cache; each block's minima are folded per document with
    ``minimum.reduceat`` and combined with the minima so far.
    """
    a, b = perms
    sig = np.full((n_docs, len(a)), 0xFFFFFFFF, dtype=np.uint32)
    block = max(1, (1 << 18) // len(a))  # ~1 MB of uint32 per block
    for lo in range(0, len(shingle_hashes), block):
        h = shingle_hashes[lo : lo + block]
        d = shingle_doc[lo : lo + block]
        v = np.multiply.outer(h, a)  # uint32 arithmetic wraps: (a*x + b) mod 2^32
        v += b
        starts = np.flatnonzero(np.concatenate(([True], d[1:] != d[:-1])))
        docs = d[starts]
        sig[docs] = np.minimum(sig[docs], np.minimum.reduceat(v, starts, axis=0))
    return sig


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``[n_docs, bands]`` uint64: one hash per band of ``rows`` signature values."""
    n = len(signatures)
    cut = signatures[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    with np.errstate(over="ignore"):
        acc = (cut * H.NGRAM_MULT[:rows][None, None, :]).sum(axis=2, dtype=np.uint64)
        acc += np.arange(bands, dtype=np.uint64)[None, :] * H.NGRAM_MULT[29]
    return H.mix64(acc)


def _group_firsts(sorted_top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a sorted array: the positions that repeat the previous value, and each one's group start.

    Only the repeats (a small share of a corpus) get index arrays; nothing of size N but one
    boolean per element is built, which keeps dedup's memory to a few bytes per document.
    """
    same = sorted_top[1:] == sorted_top[:-1]
    later = np.flatnonzero(same) + 1
    if not len(later):
        return later, later
    starts = np.flatnonzero(~same) + 1  # every group start except position 0
    first = np.concatenate(([0], starts))[np.searchsorted(starts, later, side="right")]
    return later, first


def duplicate_of_earlier(keys: np.ndarray) -> np.ndarray:
    """For each position: the index of the first earlier equal key, or -1 (exact dedup by sorting)."""
    order = np.argsort(keys, kind="stable")  # stable: equal keys stay in input order
    later, first = _group_firsts(keys[order])
    out = np.full(len(keys), -1, dtype=np.int64)
    out[order[later]] = order[first]
    return out


_LOW32 = np.uint64(0xFFFFFFFF)


def candidate_pairs(band_columns: Iterable[np.ndarray], alive: np.ndarray) -> np.ndarray:
    """Candidate pairs ``[m, 2]`` (earlier, later) from LSH bands: docs sharing a band bucket.

    For each band, documents are sorted by band hash; in every bucket of two or more, each later
    member is paired with the bucket's first (earliest) member. ``alive``: which documents take
    part (exact duplicates and documents without shingles do not).

    Memory: the band hash's top 32 bits and the document index are packed into one uint64 and
    sorted in place (so equal hashes come out in document order, and no argsort array is
    needed). Two different band hashes agree on 32 bits with probability 2^-32 per pair: that
    only adds a candidate, which verification then rejects.
    """
    idx = np.flatnonzero(alive).astype(np.uint64)
    if len(idx) >= 1 << 32:  # pragma: no cover - 4 billion documents
        raise ScratchLLMError("near-duplicate removal handles at most 2^32 documents per run")
    codes = []
    n = np.int64(len(alive))
    for column in band_columns:
        packed = column[idx]
        del column
        packed &= ~_LOW32
        packed |= idx
        packed.sort()
        later, first = _group_firsts((packed >> np.uint64(32)).astype(np.uint32))
        if len(later):
            earlier_doc = (packed[first] & _LOW32).astype(np.int64)
            codes.append(earlier_doc * n + (packed[later] & _LOW32).astype(np.int64))
    if not codes:
        return np.zeros((0, 2), dtype=np.int64)
    unique = np.sort(np.concatenate(codes))
    unique = unique[np.concatenate(([True], unique[1:] != unique[:-1]))]
    return np.stack([unique // n, unique % n], axis=1)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted arrays of distinct values."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def signature_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The MinHash estimate of Jaccard similarity: the fraction of equal signature positions."""
    return float(np.mean(a == b))


def verified_duplicates(
    pairs: np.ndarray,
    n_docs: int,
    threshold: float,
    similarity: Callable[[int, int], float],
) -> tuple[np.ndarray, np.ndarray, int]:
    """Confirm candidate pairs: for each document, the first earlier document with similarity >=
    ``threshold`` (-1 if none) and that similarity; also how many pairs were checked.

    Pairs are visited sorted by the later document, then the earlier one, so the result does not
    depend on how pairs were found. A document already confirmed as a copy is not checked again.
    """
    partner = np.full(n_docs, -1, dtype=np.int64)
    score = np.zeros(n_docs, dtype=np.float32)
    if len(pairs) == 0:
        return partner, score, 0
    order = np.lexsort((pairs[:, 0], pairs[:, 1]))
    checked = 0
    for i, j in pairs[order].tolist():
        if partner[j] >= 0:
            continue
        checked += 1
        s = similarity(i, j)
        if s >= threshold:
            partner[j], score[j] = i, s
    return partner, score, checked
