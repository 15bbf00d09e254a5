"""Turn text into token shards: ``train.bin``, ``val.bin`` and ``meta.json``.

Training reads tokens, not text, and it reads them many times, so we tokenise the corpus once and
store the ids as a flat binary array that training memory-maps (see :mod:`scratchllm.data.shards`).
This is nanoGPT's ``prepare.py`` idea, grown to survive real corpora::

    OUT/
      train.bin    token ids, little-endian uint16 (vocab < 65,536) or uint32, no header
      val.bin      the same for the validation split
      tokenizer.json   the tokenizer that made them (so a model can never be paired with the wrong one)
      meta.json    dtype, token counts, vocab size, tokenizer hash, sources, split, format version

How it works, and why:

* **Documents.** Each input file is one document (a directory contributes its text files,
  recursively, in sorted order; no ``--input`` means the embedded default corpus, one document per
  topic). Documents are joined with the tokenizer's ``<|endoftext|>`` id, so the model learns where
  one text ends and an unrelated one begins. That id is inserted by this code, between documents,
  and nowhere else: the *text* ``"<|endoftext|>"`` (or any special token's text) inside a document
  is ordinary text, encoded as its characters (``allow_special=True`` restores the old reading),
  and ``meta.json`` counts such literal occurrences (``literal_specials``), so a corpus that
  spells separators out can be spotted. Files are read like Python's ``open()`` reads text:
  UTF-8 (a leading byte-order mark is dropped) with universal newlines (``\\r\\n`` and ``\\r``
  become ``\\n``), exactly what ``Path.read_text()`` gives a tokenizer trainer.
* **Streaming.** Memory must not grow with the corpus, so files are read in chunks of about
  :data:`CHUNK_BYTES`, each chunk is encoded on its own and its ids are appended to the output file
  at once. Only a handful of chunks are ever in memory.
* **Where a chunk may end.** Encoding two halves separately equals encoding the whole only if no
  token would have spanned the cut. We therefore cut only at *safe* places: right after a newline
  that sits between two printable ASCII characters (``"...end.\\nNext..."``), or, on very long
  lines, just before a single space that follows a printable ASCII character and precedes an ASCII
  letter (``"word| next"``). GPT-2's and GPT-4's pre-tokenisation regexes can never join a token
  across either place, a character or word tokenizer cannot either, so the shards hold exactly
  ``tokenizer.encode(whole_text)`` (tests prove it with both regexes). Only when a window of 4 chunks
  contains no safe place at all (binary-like text, one enormous line of CJK) do we cut at a character
  boundary; that can change a token or two at the cut, and ``meta.json`` counts such cuts
  (``unsafe_cuts``, normally 0).
* **Workers.** Large inputs are encoded by a ``multiprocessing`` pool. Results are consumed in
  order, with at most two chunks per worker in flight: ``Pool.imap`` has no such back-pressure (its
  feeder thread keeps the workers busy and finished results queue up in memory whenever writing
  falls behind), so memory would no longer be bounded by the chunk size.
* **Validation split.** Like nanoGPT, the last ``val_fraction`` of the text goes to ``val.bin``:
  the cut is the first safe place at or after ``(1 - val_fraction)`` of all input bytes (documents
  in order). So ``train.bin + val.bin`` is precisely the tokenised corpus, a single file such as
  tinyshakespeare still gets a validation set, and the split is the same every time.
* **Atomic output.** Everything is written under temporary names in ``OUT`` and renamed at the end;
  an error or Ctrl-C leaves existing files untouched. An existing ``meta.json`` is removed just
  before the new files are renamed in and written again last, so a directory with ``meta.json``
  is always complete.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from scratchllm.data.readers import InputFile, Inputs, open_binary
from scratchllm.errors import ScratchLLMError

if TYPE_CHECKING:  # pragma: no cover
    from scratchllm.data.clean import CleanConfig
    from scratchllm.tokenizer.base import Tokenizer

FORMAT_VERSION = 1
#: Target size of one chunk handed to the tokenizer (bytes of UTF-8 text).
CHUNK_BYTES = 1 << 20
#: With ``workers=None``, inputs smaller than this are encoded in-process (a pool costs a second).
POOL_MIN_BYTES = 8 << 20
#: Splits with fewer tokens than this are refused: no (input, target) pair can be made from them.
MIN_SPLIT_TOKENS = 2

_BOM = b"\xef\xbb\xbf"
# Safe cut places (see the module docstring); the cut is at the end of the match.
_NEWLINE_CUT = re.compile(rb"[\x21-\x7e]\r?\n(?=[\x21-\x7e])")
_SPACE_CUT = re.compile(rb"[\x21-\x7e](?= [A-Za-z])")


# ----------------------------------------------------------------------------- 1. the sources


@dataclass(frozen=True)
class _Doc:
    """One document to tokenise: its name for messages, its size in bytes, and how to read it."""

    name: str
    size: int
    data: bytes | None = None  # in memory (a record, a default-corpus topic) ...
    file: InputFile | None = None  # ... or a plain-text file, streamed

    def open(self) -> BinaryIO:
        return open_binary(self.file) if self.file is not None else io.BytesIO(self.data or b"")


class _Corpus:
    """The documents of a run in order: the default corpus, or what :class:`Inputs` reads.

    Plain-text files are streamed from disk in chunks; records (JSONL lines, Parquet rows) are
    small and come as bytes, one at a time. ``total_bytes`` is known before anything is written
    (the scan counted it), which places the validation split.
    """

    def __init__(self, inputs: Inputs | None) -> None:
        self.inputs = inputs
        if inputs is None:
            from scratchllm.data.corpus import DEFAULT_CORPUS_NAME, default_corpus_documents

            self._topics = [d.encode("utf-8") for d in default_corpus_documents()]
            self.total_bytes = sum(map(len, self._topics))
            self.documents = len(self._topics)
            self.entries: list[dict[str, Any]] = [
                {"path": DEFAULT_CORPUS_NAME, "bytes": self.total_bytes, "documents": self.documents}
            ]
        else:
            self.total_bytes = inputs.text_bytes
            self.documents = inputs.documents_count
            self.entries = inputs.summary()["files"]

    def __iter__(self) -> Iterator[_Doc]:
        if self.inputs is None:
            from scratchllm.data.corpus import DEFAULT_CORPUS_NAME

            for i, data in enumerate(self._topics):
                yield _Doc(f"{DEFAULT_CORPUS_NAME} document {i}", len(data), data=data)
            return
        assert self.inputs.stats is not None
        for file in self.inputs.readable_files():
            if file.format == "text":
                yield _Doc(file.name, self.inputs.stats[file.path].text_bytes, file=file)
                continue
            for doc in self.inputs.file_documents(file):
                data = doc.text.encode("utf-8")
                yield _Doc(doc.where, len(data), data=data)


# ----------------------------------------------------------------------------- 2. cutting chunks


def _last_cut(buf: bytearray, limit: int) -> int:
    """The last safe cut in ``buf[1:limit+1]``, or 0 when there is none (newlines preferred)."""
    for pattern in (_NEWLINE_CUT, _SPACE_CUT):
        # Look in the last 64 KiB first: with ordinary text the answer is there, and scanning
        # a whole chunk match by match would cost a Python loop per line.
        for lo in (max(0, limit - (1 << 16)), 0):
            cut = 0
            for m in pattern.finditer(buf, lo, limit + 1):
                cut = m.end()
            if cut:
                return cut
            if lo == 0:
                break
    return 0


def _first_cut(buf: bytearray, start: int, limit: int) -> int:
    """The first safe cut in ``buf[start:limit+1]`` (with ``start >= 1``), or 0 when there is none."""
    best = 0
    for pattern in (_NEWLINE_CUT, _SPACE_CUT):
        pos = max(0, start - 3)
        while (m := pattern.search(buf, pos, limit + 1)) is not None:
            if m.end() >= start:
                best = m.end() if not best else min(best, m.end())
                break
            pos = m.start() + 1
    return best


def _any_cut(buf: bytearray, near: int, *, forward: bool) -> int:
    """A cut at a character boundary near ``near`` (never inside a UTF-8 character or a CR LF pair)."""

    def ok(i: int) -> bool:
        return (buf[i] & 0xC0) != 0x80 and buf[i - 1] != 0x0D

    candidates = range(near, len(buf)) if forward else range(near, 0, -1)
    for i in candidates:
        if i >= 1 and ok(i):
            return i
    return len(buf)


@dataclass
class _Cuts:
    """Counts cuts made at places that are not provably safe (reported in meta.json)."""

    unsafe: int = 0


def _document_pieces(
    f: BinaryIO, *, chunk_bytes: int, split_at: int | None, cuts: _Cuts
) -> Iterator[tuple[int, bytes, bool]]:
    """Yield ``(byte offset, bytes, after_split)`` pieces of one document, cut at safe places.

    ``split_at`` is the byte offset inside this document where the validation part should start
    (the cut lands on the first safe place at or after it), or None; ``after_split`` tells on
    which side of that cut a piece lies. Pieces are about ``chunk_bytes`` long (at most about 5x that).
    """
    window = 4 * chunk_bytes
    buf = bytearray()
    start = 0  # file offset of buf[0]
    eof = False
    first_read = True
    after_split = False
    while True:
        while not eof and len(buf) <= window:
            block = f.read(chunk_bytes)
            if not block:
                eof = True
            elif first_read and block.startswith(_BOM):
                block, start = block[len(_BOM) :], len(_BOM)
            first_read = False
            buf += block
        if not buf:
            return
        p = None if split_at is None or after_split else split_at - start  # split position in buf
        if p is not None and p <= 0:
            after_split, p = True, None

        if p is not None and p < len(buf):
            # The validation split lies in this buffer. First ordinary train pieces that end
            # before it, then a cut at the first safe place at or after it.
            cut = (
                (_last_cut(buf, chunk_bytes) or _first_cut(buf, chunk_bytes + 1, p)) if p > chunk_bytes else 0
            )
            if cut:
                yield start, bytes(buf[:cut]), False
            else:
                cut = _first_cut(buf, max(p, 1), len(buf) - 1)
                if not cut and eof:
                    cut = len(buf)  # the rest of the document stays in train; val starts with the next one
                elif not cut:
                    cuts.unsafe += 1
                    cut = _any_cut(buf, p, forward=True)
                yield start, bytes(buf[:cut]), False
                after_split = cut < len(buf) or not eof
            del buf[:cut]
            start += cut
            continue

        if eof and len(buf) <= chunk_bytes:
            yield start, bytes(buf), after_split
            return
        cut = _last_cut(buf, chunk_bytes) or _first_cut(buf, chunk_bytes + 1, window)
        if not cut and eof and len(buf) <= window:
            cut = len(buf)  # the end of the document is always a safe place
        elif not cut:
            cuts.unsafe += 1
            cut = _any_cut(buf, chunk_bytes, forward=False)
        yield start, bytes(buf[:cut]), after_split
        del buf[:cut]
        start += cut


class _Piece(NamedTuple):
    source: str  # name for error messages
    offset: int  # byte offset of data in the source
    data: bytes | None  # None: the <|endoftext|> between two documents
    is_val: bool


def _pieces(docs: Iterable[_Doc], split_byte: int, chunk_bytes: int, cuts: _Cuts) -> Iterator[_Piece]:
    """All documents as one ordered stream of pieces, each marked train or val.

    The ``<|endoftext|>`` between two documents goes with what precedes it; when the split point
    falls in a document that has no safe cut after it, that document stays in train and
    validation starts with the next one.
    """
    doc_start = 0
    in_val = False
    for k, doc in enumerate(docs):
        if k:
            yield _Piece(doc.name, 0, None, in_val)
            in_val = in_val or doc_start >= split_byte
        split_at = None if in_val or split_byte - doc_start >= doc.size else split_byte - doc_start
        if doc.data is not None and split_at is None and len(doc.data) <= chunk_bytes:
            yield _Piece(doc.name, 0, doc.data, in_val)  # a small record: one piece as it is
        else:
            with doc.open() as f:
                for offset, data, after in _document_pieces(
                    f, chunk_bytes=chunk_bytes, split_at=split_at, cuts=cuts
                ):
                    in_val = in_val or after
                    yield _Piece(doc.name, offset, data, in_val)
        doc_start += doc.size


def _batches(pieces: Iterable[_Piece], chunk_bytes: int) -> Iterator[list[_Piece]]:
    """Group consecutive pieces of the same split into tasks of about ``chunk_bytes`` of text.

    A large file's pieces are each a task already; a corpus of many small records would otherwise
    cost one task (and one round trip to a worker) per record and per ``<|endoftext|>``.
    """
    batch: list[_Piece] = []
    size = 0
    for piece in pieces:
        if batch and (piece.is_val != batch[0].is_val or size >= chunk_bytes):
            yield batch
            batch, size = [], 0
        batch.append(piece)
        size += len(piece.data) if piece.data is not None else 0
    if batch:
        yield batch


# ----------------------------------------------------------------------------- 3. encoding pieces

_worker_tokenizer: Tokenizer | None = None
_worker_dtype: str = "uint16"
_worker_allowed: str | tuple[()] = ()


def _set_tokenizer(tokenizer: Tokenizer | None, dtype: str, allow_special: bool = False) -> None:
    global _worker_tokenizer, _worker_dtype, _worker_allowed
    _worker_tokenizer, _worker_dtype = tokenizer, dtype
    _worker_allowed = "all" if allow_special else ()


def _init_worker(tokenizer_dict: dict[str, Any], dtype: str, allow_special: bool = False) -> None:
    """Pool initializer: rebuild the tokenizer from its JSON dict (no pickling of live objects)."""
    import signal

    from scratchllm.tokenizer import tokenizer_classes

    # Ctrl-C is the parent's to handle (it stops the pool); workers would only print tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    _set_tokenizer(
        tokenizer_classes()[tokenizer_dict["kind"]].from_dict(tokenizer_dict), dtype, allow_special
    )


def _encode_piece(piece: _Piece) -> tuple[Any, dict[str, int]]:
    """Decode and encode one piece: its token ids as an int64 array, and the special-token strings
    its text spells out (``{string: count}``)."""
    import numpy as np

    tok = _worker_tokenizer
    assert tok is not None
    if piece.data is None:  # the boundary between two documents: the one place the id is inserted
        return np.array([tok.eot_id], dtype=np.int64), {}
    data = piece.data
    if b"\x00" in data:
        raise ScratchLLMError(
            f"input {piece.source} is binary, not text: "
            f"NUL byte at byte offset {piece.offset + data.index(0)}"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ScratchLLMError(
            f"input {piece.source} is not valid UTF-8: byte 0x{data[err.start]:02x} at byte offset "
            f"{piece.offset + err.start}; convert it first (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    literal = tok.count_specials(text)
    try:
        ids = np.asarray(tok.encode(text, allowed_special=_worker_allowed), dtype=np.int64)
    except ScratchLLMError as err:
        raise ScratchLLMError(
            f"cannot encode {piece.source} (bytes {piece.offset}-{piece.offset + len(data)}): {err}; "
            "the tokenizer's vocabulary does not cover this data - train it on this corpus"
        ) from None
    if ids.size and (ids.min() < 0 or ids.max() >= tok.vocab_size):
        raise ScratchLLMError(
            f"the tokenizer produced id {int(ids.max())} outside its vocabulary of {tok.vocab_size} "
            f"while encoding {piece.source}"
        )
    return ids, literal


def _encode_batch(batch: list[_Piece]) -> tuple[bool, bytes, int, dict[str, int]]:
    """Encode a batch of pieces; returns (is_val, token ids as bytes, input bytes consumed,
    literal special-token strings seen)."""
    import numpy as np

    ids = []
    literal: dict[str, int] = {}
    for piece in batch:
        piece_ids, seen = _encode_piece(piece)
        ids.append(piece_ids)
        for name, n in seen.items():
            literal[name] = literal.get(name, 0) + n
    nbytes = sum(len(p.data) for p in batch if p.data is not None)
    out = ids[0] if len(ids) == 1 else np.concatenate(ids)
    return batch[0].is_val, out.astype(_worker_dtype).tobytes(), nbytes, literal


def _encode_in_order(
    batches: Iterator[list[_Piece]], pool: Any, max_pending: int
) -> Iterator[tuple[bool, bytes, int, dict[str, int]]]:
    """Like ``pool.imap(_encode_batch, batches)`` but never more than ``max_pending`` batches ahead."""
    pending: deque[Any] = deque()
    for batch in batches:
        pending.append(pool.apply_async(_encode_batch, (batch,)) if pool is not None else batch)
        while len(pending) > max_pending:
            yield _result(pending.popleft())
    while pending:
        yield _result(pending.popleft())


def _result(item: Any) -> tuple[bool, bytes, int, dict[str, int]]:
    return _encode_batch(item) if isinstance(item, list) else item.get()


# ----------------------------------------------------------------------------- 4. writing the shards


def token_dtype(vocab_size: int) -> str:
    """The smallest unsigned dtype that holds every id: uint16 below 65,536 tokens, else uint32."""
    return "uint16" if vocab_size < 1 << 16 else "uint32"


class _TooSmall(Exception):
    """Raised inside the write block so that the temp files of a too-small split are discarded."""


def _write_shards(
    tok: Tokenizer,
    corpus: _Corpus,
    out: Path,
    *,
    dtype: str,
    split_byte: int,
    chunk_bytes: int,
    workers: int,
    progress: bool,
    allow_special: bool = False,
) -> tuple[dict[bool, int], int, dict[str, int]]:
    """Stream every piece through the tokenizer into temp files, renamed into place on success.

    Returns the token counts ``{is_val: n}``, the number of unsafe cuts and the literal
    special-token strings seen in the text (``{string: count}``). When a split gets
    fewer than :data:`MIN_SPLIT_TOKENS` tokens nothing is renamed (the caller reports it); on any
    error the temp files are removed and ``out`` is as it was.
    """
    from tqdm.auto import tqdm

    from scratchllm.io import atomic_open

    cuts = _Cuts()
    counts = {False: 0, True: 0}
    literal: dict[str, int] = {}
    itemsize = 2 if dtype == "uint16" else 4
    bar = tqdm(
        total=corpus.total_bytes,
        unit="B",
        unit_scale=True,
        desc="prepare",
        disable=None if progress else True,
    )
    pool = None
    try:
        if workers >= 2:
            import multiprocessing

            # spawn: safe whatever threads the parent runs (torch, tqdm); workers rebuild the tokenizer.
            tok_dict = {"kind": tok.kind, **tok.to_dict()}
            pool = multiprocessing.get_context("spawn").Pool(
                workers, _init_worker, (tok_dict, dtype, allow_special)
            )
        else:
            _set_tokenizer(tok, dtype, allow_special)
        with atomic_open(out / "train.bin") as train_f, atomic_open(out / "val.bin") as val_f:
            batches = _batches(_pieces(corpus, split_byte, chunk_bytes, cuts), chunk_bytes)
            for is_val, ids, nbytes, seen in _encode_in_order(batches, pool, 2 * workers if pool else 0):
                (val_f if is_val else train_f).write(ids)
                counts[is_val] += len(ids) // itemsize
                for name, n in seen.items():
                    literal[name] = literal.get(name, 0) + n
                bar.update(nbytes)
            if min(counts.values()) < MIN_SPLIT_TOKENS:
                raise _TooSmall
            # The new files are about to replace the old ones: drop the old meta.json first, so that
            # a crash during the renames leaves a directory that says it is incomplete.
            (out / "meta.json").unlink(missing_ok=True)
    except _TooSmall:
        pass
    finally:
        bar.close()
        _set_tokenizer(None, dtype)
        if pool is not None:
            pool.terminate()
            pool.join()
    return counts, cuts.unsafe, dict(sorted(literal.items()))


def _remove_stale_temp_files(out: Path) -> None:
    """Delete temp files that a killed earlier run (SIGKILL, power loss) left behind in ``out``."""
    from scratchllm.io import TMP_PREFIX

    for name in ("train.bin", "val.bin", "tokenizer.json", "meta.json"):
        for stale in out.glob(f"{TMP_PREFIX}{name}.*"):
            with contextlib.suppress(OSError):
                stale.unlink()


# ----------------------------------------------------------------------------- 5. prepare()


def prepare(
    tokenizer: Tokenizer | str | os.PathLike,
    inputs: Sequence[str | os.PathLike] | None,
    out_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    force: bool = False,
    workers: int | None = None,
    progress: bool = True,
    chunk_bytes: int = CHUNK_BYTES,
    text_field: str = "text",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    on_error: str = "fail",
    clean: CleanConfig | None = None,
    allow_special: bool = False,
) -> dict[str, Any]:
    """Tokenise ``inputs`` (files/directories; None or empty = the default corpus) into ``out_dir``.

    ``text_field``, ``include``, ``exclude`` and ``on_error`` say how inputs are found and read
    (:mod:`scratchllm.data.readers`). ``clean``: run :func:`scratchllm.data.clean.clean` first
    (normalise, filter, de-duplicate; its report is kept as ``clean-report.json``) and tokenise what
    it keeps, so the split is made after de-duplication. Returns the ``meta.json`` contents plus
    ``out_dir`` and ``seconds``. ``workers``: None picks the CPU count for inputs over
    :data:`POOL_MIN_BYTES` (in-process otherwise), 0 or 1 means in-process, N >= 2 a pool of N.
    Raises :class:`ScratchLLMError` for anything the user can fix; nothing in ``out_dir`` is
    replaced unless the whole run succeeds (and ``force`` is set when ``out_dir`` already holds files).

    Special-token strings written in the text are ordinary text; ``allow_special=True`` reads them
    as the special tokens instead. Either way ``meta["literal_specials"]`` counts them.
    """
    from scratchllm.io import ensure_empty_dir
    from scratchllm.tokenizer import Tokenizer, load_tokenizer

    t0 = time.perf_counter()
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    out = Path(out_dir)
    if not 0.0 < val_fraction < 1.0:
        raise ScratchLLMError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if workers is not None and workers < 0:
        raise ScratchLLMError(f"--workers must be >= 0, got {workers}")
    if chunk_bytes < 16:
        raise ScratchLLMError(f"chunk_bytes must be at least 16, got {chunk_bytes}")
    reading = {"text_field": text_field, "include": include, "exclude": exclude, "on_error": on_error}
    if clean is None:
        # Check every input before touching the output directory.
        source = None if not inputs else Inputs(inputs, ignore_dirs=[out], **reading)
        if source is not None:
            source.scan(progress=progress)
        return _prepare(
            tok,
            source,
            out,
            t0=t0,
            val_fraction=val_fraction,
            force=force,
            workers=workers,
            progress=progress,
            chunk_bytes=chunk_bytes,
            allow_special=allow_special,
        )

    from scratchllm.data.clean import clean as run_clean
    from scratchllm.io import TMP_PREFIX, atomic_write_bytes

    ensure_empty_dir(out, force=force, create=False)  # fail fast, before a long clean
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{TMP_PREFIX}clean-{os.getpid()}"
    try:
        report = run_clean(
            inputs, tmp, clean, workers=workers, progress=progress, ignore_dirs=[out], **reading
        )
        cleaned = Inputs([tmp])
        cleaned.scan()
        meta = _prepare(
            tok,
            cleaned,
            out,
            t0=t0,
            val_fraction=val_fraction,
            force=True,
            workers=workers,
            progress=progress,
            chunk_bytes=chunk_bytes,
            allow_special=allow_special,
            extra={"clean": _clean_summary(report), "sources": report["inputs"]},
        )
        atomic_write_bytes(out / "clean-report.json", (tmp / "report.json").read_bytes())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _clean_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What meta.json says about the clean stage (the whole report is clean-report.json)."""
    keys = ("documents_in", "bytes_in", "documents_kept", "bytes_kept", "removed_by_rule", "input_errors")
    return {"report": "clean-report.json", **{k: report[k] for k in keys if k in report}}


def _prepare(
    tok: Tokenizer,
    source: Inputs | None,
    out: Path,
    *,
    t0: float,
    val_fraction: float,
    force: bool,
    workers: int | None,
    progress: bool,
    chunk_bytes: int,
    allow_special: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`prepare` once the inputs are validated: write the shards and meta.json."""
    from scratchllm import __version__
    from scratchllm.data.shards import tokenizer_fingerprint
    from scratchllm.io import atomic_write_json, ensure_empty_dir, sha256_file
    from scratchllm.tokenizer import tokenizer_classes

    corpus = _Corpus(source)
    total_bytes = corpus.total_bytes
    if corpus.documents > 1:
        tok.eot_id  # noqa: B018 - raises a clear error when the tokenizer has no <|endoftext|>
    if corpus.documents == 0:
        raise ScratchLLMError("no documents to prepare: every input record was skipped (see --on-error)")
    dtype = token_dtype(tok.vocab_size)
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if total_bytes >= POOL_MIN_BYTES else 1
    if type(tok) is not tokenizer_classes().get(tok.kind):
        workers = 1  # a custom tokenizer class cannot be rebuilt from JSON in a worker process
    split_byte = round(total_bytes * (1.0 - val_fraction))

    created = not out.exists()
    ensure_empty_dir(out, force=force)
    try:
        counts, unsafe_cuts, literal = _write_shards(
            tok,
            corpus,
            out,
            dtype=dtype,
            split_byte=split_byte,
            chunk_bytes=chunk_bytes,
            workers=workers,
            progress=progress,
            allow_special=allow_special,
        )
        for name, n in (("training", counts[False]), ("validation", counts[True])):
            if n < MIN_SPLIT_TOKENS:
                raise ScratchLLMError(
                    f"the {name} split got only {n} tokens (--val-fraction {val_fraction} of "
                    f"{total_bytes} bytes, cut at the first line break after that point); "
                    "give more text or change --val-fraction"
                )
    except BaseException:
        if created:  # a failed run leaves no empty directory behind
            with contextlib.suppress(OSError):
                out.rmdir()
        raise

    tok.save(out / "tokenizer.json")
    summary = source.summary() if source is not None else {}
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "dtype": dtype,
        "train_tokens": counts[False],
        "val_tokens": counts[True],
        "vocab_size": tok.vocab_size,
        "eot_id": tok.special_tokens.get("<|endoftext|>"),
        "tokenizer_kind": tok.kind,
        "tokenizer_sha256": tokenizer_fingerprint(tok),
        "tokenizer_file": "tokenizer.json",
        "tokenizer_file_sha256": sha256_file(out / "tokenizer.json"),
        "val_fraction": val_fraction,
        "split_byte": split_byte,
        "documents": corpus.documents,
        "total_bytes": total_bytes,
        "sources": corpus.entries,
        "skipped": summary.get("skipped_files", []),
        "input_errors": summary.get("input_errors", {"count": 0}),
        "chunk_bytes": chunk_bytes,
        "unsafe_cuts": unsafe_cuts,
        # special-token strings spelled out in the text, and how they were read
        "literal_specials": {
            "count": sum(literal.values()),
            "by_token": literal,
            "read_as": "special tokens" if allow_special else "ordinary text",
        },
        "text_decoding": "utf-8, BOM dropped, universal newlines",
        "created_by": f"scratchllm {__version__}",
        **(extra or {}),
    }
    if source is not None:
        meta["text_field"] = source.text_field
        meta["skipped_count"] = summary["skipped_files_count"]
    atomic_write_json(out / "meta.json", meta)
    _remove_stale_temp_files(out)
    return {**meta, "out_dir": str(out), "seconds": round(time.perf_counter() - t0, 3)}
