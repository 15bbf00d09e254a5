"""Byte-level byte-pair encoding (BPE), trained from scratch — GPT-2's tokenizer, explained.

The idea in four steps:

1. **Bytes, not characters.** Text is UTF-8 encoded, so the 256 possible byte values are the
   starting vocabulary. Every string — any language, any emoji — is representable, and there is
   never an "unknown token" (compare :mod:`scratchllm.tokenizer.word`).
2. **Pre-tokenise with a regex.** A pattern splits text into "words" (``" the"``, ``"'s"``,
   ``" 2024"``, ``"\\n"``) so that merges never glue a word to the punctuation after it.
   We offer GPT-2's pattern and the GPT-4 (``cl100k``) one, or any custom regex.
3. **Learn merges.** Count every adjacent pair of tokens over all words, merge the most frequent
   pair into a new token, repeat until the vocabulary has ``vocab_size`` entries. The new token's
   *rank* is its id: earlier merges have lower ranks.
4. **Encode** a word by repeatedly merging the adjacent pair whose concatenation has the lowest
   rank (exactly what ``tiktoken`` does), and **decode** by concatenating token bytes.

Training, done well
-------------------
:func:`train_bpe_naive` is the textbook loop: recount all pairs after each merge. It is short and
obviously correct, and far too slow beyond a toy corpus. :func:`train_bpe` does the same thing
incrementally: it counts each distinct pre-tokenised word once (with its multiplicity), keeps the
pair counts and an index *pair → words containing it*, and after a merge updates only the words
that contained the merged pair. The next best pair comes from a heap with lazy deletion (stale
entries are skipped or re-pushed when popped). Both trainers produce the same merges; a test checks.

**Tie-breaking (deterministic):** the pair with the highest count wins; among equal counts, the
pair whose ``(left bytes, right bytes)`` is lexicographically smallest wins. No dict or set order
ever decides anything, so the same corpus always gives byte-identical tokenizer files, whatever
the number of worker processes used for counting.

If a merge produces bytes that already are a token (two different splits of the same string can
both become frequent), the existing id is reused and the vocabulary does not grow on that step.

Special tokens such as ``<|endoftext|>`` get the **last** ids (GPT-2: 50256 in a 50257 vocab),
so ``vocab_size`` counts them. In training text they act as hard document boundaries and are
never merged with anything. ``encode`` reads a special token's text as ordinary bytes
(``"<|endoftext|>"`` → ``"<|"``, ``"endoftext"``, ``"|>"``) unless the caller allows it, as
tiktoken's ``encode(text, allowed_special=...)`` does.

Unicode policy (the same in both encoders)
------------------------------------------
``decode(encode(s)) == s`` for every valid Unicode string ``s``. Python strings can also hold
*lone surrogates* (e.g. ``b"\\xff".decode("utf-8", "surrogateescape")``), which UTF-8 cannot
represent: like tiktoken, both encoders first pass such text through UTF-16 with
``surrogatepass`` and decode with ``replace`` — valid surrogate pairs become the character they
encode and each lone surrogate becomes U+FFFD. ``decode`` turns byte sequences that are not valid
UTF-8 (a model may generate them) into U+FFFD; :meth:`BPETokenizer.decode_bytes` gives the raw
bytes. So raw bytes decoded with ``errors="replace"`` round-trip exactly.
"""

from __future__ import annotations

import base64
import heapq
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import regex

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.base import EOT, AllowedSpecial, Tokenizer

# ----------------------------------------------------------------------------- pre-tokenisation
# GPT-2's pattern as tiktoken writes it (possessive quantifiers, same splits as the 2019 original
# r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""", only faster).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# GPT-4's cl100k_base pattern: case-insensitive contractions, numbers in groups of at most 3
# digits, punctuation keeps its trailing newlines, a letter run may take one leading non-letter.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}


def resolve_pattern(pattern: str) -> str:
    """``"gpt2"`` / ``"gpt4"`` → the regex; anything else is taken as a custom regex."""
    pat = PATTERNS.get(pattern, pattern)
    try:
        regex.compile(pat)
    except regex.error as err:
        raise ScratchLLMError(f"invalid pre-tokenisation pattern {pattern!r}: {err}") from None
    return pat


def clean_text(text: str) -> str:
    """Make ``text`` encodable as UTF-8: surrogate pairs → their character, lone ones → U+FFFD.

    This is the same fix-up tiktoken applies, so the reference and the fast encoder agree.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _special_splitter(specials: Iterable[str]) -> regex.Pattern | None:
    # Longest first, so that a special token that contains another one wins.
    alts = sorted(set(specials), key=lambda s: (-len(s), s))
    return regex.compile("(" + "|".join(regex.escape(s) for s in alts) + ")") if alts else None


def _whitespace_chars() -> frozenset[str]:
    # Every character the pattern's \s (or str.isspace) treats as whitespace; all are < U+3001.
    ws = regex.compile(r"\s")
    return frozenset(c for c in map(chr, range(0x3001)) if ws.match(c) or c.isspace())


_WS: frozenset[str] | None = None


def _safe_chunks(text: str) -> Iterable[tuple[str, bool]]:
    """Split ``text`` after newlines that no GPT-2/GPT-4 pre-token can cross.

    A cut after ``"\\n"`` is safe when the characters on both sides of that newline are not
    whitespace: both patterns then end a pre-token at the newline and start a fresh one after it,
    with or without the cut. Yields ``(chunk, joinable)``. Cutting lets us count repeated chunks
    once (corpora repeat lines a lot) and spread the regex work over processes.

    ``joinable`` chunks may be concatenated with each other, in any order, without changing their
    pre-tokens. That needs *both* ends to be safe: the chunk ends with ``"x\\n"`` (``x`` not
    whitespace) and it starts with a character that is not whitespace. Only the first chunk of a
    text can start with whitespace: glued after another chunk's ``"\\n"`` it would extend that
    newline into a whitespace run the text never had (``"\\xa0 1"`` after ``"1\\n"`` pre-tokenises
    as ``"\\n\\xa0"``, ``" 1"`` instead of ``"\\n"`` ... ``"\\xa0"``, ``" 1"``). Such a chunk, like
    the last one, is counted on its own.
    """
    global _WS
    if _WS is None:
        _WS = _whitespace_chars()
    ws = _WS
    lines = text.split("\n")
    start = 0
    for i in range(len(lines) - 1):
        line, nxt = lines[i], lines[i + 1]
        if line and nxt and line[-1] not in ws and nxt[0] not in ws:
            chunk = "\n".join(lines[start : i + 1]) + "\n"
            yield chunk, chunk[0] not in ws  # (true for every chunk but perhaps the first)
            start = i + 1
    tail = "\n".join(lines[start:])
    if tail:
        yield tail, False


def _count_job(job: tuple[str, str, int]) -> Counter:
    """Pre-tokenise one blob of text and count its words (runs in a worker process)."""
    pattern, blob, multiplier = job
    counts = Counter(regex.findall(pattern, blob))
    if multiplier != 1:
        for word in counts:
            counts[word] *= multiplier
    return counts


def count_words(
    texts: Iterable[str],
    pattern: str = "gpt2",
    special_tokens: Iterable[str] = (EOT,),
    *,
    workers: int | None = 1,
) -> dict[bytes, int]:
    """Pre-tokenise ``texts`` and count each distinct word: ``{utf8 bytes: count}``.

    Special tokens in the text are document boundaries (removed, never merged across). With
    ``workers > 1`` the regex runs in a process pool; the job list does not depend on the number
    of workers and counts are summed, so the result is identical for any ``workers``.
    ``workers=None`` picks one per CPU for inputs over 8 MB and 1 below (a pool costs more than
    it saves on small inputs).
    """
    pat = resolve_pattern(pattern)
    builtin = pat in PATTERNS.values()
    splitter = _special_splitter(special_tokens)
    specials = set(special_tokens)
    # 1. Distinct chunks with multiplicities. Custom patterns are not cut (we cannot prove a
    #    cut safe for them), so they are only de-duplicated whole.
    chunk_counts: Counter = Counter()
    tails: Counter = Counter()
    total_chars = 0
    for text in texts:
        text = clean_text(text)
        total_chars += len(text)
        for doc in splitter.split(text) if splitter else [text]:
            if not doc or doc in specials:
                continue
            if not builtin:
                tails[doc] += 1
                continue
            for chunk, joinable in _safe_chunks(doc):
                (chunk_counts if joinable else tails)[chunk] += 1
    # 2. Jobs: joinable chunks with the same multiplicity are concatenated into blobs of ~1 MB,
    #    every other chunk (a text's first chunk when it starts with whitespace, its last) stays
    #    alone. Sorting makes the job list deterministic.
    by_mult: dict[int, list[str]] = defaultdict(list)
    for chunk, n in chunk_counts.items():
        by_mult[n].append(chunk)
    jobs: list[tuple[str, str, int]] = []
    for n in sorted(by_mult):
        blob: list[str] = []
        size = 0
        for chunk in sorted(by_mult[n]):
            blob.append(chunk)
            size += len(chunk)
            if size >= 1 << 20:
                jobs.append((pat, "".join(blob), n))
                blob, size = [], 0
        if blob:
            jobs.append((pat, "".join(blob), n))
    jobs.extend((pat, tail, n) for tail, n in sorted(tails.items()))
    # 3. Run the regex, in-process or in a pool, and sum the counts.
    if workers is None:
        workers = (os.cpu_count() or 1) if total_chars > 8 << 20 else 1
    workers = max(1, min(int(workers), len(jobs) or 1))
    totals: Counter = Counter()
    if workers == 1:
        for job in jobs:
            totals.update(_count_job(job))
    else:
        import multiprocessing
        import sys
        from concurrent.futures import ProcessPoolExecutor

        # "fork" on Linux: workers start instantly and a user's script needs no
        # `if __name__ == "__main__":` guard (with "spawn" each worker re-imports __main__).
        # Elsewhere fork is unsafe (macOS system libraries) and "spawn" is the default.
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for counts in pool.map(_count_job, jobs):
                totals.update(counts)
    return {word.encode("utf-8"): n for word, n in sorted(totals.items())}


# ----------------------------------------------------------------------------- training
def _pick_best(counts: dict[tuple[int, int], int], vocab: list[bytes]) -> tuple[int, int]:
    """Highest count; ties → lexicographically smallest (left bytes, right bytes)."""
    return min(counts, key=lambda p: (-counts[p], vocab[p[0]], vocab[p[1]]))


def _merge_word(word: list[int], a: int, b: int, new_id: int) -> list[int]:
    """Replace every non-overlapping ``a, b`` (left to right) in ``word`` by ``new_id``."""
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def _merge_and_update(
    word: list[int],
    a: int,
    b: int,
    new_id: int,
    n: int,
    pair_counts: dict[tuple[int, int], int],
    touched: set[tuple[int, int]],
) -> list[int] | None:
    """Merge ``a, b`` in one word (of count ``n``) and fix ``pair_counts`` around each merge site.

    The incremental trainer's hot loop. It does what "subtract all the word's old pairs, add all
    its new pairs" would do, but touches only the pairs next to a merge: at a site ``x a b y``
    the pairs ``(x, a)`` and ``(b, y)`` disappear and ``(x', new)`` / ``(new, y)`` appear (``x'`` is
    ``new`` itself when the previous site ends right there, as in ``a b a b``). The count of
    ``(a, b)`` itself is dropped by the caller. ``list.index`` jumps between candidate sites at C
    speed. Returns the merged word, or ``None`` if the word does not contain the pair.
    """
    out: list[int] | None = None
    i, last = 0, len(word) - 1
    prev_end = -1  # index just past the previous merge site
    while True:
        try:
            j = word.index(a, i, last)  # a left token needs a right neighbour
        except ValueError:
            break
        if word[j + 1] != b:
            if out is not None:
                out.extend(word[i : j + 1])
            i = j + 1
            continue
        if out is None:
            out = word[:j]
        else:
            out.extend(word[i:j])
        if j > 0:
            if j != prev_end:  # (else the previous site already removed the pair (b, a))
                pair_counts[(word[j - 1], a)] -= n
            left = (out[-1], new_id)
            pair_counts[left] += n
            touched.add(left)
        if j + 2 <= last:
            pair_counts[(b, word[j + 2])] -= n
            # the new right pair, unless the next two tokens are another site (added there)
            if not (word[j + 2] == a and j + 3 <= last and word[j + 3] == b):
                right = (new_id, word[j + 2])
                pair_counts[right] += n
                touched.add(right)
        out.append(new_id)
        i = prev_end = j + 2
    if out is None:
        return None
    out.extend(word[i:])
    return out


def _check_vocab_size(vocab_size: int, specials: Sequence[str]) -> int:
    """Number of byte + merged tokens to learn; the specials take the last ids."""
    minimum = 256 + len(specials)
    if vocab_size < minimum:
        raise ScratchLLMError(
            f"vocab size {vocab_size} is too small for byte-level BPE: it needs at least 256 byte tokens "
            f"+ {len(specials)} special token(s) = {minimum}"
        )
    return vocab_size - len(specials)


def learn_merges_naive(word_counts: dict[bytes, int], n_tokens: int) -> list[bytes]:
    """The textbook trainer: recount every pair of every word after each merge. O(merges × corpus).

    Returns the vocabulary (token bytes in rank order), starting with the 256 single bytes.
    """
    vocab = [bytes([i]) for i in range(256)]
    index = {tok: i for i, tok in enumerate(vocab)}
    words = [(list(w), n) for w, n in word_counts.items()]
    while len(vocab) < n_tokens:
        counts: Counter = Counter()
        for word, n in words:
            for pair in zip(word, word[1:]):
                counts[pair] += n
        if not counts:
            break  # every word is a single token: nothing left to merge
        a, b = _pick_best(counts, vocab)
        new = vocab[a] + vocab[b]
        if new not in index:
            index[new] = len(vocab)
            vocab.append(new)
        words = [(_merge_word(word, a, b, index[new]), n) for word, n in words]
    return vocab


def learn_merges(
    word_counts: dict[bytes, int],
    n_tokens: int,
    *,
    progress: bool = False,
    on_merge: Callable[[bytes, bytes, int, int], None] | None = None,
) -> list[bytes]:
    """The incremental trainer: same result as :func:`learn_merges_naive`, touching only what changes.

    State: ``words`` (token ids per distinct word) with their counts, ``pair_counts`` (weighted by
    word counts), ``where`` (pair → indices of words that contain it; may hold stale entries,
    which merge to nothing) and a heap of ``(-count, left bytes, right bytes, a, b)``.

    ``on_merge(left, right, count, token_id)`` is called for every merge as it happens (``count``:
    how often the pair occurred; ``token_id``: the id of ``left + right``, an existing one when
    those bytes already were a token) — ``scratchllm explain bpe`` replays training with it.
    """
    from tqdm import tqdm

    vocab = [bytes([i]) for i in range(256)]
    index = {tok: i for i, tok in enumerate(vocab)}
    words = [list(w) for w in word_counts]
    freqs = list(word_counts.values())
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, word in enumerate(words):
        n = freqs[wi]
        for pair in zip(word, word[1:]):
            pair_counts[pair] += n
            where[pair].add(wi)
    heap = [(-c, vocab[a], vocab[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    bar = tqdm(total=max(0, n_tokens - len(vocab)), desc="BPE merges", unit="merge", disable=not progress)
    while len(vocab) < n_tokens and heap:
        neg, _, _, a, b = heapq.heappop(heap)
        count = pair_counts.get((a, b), 0)
        if count != -neg:  # a stale entry
            if 0 < count < -neg:  # the count went down since the push: queue it again
                heapq.heappush(heap, (-count, vocab[a], vocab[b], a, b))
            continue  # (count went up ⇒ a fresher entry is already in the heap)
        new = vocab[a] + vocab[b]
        new_id = index.get(new)
        if new_id is None:
            new_id = index[new] = len(vocab)
            vocab.append(new)
            bar.update(1)
        if on_merge is not None:
            on_merge(vocab[a], vocab[b], count, new_id)
        touched: set[tuple[int, int]] = set()
        for wi in where.pop((a, b)):
            merged = _merge_and_update(words[wi], a, b, new_id, freqs[wi], pair_counts, touched)
            if merged is not None:  # (None: a stale index entry, the pair left this word earlier)
                words[wi] = merged
                # Pairs without the new token were already in this word, hence already indexed.
                for pair in zip(merged, merged[1:]):
                    if new_id in pair:
                        where[pair].add(wi)
        del pair_counts[(a, b)]
        # Only pairs containing the new token can have grown; everything else only shrank
        # and is fixed up lazily when popped. Sorted: push order must not depend on set order.
        for pair in sorted(touched):
            c = pair_counts[pair]
            if c > 0:
                heapq.heappush(heap, (-c, vocab[pair[0]], vocab[pair[1]], pair[0], pair[1]))
    bar.close()
    return vocab


def train_bpe(
    texts: str | Iterable[str],
    vocab_size: int,
    *,
    pattern: str = "gpt2",
    special_tokens: Sequence[str] = (EOT,),
    workers: int | None = 1,
    progress: bool = False,
    name: str = "scratchllm-bpe",
) -> BPETokenizer:
    """Train a byte-level BPE tokenizer of ``vocab_size`` ids (special tokens included).

    ``texts`` is one string or an iterable of documents (each is its own pre-tokenisation
    boundary). ``workers`` processes count words (identical output for any value; ``None`` =
    automatic). ``progress`` shows a tqdm bar over merges on stderr. If the corpus runs out of
    pairs first, the vocabulary is smaller than asked (specials still take the last ids).
    """
    specials = list(dict.fromkeys(special_tokens))
    n_tokens = _check_vocab_size(vocab_size, specials)
    pat = resolve_pattern(pattern)
    counts = count_words([texts] if isinstance(texts, str) else texts, pat, specials, workers=workers)
    if not counts:
        raise ScratchLLMError("cannot train a BPE tokenizer on empty text")
    vocab = learn_merges(counts, n_tokens, progress=progress)
    return BPETokenizer.from_vocab(vocab, specials, pat, name=name)


def train_bpe_naive(
    text: str, vocab_size: int, *, pattern: str = "gpt2", special_tokens: Sequence[str] = (EOT,)
) -> BPETokenizer:
    """:func:`train_bpe` with the textbook recount-everything loop (for teaching and benchmarks)."""
    specials = list(dict.fromkeys(special_tokens))
    n_tokens = _check_vocab_size(vocab_size, specials)
    pat = resolve_pattern(pattern)
    counts = count_words([text], pat, specials)
    if not counts:
        raise ScratchLLMError("cannot train a BPE tokenizer on empty text")
    return BPETokenizer.from_vocab(learn_merges_naive(counts, n_tokens), specials, pat)


# ----------------------------------------------------------------------------- encoding
def bpe_encode_piece(
    piece: bytes,
    ranks: dict[bytes, int],
    max_rank: int | None = None,
    *,
    trace: list[list[bytes]] | None = None,
) -> list[bytes]:
    """Split one pre-token into BPE tokens: merge the lowest-rank adjacent pair until none is left.

    This is the reference algorithm (tiktoken's, in plain Python): ranks are looked up on the
    *concatenated bytes* of a pair, and among equal ranks the leftmost pair merges first.
    ``max_rank`` ignores merges at or above that rank (used to recover a merge list).
    ``trace``, when given, receives the parts before the first merge and after every merge
    (the playground's merge replay).
    """
    parts = [piece[i : i + 1] for i in range(len(piece))]
    if trace is not None:
        trace.append(list(parts))
    while len(parts) > 1:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (max_rank is None or r < max_rank) and (best_rank is None or r < best_rank):
                best_rank, best_i = r, i
        if best_rank is None:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        if trace is not None:
            trace.append(list(parts))
    return parts


class BPETokenizer(Tokenizer):
    """A byte-level BPE tokenizer: ``ranks`` (token bytes → id) + special tokens + a regex.

    ``encode`` runs on tiktoken (Rust) built from these ranks; ``encode_reference`` is the same
    algorithm in readable Python, and the tests check that both always agree.
    """

    kind = "bpe"

    def __init__(
        self,
        ranks: dict[bytes, int],
        special_tokens: dict[str, int],
        pattern: str = GPT2_PATTERN,
        *,
        name: str = "scratchllm-bpe",
    ) -> None:
        self.ranks = dict(ranks)
        self.special_tokens = dict(special_tokens)
        self.pattern = resolve_pattern(pattern)
        self.name = name
        self._decoder = {i: tok for tok, i in self.ranks.items()}
        self._decoder.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})
        if len(self._decoder) != len(self.ranks) + len(self.special_tokens):
            raise ScratchLLMError("BPE ranks and special tokens must have distinct ids")
        missing = [b for b in range(256) if bytes([b]) not in self.ranks]
        if missing:
            raise ScratchLLMError(
                f"byte-level BPE needs all 256 single bytes as tokens; missing {missing[:5]}"
            )
        self._vocab_size = max(self._decoder) + 1
        if len(self._decoder) != self._vocab_size or min(self._decoder) != 0:
            raise ScratchLLMError("BPE token ids must run from 0 to vocab_size - 1 without gaps")
        self._regex = regex.compile(self.pattern)
        self._special_re = _special_splitter(self.special_tokens)
        self._cache: dict[bytes, list[int]] = {}
        self._tiktoken = None

    @classmethod
    def from_vocab(
        cls, vocab: Sequence[bytes], specials: Sequence[str], pattern: str, *, name: str = "scratchllm-bpe"
    ) -> BPETokenizer:
        """Ranks are positions in ``vocab``; specials take the next ids, in order."""
        ranks = {tok: i for i, tok in enumerate(vocab)}
        return cls(ranks, {s: len(vocab) + k for k, s in enumerate(specials)}, pattern, name=name)

    train = staticmethod(train_bpe)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    # ---------------------------------------------------------------- the reference encoder
    def pre_tokens(self, text: str, allowed_special: AllowedSpecial = ()) -> Iterator[tuple[str, bool]]:
        """``text`` cut into what BPE works on: ``(special token, True)`` and ``(pre-token, False)``
        pieces, in order (each pre-token is merged on its own; merges never cross them). Only the
        ``allowed_special`` strings count as special tokens; any other is ordinary text."""
        text = clean_text(text)
        allowed = self.allowed_specials(allowed_special)
        splitter = _special_splitter(allowed) if allowed else None
        segments = splitter.split(text) if splitter else [text]
        for k, segment in enumerate(segments):
            if k % 2 == 1:  # the splitter's capture group puts specials at odd positions
                yield segment, True
                continue
            for word in self._regex.findall(segment):
                yield word, False

    def _encode_pieces(self, text: str, allowed_special: AllowedSpecial = ()) -> Iterator[list[int]]:
        """The ids of each allowed special token and each pre-token of ``text``, one list per piece."""
        for word, special in self.pre_tokens(text, allowed_special):
            if special:
                yield [self.special_tokens[word]]
            else:
                piece = word.encode("utf-8")
                cached = self._cache.get(piece)
                if cached is None:
                    cached = [self.ranks[p] for p in bpe_encode_piece(piece, self.ranks)]
                    if len(self._cache) < 100_000:
                        self._cache[piece] = cached
                yield list(cached)

    def encode_reference(self, text: str, *, allowed_special: AllowedSpecial = ()) -> list[int]:
        """Pure-Python encoder: split out allowed specials, pre-tokenise, BPE each piece (cached)."""
        return [i for ids in self._encode_pieces(text, allowed_special) for i in ids]

    def encode_words(self, text: str, *, allowed_special: AllowedSpecial = ()) -> list[list[int]]:
        """One word per pre-token (``" the"``, ``"'s"``, ``","``) and per allowed special token."""
        return list(self._encode_pieces(text, allowed_special))

    @property
    def space_joins_next_word(self) -> bool:
        # Ask the pattern itself: GPT-2's and GPT-4's keep " a" in one piece; a custom one may not.
        return len(self._regex.findall(" a")) == 1

    def decode_bytes_reference(self, ids: Sequence[int]) -> bytes:
        self.check_ids(ids)
        return b"".join(self._decoder[int(i)] for i in ids)

    # ---------------------------------------------------------------- the fast path (tiktoken)
    @property
    def tiktoken_encoding(self):
        """A ``tiktoken.Encoding`` with exactly these ranks, pattern and specials (built once)."""
        if self._tiktoken is None:
            import tiktoken

            self._tiktoken = tiktoken.Encoding(
                self.name,
                pat_str=self.pattern,
                mergeable_ranks=self.ranks,
                special_tokens=self.special_tokens,
            )
        return self._tiktoken

    def encode_ordinary(self, text: str) -> list[int]:
        return self.tiktoken_encoding.encode_ordinary(text)

    def encode(self, text: str, *, allowed_special: AllowedSpecial = ()) -> list[int]:
        allowed = self.allowed_specials(allowed_special)
        if not allowed:
            return self.tiktoken_encoding.encode_ordinary(text)
        # disallowed_special=(): a special that is not allowed is ordinary text, never an error
        return self.tiktoken_encoding.encode(text, allowed_special=set(allowed), disallowed_special=())

    def encode_batch(
        self, texts: list[str], num_threads: int = 8, *, allowed_special: AllowedSpecial = ()
    ) -> list[list[int]]:
        """Encode many texts; long ones in parallel on tiktoken's thread pool.

        Short texts are encoded in a plain loop: a thread-pool task costs more than encoding a
        sentence.
        """
        enc = self.tiktoken_encoding
        if num_threads <= 1 or sum(map(len, texts)) < 4096 * len(texts):
            return [self.encode(t, allowed_special=allowed_special) for t in texts]
        allowed = set(self.allowed_specials(allowed_special))
        return enc.encode_batch(
            texts, num_threads=num_threads, allowed_special=allowed, disallowed_special=()
        )

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Token ids → the raw bytes (which may end in the middle of a UTF-8 character)."""
        self.check_ids(ids)
        return self.tiktoken_encoding.decode_bytes([int(i) for i in ids])

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        self.check_ids([token_id])
        return self._decoder[int(token_id)]

    # ---------------------------------------------------------------- saving
    def to_dict(self) -> dict[str, Any]:
        ordered = sorted(self.ranks.items(), key=lambda kv: kv[1])
        return {
            "name": self.name,
            "pattern": self.pattern,
            "special_tokens": dict(sorted(self.special_tokens.items(), key=lambda kv: kv[1])),
            # token bytes (base64, as in tiktoken's files) → rank, in rank order
            "ranks": {base64.b64encode(tok).decode("ascii"): r for tok, r in ordered},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BPETokenizer:
        ranks = {base64.b64decode(k, validate=True): int(v) for k, v in data["ranks"].items()}
        specials = {str(k): int(v) for k, v in data["special_tokens"].items()}
        return cls(ranks, specials, data["pattern"], name=data.get("name", "scratchllm-bpe"))
