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
  one text ends and an unrelated one begins. Files are read like Python's ``open()`` reads text:
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
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from scratchllm.errors import ScratchLLMError

if TYPE_CHECKING:  # pragma: no cover
    from scratchllm.tokenizer.base import Tokenizer

FORMAT_VERSION = 1
#: Target size of one chunk handed to the tokenizer (bytes of UTF-8 text).
CHUNK_BYTES = 1 << 20
#: With ``workers=None``, inputs smaller than this are encoded in-process (a pool costs a second).
POOL_MIN_BYTES = 8 << 20
#: How much of a file is sniffed for binary content before anything is written.
SNIFF_BYTES = 8192
#: Splits with fewer tokens than this are refused: no (input, target) pair can be made from them.
MIN_SPLIT_TOKENS = 2

_BOM = b"\xef\xbb\xbf"
# Safe cut places (see the module docstring); the cut is at the end of the match.
_NEWLINE_CUT = re.compile(rb"[\x21-\x7e]\r?\n(?=[\x21-\x7e])")
_SPACE_CUT = re.compile(rb"[\x21-\x7e](?= [A-Za-z])")


# ----------------------------------------------------------------------------- 1. the sources


@dataclass(frozen=True)
class _Source:
    """One document: a file on disk, or an in-memory text (the default corpus)."""

    name: str
    size: int
    path: Path | None = None
    data: bytes | None = None

    def open(self) -> BinaryIO:
        return open(self.path, "rb") if self.path is not None else io.BytesIO(self.data or b"")


def _sniff(path: Path) -> str | None:
    """Why ``path`` does not look like UTF-8 text (from its first bytes), or None when it does."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if b"\x00" in head:
        return f"NUL byte at byte offset {head.index(0)}"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        # A multi-byte character cut by the sniff window is fine; anything else is not UTF-8.
        truncated = err.reason == "unexpected end of data" and len(head) == SNIFF_BYTES
        if not truncated:
            return f"invalid UTF-8 byte 0x{head[err.start]:02x} at byte offset {err.start}"
    return None


def _walk_sorted(root: Path) -> list[Path]:
    """Regular files under ``root``, sorted by their path below it; hidden files and dirs skipped."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return sorted((f for f in files if f.is_file()), key=lambda f: f.relative_to(root).parts)


def _collect_sources(
    inputs: Sequence[str | os.PathLike] | None, out_dir: Path
) -> tuple[list[_Source], list[dict[str, Any]], list[dict[str, str]]]:
    """Expand files and directories into documents; returns (sources, meta entries, skipped)."""
    if not inputs:
        from scratchllm.data.corpus import DEFAULT_CORPUS_NAME, default_corpus_documents

        docs = [d.encode("utf-8") for d in default_corpus_documents()]
        sources = [_Source(f"{DEFAULT_CORPUS_NAME} document {i}", len(d), data=d) for i, d in enumerate(docs)]
        entry = {"path": DEFAULT_CORPUS_NAME, "bytes": sum(s.size for s in sources), "documents": len(docs)}
        return sources, [entry], []

    out_resolved = out_dir.resolve()
    sources: list[_Source] = []
    entries: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    seen: set[Path] = set()

    def add(path: Path, size: int) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            sources.append(_Source(str(path), size, path=path))
            entries.append({"path": str(path), "bytes": size})

    for raw in inputs:
        path = Path(raw)
        try:
            if path.is_file():
                size = path.stat().st_size
                if size == 0:
                    raise ScratchLLMError(f"input file {path} is empty; give a file with text in it")
                why = _sniff(path)
                if why:
                    raise ScratchLLMError(f"input {path} is not UTF-8 text ({why}); give text files only")
                add(path, size)
            elif path.is_dir():
                found = 0
                for file in _walk_sorted(path):
                    if file.resolve().parent == out_resolved:
                        continue  # never read our own output back in
                    size = file.stat().st_size
                    why = "empty" if size == 0 else _sniff(file)
                    if why:
                        skipped.append({"path": str(file), "reason": why})
                        continue
                    add(file, size)
                    found += 1
                if not found:
                    raise ScratchLLMError(f"input directory {path} contains no non-empty UTF-8 text files")
            elif path.exists():
                raise ScratchLLMError(f"input {path} is neither a file nor a directory")
            else:
                raise ScratchLLMError(f"input not found: {path}")
        except OSError as err:  # permission denied, a file vanishing mid-walk, ...
            raise ScratchLLMError(
                f"cannot read input {err.filename or path}: {err.strerror or err}"
            ) from None
    return sources, entries, skipped


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


def _pieces(sources: list[_Source], split_byte: int, chunk_bytes: int, cuts: _Cuts) -> Iterator[_Piece]:
    """All documents as one ordered stream of pieces, each marked train or val.

    The ``<|endoftext|>`` between two documents goes with what precedes it; when the split point
    falls in a document that has no safe cut after it, that document stays in train and
    validation starts with the next one.
    """
    doc_start = 0
    in_val = False
    for k, src in enumerate(sources):
        if k:
            yield _Piece(src.name, 0, None, in_val)
            in_val = in_val or doc_start >= split_byte
        split_at = None if in_val or split_byte - doc_start >= src.size else split_byte - doc_start
        with src.open() as f:
            for offset, data, after in _document_pieces(
                f, chunk_bytes=chunk_bytes, split_at=split_at, cuts=cuts
            ):
                in_val = in_val or after
                yield _Piece(src.name, offset, data, in_val)
        doc_start += src.size


# ----------------------------------------------------------------------------- 3. encoding pieces

_worker_tokenizer: Tokenizer | None = None
_worker_dtype: str = "uint16"


def _set_tokenizer(tokenizer: Tokenizer | None, dtype: str) -> None:
    global _worker_tokenizer, _worker_dtype
    _worker_tokenizer, _worker_dtype = tokenizer, dtype


def _init_worker(tokenizer_dict: dict[str, Any], dtype: str) -> None:
    """Pool initializer: rebuild the tokenizer from its JSON dict (no pickling of live objects)."""
    import signal

    from scratchllm.tokenizer import tokenizer_classes

    # Ctrl-C is the parent's to handle (it stops the pool); workers would only print tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    _set_tokenizer(tokenizer_classes()[tokenizer_dict["kind"]].from_dict(tokenizer_dict), dtype)


def _encode_piece(piece: _Piece) -> tuple[bool, bytes, int]:
    """Decode and encode one piece; returns (is_val, token ids as bytes, input bytes consumed)."""
    import numpy as np

    tok = _worker_tokenizer
    assert tok is not None
    if piece.data is None:
        return piece.is_val, np.array([tok.eot_id], dtype=_worker_dtype).tobytes(), 0
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
    try:
        ids = np.asarray(tok.encode(text), dtype=np.int64)
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
    return piece.is_val, ids.astype(_worker_dtype).tobytes(), len(data)


def _encode_in_order(
    pieces: Iterator[_Piece], pool: Any, max_pending: int
) -> Iterator[tuple[bool, bytes, int]]:
    """Like ``pool.imap(_encode_piece, pieces)`` but never more than ``max_pending`` chunks ahead."""
    pending: deque[Any] = deque()
    for piece in pieces:
        pending.append(pool.apply_async(_encode_piece, (piece,)) if pool is not None else piece)
        while len(pending) > max_pending:
            yield _result(pending.popleft())
    while pending:
        yield _result(pending.popleft())


def _result(item: Any) -> tuple[bool, bytes, int]:
    return _encode_piece(item) if isinstance(item, _Piece) else item.get()


# ----------------------------------------------------------------------------- 4. writing the shards


def token_dtype(vocab_size: int) -> str:
    """The smallest unsigned dtype that holds every id: uint16 below 65,536 tokens, else uint32."""
    return "uint16" if vocab_size < 1 << 16 else "uint32"


class _TooSmall(Exception):
    """Raised inside the write block so that the temp files of a too-small split are discarded."""


def _write_shards(
    tok: Tokenizer,
    sources: list[_Source],
    out: Path,
    *,
    dtype: str,
    split_byte: int,
    chunk_bytes: int,
    workers: int,
    progress: bool,
) -> tuple[dict[bool, int], int]:
    """Stream every piece through the tokenizer into temp files, renamed into place on success.

    Returns the token counts ``{is_val: n}`` and the number of unsafe cuts. When a split gets
    fewer than :data:`MIN_SPLIT_TOKENS` tokens nothing is renamed (the caller reports it); on any
    error the temp files are removed and ``out`` is as it was.
    """
    from tqdm.auto import tqdm

    from scratchllm.io import atomic_open

    cuts = _Cuts()
    counts = {False: 0, True: 0}
    itemsize = 2 if dtype == "uint16" else 4
    total = sum(s.size for s in sources)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="prepare", disable=None if progress else True)
    pool = None
    try:
        if workers >= 2:
            import multiprocessing

            # spawn: safe whatever threads the parent runs (torch, tqdm); workers rebuild the tokenizer.
            tok_dict = {"kind": tok.kind, **tok.to_dict()}
            pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (tok_dict, dtype))
        else:
            _set_tokenizer(tok, dtype)
        with atomic_open(out / "train.bin") as train_f, atomic_open(out / "val.bin") as val_f:
            pieces = _pieces(sources, split_byte, chunk_bytes, cuts)
            for is_val, ids, nbytes in _encode_in_order(pieces, pool, 2 * workers if pool else 0):
                (val_f if is_val else train_f).write(ids)
                counts[is_val] += len(ids) // itemsize
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
    return counts, cuts.unsafe


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
) -> dict[str, Any]:
    """Tokenise ``inputs`` (files/directories; None or empty = the default corpus) into ``out_dir``.

    Returns the ``meta.json`` contents plus ``out_dir`` and ``seconds``. ``workers``: None picks
    the CPU count for inputs over :data:`POOL_MIN_BYTES` (in-process otherwise), 0 or 1 means
    in-process, N >= 2 a pool of N. Raises :class:`ScratchLLMError` for anything the user can fix;
    nothing in ``out_dir`` is replaced unless the whole run succeeds (and ``force`` is set when
    ``out_dir`` already holds files).
    """
    from scratchllm import __version__
    from scratchllm.data.shards import tokenizer_fingerprint
    from scratchllm.io import atomic_write_json, ensure_empty_dir, sha256_file
    from scratchllm.tokenizer import Tokenizer, load_tokenizer, tokenizer_classes

    t0 = time.perf_counter()
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    out = Path(out_dir)
    if not 0.0 < val_fraction < 1.0:
        raise ScratchLLMError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if workers is not None and workers < 0:
        raise ScratchLLMError(f"--workers must be >= 0, got {workers}")
    if chunk_bytes < 16:
        raise ScratchLLMError(f"chunk_bytes must be at least 16, got {chunk_bytes}")

    # Check every input before touching the output directory.
    sources, entries, skipped = _collect_sources(inputs, out)
    total_bytes = sum(s.size for s in sources)
    if len(sources) > 1:
        tok.eot_id  # noqa: B018 - raises a clear error when the tokenizer has no <|endoftext|>
    dtype = token_dtype(tok.vocab_size)
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if total_bytes >= POOL_MIN_BYTES else 1
    if type(tok) is not tokenizer_classes().get(tok.kind):
        workers = 1  # a custom tokenizer class cannot be rebuilt from JSON in a worker process
    split_byte = round(total_bytes * (1.0 - val_fraction))

    created = not out.exists()
    ensure_empty_dir(out, force=force)
    try:
        counts, unsafe_cuts = _write_shards(
            tok, sources, out, dtype=dtype, split_byte=split_byte, chunk_bytes=chunk_bytes,
            workers=workers, progress=progress,
        )  # fmt: skip
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
        "documents": len(sources),
        "total_bytes": total_bytes,
        "sources": entries,
        "skipped": skipped,
        "chunk_bytes": chunk_bytes,
        "unsafe_cuts": unsafe_cuts,
        "text_decoding": "utf-8, BOM dropped, universal newlines",
        "created_by": f"scratchllm {__version__}",
    }
    atomic_write_json(out / "meta.json", meta)
    _remove_stale_temp_files(out)
    return {**meta, "out_dir": str(out), "seconds": round(time.perf_counter() - t0, 3)}
