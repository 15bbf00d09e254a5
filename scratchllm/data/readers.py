"""Reading corpora: which files an input names, and the documents inside them.

Every command that reads a corpus (``tokenizer train``, ``prepare``, ``clean``) goes through this
module, so they all follow **one rule**:

* **Files and directories.** A file named on the command line is always read. A directory is walked
  recursively in sorted path order; hidden files and directories (``.name``) are never read. In a
  directory, a file is read when its name matches an ``include`` glob (default: every format
  below) and no ``exclude`` glob. A glob without ``/`` matches the file name (``*.jsonl.zst``), one
  with ``/`` the path below the directory (``en/*.parquet``). Files a directory holds but that are
  not read (another format, empty, not UTF-8 text) are listed with the reason.
* **Formats**, by file name (each may end in ``.gz``, ``.zst``/``.zstd`` or ``.bz2``, decompressed
  as a stream):

  ======================  ==========================================================
  ``.txt .text .md``      one document per file: UTF-8, a leading BOM dropped,
  ``.markdown .rst``      ``\\r\\n`` and ``\\r`` read as ``\\n`` (what ``Path.read_text`` gives)
  ``.jsonl .ndjson        one JSON object per line, the document is its ``text_field``
  .json``                 (``--text-field``, default ``text``; ``a.b`` reaches into nested
                          objects); blank lines are ignored
  ``.parquet``            one document per row, the ``text_field`` column, streamed in
                          batches of rows (pyarrow), never the whole file at once
  ======================  ==========================================================

  A file named explicitly with another extension is read as plain text.
* **A ``scratchllm clean`` output directory** (it holds a ``report.json`` written by ``clean``) is
  read as its shards, in order — so ``prepare --input CLEAN_DIR`` just works.
* **Bad input** — a line that is not JSON, an object without the field, a field that is not a
  string, text that is not UTF-8, a corrupt or truncated compressed file — is an
  :class:`InputError` with the file and line. ``on_error="fail"`` (the default) stops with a
  one-line error naming them; ``on_error="skip"`` skips the record (a corrupt file: the whole file),
  counts it by kind, and keeps the first :data:`MAX_REPORTED` for the report. Never a silent drop.

Reading is streaming: only one line (JSONL), one batch of rows (Parquet) or one plain-text
document is in memory at a time. :meth:`Inputs.scan` reads everything once up front to validate
it and to count documents and bytes (``prepare`` needs the total to place the validation split,
and a bad record should stop a long job before it starts, not in its last minute);
:meth:`Inputs.documents` then streams the documents, skipping exactly what the scan reported.
``pyarrow`` and ``zstandard`` are imported only when a Parquet or ``.zst`` file is read.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import fnmatch
import gzip
import io
import json
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from scratchllm.errors import ScratchLLMError

#: File name endings of each format (before an optional compression suffix).
FORMAT_SUFFIXES: dict[str, tuple[str, ...]] = {
    "text": (".txt", ".text", ".md", ".markdown", ".rst"),
    "jsonl": (".jsonl", ".ndjson", ".json"),
    "parquet": (".parquet",),
}
COMPRESSION_SUFFIXES: dict[str, str] = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
#: The default ``include`` globs for directories: every format, plain or compressed.
DEFAULT_INCLUDE: tuple[str, ...] = tuple(
    f"*{suffix}{comp}"
    for suffixes in FORMAT_SUFFIXES.values()
    for suffix in suffixes
    for comp in ("", *COMPRESSION_SUFFIXES)
)
ON_ERROR_CHOICES = ("fail", "skip")
#: How many bad records (and skipped files) are listed one by one; all are counted.
MAX_REPORTED = 50
#: How much of a plain-text file is looked at to decide that it is text before reading it.
SNIFF_BYTES = 8192
#: The marker ``clean`` writes in its ``report.json`` (how a clean output directory is recognised).
CLEAN_REPORT_KIND = "scratchllm-clean"
_BLOCK = 1 << 20
_PARQUET_BATCH_ROWS = 1024


def format_names() -> str:
    """``".txt, .text, ... (each optionally .gz/.zst/.bz2)"`` for messages and help texts."""
    suffixes = ", ".join(s for group in FORMAT_SUFFIXES.values() for s in group)
    return f"{suffixes} (each optionally .gz, .zst or .bz2)"


def detect_format(path: str | os.PathLike) -> tuple[str | None, str | None]:
    """``(format, compression)`` from a file name: ``"x.jsonl.zst"`` → ``("jsonl", "zstd")``.

    The format is None when the name matches no known format (a directory walk skips such files;
    an explicitly named one is read as text).
    """
    name = Path(path).name.lower()
    compression = None
    for suffix, comp in COMPRESSION_SUFFIXES.items():
        if name.endswith(suffix):
            compression, name = comp, name[: -len(suffix)]
            break
    for fmt, suffixes in FORMAT_SUFFIXES.items():
        if name.endswith(suffixes):
            return fmt, compression
    return None, compression


@dataclass(frozen=True)
class InputFile:
    """One file to read: where, in which format, compressed how, and its size on disk."""

    path: Path
    format: str  # "text" | "jsonl" | "parquet"
    compression: str | None
    size: int

    @property
    def name(self) -> str:
        return str(self.path)


class Document(NamedTuple):
    """One document: its text, the file it came from and its line (JSONL) or row (Parquet), 1-based."""

    text: str
    source: str
    line: int | None = None

    @property
    def where(self) -> str:
        return self.source if self.line is None else f"{self.source}:{self.line}"


class InputError(NamedTuple):
    """A bad record or file: where it is, what kind of problem (a short key) and a readable message."""

    source: str
    line: int | None
    kind: str
    message: str

    @property
    def where(self) -> str:
        return self.source if self.line is None else f"{self.source}:{self.line}"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "line": self.line, "kind": self.kind, "message": self.message}


# ----------------------------------------------------------------------------- opening files


def _zstd_error() -> type[BaseException]:
    try:
        import zstandard
    except ImportError:  # pragma: no cover - zstandard is a dependency
        return OSError
    return zstandard.ZstdError


def open_binary(file: InputFile | str | os.PathLike) -> BinaryIO:
    """Open a file for reading bytes, decompressing ``.gz`` / ``.zst`` / ``.bz2`` as a stream."""
    if not isinstance(file, InputFile):
        path = Path(file)
        file = InputFile(path, detect_format(path)[0] or "text", detect_format(path)[1], 0)
    if file.compression == "gzip":
        return gzip.open(file.path, "rb")  # type: ignore[return-value]
    if file.compression == "bz2":
        return bz2.open(file.path, "rb")  # type: ignore[return-value]
    if file.compression == "zstd":
        return io.BufferedReader(_ZstdReader(file.path), _BLOCK)
    return open(file.path, "rb")


class _ZstdReader(io.RawIOBase):
    """A ``.zst`` file as a stream of bytes: every frame in turn, and an error if the last is cut off.

    (``zstandard``'s own ``stream_reader`` ends quietly on a truncated file: a half-downloaded
    shard would pass for a shorter one.)
    """

    def __init__(self, path: Path) -> None:
        try:
            import zstandard
        except ImportError:  # pragma: no cover - zstandard is a dependency
            raise ScratchLLMError(
                f"reading {path} needs the zstandard package: pip install zstandard"
            ) from None
        self._error = zstandard.ZstdError
        self._f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._in_frame = False
        self._eof = False
        self._buf = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while self._pos >= len(self._buf) and not self._eof:
            chunk = self._f.read(_BLOCK)
            if not chunk:
                self._eof = True
                if self._in_frame:
                    raise self._error("the file ends in the middle of a zstd frame (truncated)")
                return
            out = []
            while chunk:
                out.append(self._obj.decompress(chunk))
                self._in_frame = True
                if not self._obj.eof:
                    break
                chunk = self._obj.unused_data  # the next frame starts here
                self._obj = self._dctx.decompressobj()
                self._in_frame = False
            self._buf, self._pos = b"".join(out), 0

    def readinto(self, b: Any) -> int:
        self._fill()
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def _is_corruption(err: BaseException) -> bool:
    return isinstance(err, (OSError, EOFError, zlib.error, _zstd_error())) and not isinstance(
        err, (FileNotFoundError, PermissionError)
    )


def _corrupt_message(file: InputFile, err: BaseException, after_line: int | None) -> str:
    what = {"gzip": "gzip", "zstd": "zstd", "bz2": "bz2"}.get(file.compression or "", "")
    where = f" after line {after_line}" if after_line else ""
    kind = f"corrupt or truncated {what} data" if what else "read error"
    return f"{kind}{where} ({err}); the whole file is skipped"


def sniff_text(file: InputFile) -> str | None:
    """Why a plain-text file does not look like UTF-8 text (from its first bytes), or None."""
    with open_binary(file) as f:
        head = f.read(SNIFF_BYTES)
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8) :]
    if b"\x00" in head:
        return f"NUL byte at byte offset {head.index(0)}"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        # A multi-byte character cut by the sniff window is fine; anything else is not UTF-8.
        truncated = err.reason == "unexpected end of data" and len(head) >= SNIFF_BYTES - len(codecs.BOM_UTF8)
        if not truncated:
            return f"invalid UTF-8 byte 0x{head[err.start]:02x} at byte offset {err.start}"
    return None


# ----------------------------------------------------------------------------- finding files


def _matches(rel: str, patterns: Iterable[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel if "/" in p else name, p) for p in patterns)


def _walk_sorted(root: Path) -> list[Path]:
    """Regular files under ``root``, sorted by their path below it; hidden files and dirs skipped."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return sorted((f for f in files if f.is_file()), key=lambda f: f.relative_to(root).parts)


def _clean_dir_shards(root: Path) -> list[Path] | None:
    """The shard files of a ``scratchllm clean`` output directory, or None if ``root`` is not one."""
    report = root / "report.json"
    if not report.is_file():
        return None
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("kind") != CLEAN_REPORT_KIND:
        return None
    return [root / s["path"] for s in data.get("shards", [])]


@dataclass
class Discovery:
    """What :func:`discover` found: the files to read, and the ones a directory held but we skip."""

    files: list[InputFile]
    skipped: list[dict[str, str]] = field(default_factory=list)
    skipped_count: int = 0

    def skip(self, path: Path, reason: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_REPORTED:
            self.skipped.append({"path": str(path), "reason": reason})


def discover(
    inputs: Sequence[str | os.PathLike],
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    ignore_dirs: Sequence[str | os.PathLike] = (),
) -> Discovery:
    """Expand files and directories into the files to read (the rule in the module docstring).

    ``ignore_dirs``: directories whose files are never read (a command's own output directory).
    Raises :class:`ScratchLLMError` for a missing input, an empty or unreadable named file, and a
    directory with nothing to read.
    """
    include = tuple(include) if include else DEFAULT_INCLUDE
    exclude = tuple(exclude or ())
    ignored = {Path(d).resolve() for d in ignore_dirs}
    found = Discovery([])
    seen: set[Path] = set()

    def add(path: Path, size: int) -> None:
        if (key := path.resolve()) not in seen:
            seen.add(key)
            found.files.append(InputFile(path, *_known(path), size))

    for raw in inputs:
        path = Path(raw)
        try:
            if path.is_file():
                size = path.stat().st_size
                if size == 0:
                    raise ScratchLLMError(f"input file {path} is empty; give a file with text in it")
                if why := _not_text(path, size):
                    raise ScratchLLMError(f"input {path} is not UTF-8 text ({why}); give text files only")
                add(path, size)
            elif path.is_dir() and (shards := _clean_dir_shards(path)) is not None:
                if not shards:
                    raise ScratchLLMError(f"clean output directory {path} holds no documents")
                for shard in shards:
                    if not shard.is_file():
                        raise ScratchLLMError(
                            f"{path} is a clean output directory but its shard {shard.name} is missing; "
                            "run scratchllm clean again"
                        )
                    add(shard, shard.stat().st_size)
            elif path.is_dir():
                n_files, n_skipped = len(found.files), found.skipped_count
                for file in _walk_sorted(path):
                    if ignored.intersection(file.resolve().parents):
                        continue  # never read our own output back in
                    rel = file.relative_to(path).as_posix()
                    if _matches(rel, exclude):
                        continue
                    if not _matches(rel, include):
                        if include == DEFAULT_INCLUDE:
                            found.skip(file, "not a known input format; --include GLOB reads it as text")
                        continue
                    size = file.stat().st_size
                    if why := ("empty" if size == 0 else _not_text(file, size)):
                        found.skip(file, why)
                    else:
                        add(file, size)
                if len(found.files) == n_files:
                    skipped = found.skipped_count - n_skipped
                    raise ScratchLLMError(
                        f"input directory {path} contains no non-empty input files of a known format "
                        f"({format_names()})" + (f"; {skipped} other file(s) skipped" if skipped else "")
                    )
            elif path.exists():
                raise ScratchLLMError(f"input {path} is neither a file nor a directory")
            else:
                raise ScratchLLMError(f"input not found: {path}")
        except OSError as err:  # permission denied, a file vanishing mid-walk, ...
            where = err.filename or path
            raise ScratchLLMError(f"cannot read input {where}: {err.strerror or err}") from None
    return found


def _known(path: Path) -> tuple[str, str | None]:
    fmt, comp = detect_format(path)
    return fmt or "text", comp


def _not_text(path: Path, size: int) -> str | None:
    """For plain-text files: why the first bytes are not UTF-8 text (or a compressed file is corrupt)."""
    file = InputFile(path, *_known(path), size)
    if file.format != "text":
        return None
    try:
        return sniff_text(file)
    except Exception as err:  # a compressed file that does not even start right
        if _is_corruption(err):
            return f"corrupt {file.compression} data ({err})"
        raise


# ----------------------------------------------------------------------------- reading documents


def _field(obj: Any, name: str) -> Any:
    """``obj[name]``, or for ``"a.b"`` (when there is no key ``"a.b"``) ``obj["a"]["b"]``."""
    if name in obj:
        return obj[name]
    value = obj
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(name)
        value = value[part]
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return {int: "a number", float: "a number", str: "a string", list: "an array"}.get(
        type(value), "an object"
    )


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _text_blocks(file: InputFile) -> Iterator[tuple[str, int] | InputError]:
    """Decode a plain-text file block by block: ``(text, raw bytes)`` pairs, or one error at the end.

    Checks what :func:`Path.read_text` would reject (invalid UTF-8) and what is surely not text
    (a NUL byte), with the byte offset and line. The BOM is dropped (its bytes still count).
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    newlines = 0
    with open_binary(file) as f:
        while block := f.read(_BLOCK):
            raw = len(block)
            if offset == 0 and block.startswith(codecs.BOM_UTF8):
                block, offset = block[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
            nul = block.find(b"\x00")
            if nul >= 0:
                line = newlines + block.count(b"\n", 0, nul) + 1
                yield InputError(
                    file.name, line, "binary", f"NUL byte at byte offset {offset + nul}: not text"
                )
                return
            try:
                text = decoder.decode(block)
            except UnicodeDecodeError as err:
                line = newlines + block.count(b"\n", 0, max(err.start, 0)) + 1
                yield InputError(
                    file.name,
                    line,
                    "not_utf8",
                    f"not valid UTF-8: byte 0x{block[err.start]:02x} at byte offset {offset + err.start}",
                )
                return
            newlines += block.count(b"\n")
            offset += len(block)
            yield text, raw
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            yield InputError(
                file.name, newlines + 1, "not_utf8", "not valid UTF-8: the file ends inside a character"
            )


def _read_text_file(file: InputFile) -> Iterator[Document | InputError]:
    """The whole file as one document, decoded like ``Path.read_text`` (BOM dropped, universal newlines)."""
    parts: list[str] = []
    for item in _text_blocks(file):
        if isinstance(item, InputError):
            yield item
            return
        parts.append(item[0])
    text = "".join(parts)
    yield Document(text.replace("\r\n", "\n").replace("\r", "\n"), file.name)


def _read_jsonl_file(file: InputFile, text_field: str) -> Iterator[Document | InputError]:
    """One document per JSON line (blank lines ignored)."""
    with open_binary(file) as f:
        for k, raw in enumerate(f, 1):
            if k == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except UnicodeDecodeError as err:
                yield InputError(
                    file.name,
                    k,
                    "not_utf8",
                    f"not valid UTF-8 ({err.reason} at byte {err.start} of the line)",
                )
                continue
            except ValueError as err:
                if k == 1 and raw.lstrip().startswith(b"["):
                    yield InputError(
                        file.name,
                        k,
                        "json_array",
                        "the file is one JSON array, not JSON lines (one object per line); "
                        "convert it, e.g. jq -c '.[]' in.json > out.jsonl",
                    )
                    return
                yield InputError(file.name, k, "not_json", f"not JSON ({err})")
                continue
            if not isinstance(obj, dict):
                yield InputError(file.name, k, "not_object", f"{_json_type(obj)}, not a JSON object")
                continue
            try:
                text = _field(obj, text_field)
            except KeyError:
                keys = ", ".join(list(obj)[:8])
                yield InputError(
                    file.name,
                    k,
                    "missing_field",
                    f"no field {text_field!r} (keys: {keys or 'none'}); choose it with --text-field",
                )
                continue
            if not isinstance(text, str):
                what = _json_type(text)
                yield InputError(file.name, k, "not_string", f"field {text_field!r} is {what}, not a string")
                continue
            if _has_lone_surrogate(text):
                yield InputError(
                    file.name,
                    k,
                    "invalid_unicode",
                    f"field {text_field!r} holds a lone surrogate (\\ud800-\\udfff escape)",
                )
                continue
            yield Document(text, file.name, k)


def _read_parquet_file(file: InputFile, text_field: str) -> Iterator[Document | InputError]:
    """One document per row of the ``text_field`` column, streamed in batches of rows."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise ScratchLLMError(f"reading {file.path} needs the pyarrow package: pip install pyarrow") from None
    with contextlib.ExitStack() as stack:
        if file.compression:  # Parquet needs random access: decompress to a temporary file first
            import shutil
            import tempfile

            tmp = stack.enter_context(tempfile.TemporaryFile())
            with open_binary(file) as f:
                shutil.copyfileobj(f, tmp, _BLOCK)
            tmp.seek(0)
            source: Any = tmp
        else:
            source = str(file.path)
        try:
            pf = pq.ParquetFile(source)
        except (pa.ArrowException, OSError) as err:
            yield InputError(file.name, None, "corrupt_file", f"not a readable Parquet file ({err})")
            return
        names = pf.schema_arrow.names
        if text_field not in names:
            yield InputError(
                file.name,
                None,
                "missing_field",
                f"no column {text_field!r} (columns: {', '.join(names[:12])}); choose it with --text-field",
            )
            return
        kind = pf.schema_arrow.field(text_field).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            yield InputError(
                file.name, None, "not_string", f"column {text_field!r} holds {kind}, not strings"
            )
            return
        row = 0
        try:
            for batch in pf.iter_batches(
                batch_size=_PARQUET_BATCH_ROWS, columns=[text_field], use_threads=False
            ):
                for text in batch.column(0).to_pylist():
                    row += 1
                    if text is None:
                        yield InputError(
                            file.name, row, "missing_field", f"column {text_field!r} is null in this row"
                        )
                    else:
                        yield Document(text, file.name, row)
        except (pa.ArrowException, OSError) as err:
            yield InputError(
                file.name,
                row + 1,
                "corrupt_file",
                f"unreadable Parquet data ({err}); the whole file is skipped",
            )


def read_documents(file: InputFile, text_field: str = "text") -> Iterator[Document | InputError]:
    """Stream one file's documents, with an :class:`InputError` in place of each bad record.

    A corrupt or truncated compressed file ends with one ``corrupt_file`` error (and nothing after
    it). Errors that are the user's environment rather than the data (a permission denied) raise.
    """
    readers = {
        "text": lambda f: _read_text_file(f),
        "jsonl": lambda f: _read_jsonl_file(f, text_field),
        "parquet": lambda f: _read_parquet_file(f, text_field),
    }
    last_line: int | None = None
    try:
        for item in readers[file.format](file):
            last_line = item.line
            yield item
    except ScratchLLMError:
        raise
    except PermissionError as err:
        raise ScratchLLMError(f"cannot read input {file.path}: {err.strerror or err}") from None
    except Exception as err:
        if not _is_corruption(err):
            raise
        yield InputError(file.name, None, "corrupt_file", _corrupt_message(file, err, last_line))


# ----------------------------------------------------------------------------- the error policy


class ErrorLog:
    """Applies ``--on-error``: raise on the first bad record (``fail``) or count and keep going (``skip``)."""

    def __init__(self, on_error: str = "fail") -> None:
        if on_error not in ON_ERROR_CHOICES:
            raise ScratchLLMError(
                f"--on-error must be one of {', '.join(ON_ERROR_CHOICES)}, got {on_error!r}"
            )
        self.on_error = on_error
        self.counts: Counter = Counter()
        self.first: list[InputError] = []

    def add(self, err: InputError) -> None:
        if self.on_error == "fail":
            raise ScratchLLMError(
                f"{err.where}: {err.message}; fix the input, or pass --on-error skip to skip bad "
                "records (they are counted and listed in the report)"
            )
        self.counts[err.kind] += 1
        if len(self.first) < MAX_REPORTED:
            self.first.append(err)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict[str, Any]:
        """JSON for a report: the count by kind and the first few, each with file and line."""
        return {
            "on_error": self.on_error,
            "count": self.total,
            "by_kind": dict(sorted(self.counts.items())),
            "first": [e.to_dict() for e in self.first],
        }


# ----------------------------------------------------------------------------- inputs = files + policy


@dataclass
class FileStats:
    """What the scan found in one file."""

    documents: int = 0
    text_bytes: int = 0  # UTF-8 bytes of its documents (for text files: the decompressed file)
    errors: int = 0
    corrupt: bool = False
    bad_lines: set[int] = field(default_factory=set)


class Inputs:
    """A corpus given as files and directories: discovery, validation and streaming of documents.

    >>> inputs = Inputs(["data/"], text_field="text", on_error="skip")   # doctest: +SKIP
    >>> inputs.scan()                       # validate everything, count documents and bytes
    >>> for doc in inputs.documents(): ...  # stream the good documents, in order
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        text_field: str = "text",
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        on_error: str = "fail",
        ignore_dirs: Sequence[str | os.PathLike] = (),
    ) -> None:
        if not text_field:
            raise ScratchLLMError("--text-field must not be empty")
        self.text_field = text_field
        self.errors = ErrorLog(on_error)
        found = discover(paths, include=include, exclude=exclude, ignore_dirs=ignore_dirs)
        self.files = found.files
        self.skipped = found.skipped
        self.skipped_count = found.skipped_count
        self.stats: dict[Path, FileStats] | None = None

    @property
    def needs_pyarrow(self) -> bool:
        return any(f.format == "parquet" for f in self.files)

    def scan(self, *, progress: bool = False) -> None:
        """Read every file once: count documents and bytes, and apply the error policy to bad records.

        With ``on_error="fail"`` the first bad record raises, before any output is written.
        """
        from tqdm.auto import tqdm

        stats: dict[Path, FileStats] = {}
        bar = tqdm(
            total=sum(f.size for f in self.files),
            unit="B",
            unit_scale=True,
            desc="scan",
            disable=None if progress else True,
        )
        try:
            for file in self.files:
                st = stats[file.path] = FileStats()
                items: Iterable[Any] = read_documents(file, self.text_field)
                if file.format == "text":  # validate block by block: never the whole text in memory
                    items = _scan_text_file(file)
                for item in items:
                    if isinstance(item, InputError):
                        self.errors.add(item)
                        st.errors += 1
                        if item.kind == "corrupt_file":
                            st.corrupt = True
                        elif item.line is not None:
                            st.bad_lines.add(item.line)
                        continue
                    st.documents += 1
                    st.text_bytes += item if isinstance(item, int) else len(item.text.encode("utf-8"))
                bar.update(file.size)
        finally:
            bar.close()
        self.stats = stats

    def _require_scan(self) -> dict[Path, FileStats]:
        if self.stats is None:
            self.scan()
        assert self.stats is not None
        return self.stats

    def readable_files(self) -> list[InputFile]:
        """The files that hold at least one good document (after :meth:`scan`)."""
        stats = self._require_scan()
        return [f for f in self.files if not stats[f.path].corrupt and stats[f.path].documents]

    @property
    def documents_count(self) -> int:
        return sum(s.documents for s in self._require_scan().values() if not s.corrupt)

    @property
    def text_bytes(self) -> int:
        return sum(s.text_bytes for s in self._require_scan().values() if not s.corrupt)

    def file_documents(self, file: InputFile) -> Iterator[Document]:
        """The good documents of one file, skipping exactly what the scan reported."""
        st = self._require_scan()[file.path]
        if st.corrupt:
            return
        n = 0
        for item in read_documents(file, self.text_field):
            if isinstance(item, InputError):
                if item.kind == "corrupt_file" or item.line not in st.bad_lines:
                    raise ScratchLLMError(
                        f"{file.path} changed while it was being read ({item.message}); run again"
                    )
                continue
            n += 1
            yield item
        if n != st.documents:
            raise ScratchLLMError(
                f"{file.path} changed while it was being read ({n} documents, "
                f"{st.documents} before); run again"
            )

    def documents(self) -> Iterator[Document]:
        """Every good document of every file, in order (scans first if that has not happened)."""
        for file in self.readable_files():
            yield from self.file_documents(file)

    def summary(self) -> dict[str, Any]:
        """JSON for meta.json / report.json: the files, what was skipped, and the input errors."""
        stats = self._require_scan()
        files = []
        for f in self.files:
            st = stats[f.path]
            entry: dict[str, Any] = {"path": str(f.path), "bytes": st.text_bytes}
            if f.format != "text" or f.compression:
                entry.update(
                    format=f.format, compression=f.compression, file_bytes=f.size, documents=st.documents
                )
            if st.corrupt:
                entry.update(bytes=0, documents=0, skipped="corrupt or unreadable: the whole file")
            files.append(entry)
        return {
            "files": files,
            "skipped_files": self.skipped,
            "skipped_files_count": self.skipped_count,
            "input_errors": self.errors.summary(),
        }


def _scan_text_file(file: InputFile) -> Iterator[int | InputError]:
    """For :meth:`Inputs.scan`: a plain-text file's raw size (one "document"), or its error."""
    size = 0
    try:
        for item in _text_blocks(file):
            if isinstance(item, InputError):
                yield item
                return
            size += item[1]
    except PermissionError as err:
        raise ScratchLLMError(f"cannot read input {file.path}: {err.strerror or err}") from None
    except Exception as err:
        if not _is_corruption(err):
            raise
        yield InputError(file.name, None, "corrupt_file", _corrupt_message(file, err, None))
        return
    if size:
        yield size
