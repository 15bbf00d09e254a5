"""Crash-safe file writing and small file helpers shared by every stage.

Every file scratchllm produces (checkpoints, tokenizers, shards' metadata, metrics plots) goes
through :func:`atomic_write`: the bytes land in a temporary file *in the same directory*, are
fsynced, and only then renamed over the final name with :func:`os.replace`, which is atomic on
POSIX file systems. A reader therefore sees either the old complete file or the new complete
file, never half of one — even if the process is killed with SIGKILL mid-write. The directory is
fsynced too so that the rename itself survives a power loss on storage that honours fsync.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from scratchllm.errors import ScratchLLMError

TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry (a rename or a new file) to disk; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_error(path: Path, err: OSError) -> ScratchLLMError:
    reason = err.strerror or str(err)
    return ScratchLLMError(f"could not write {path}: {reason} (the previous file, if any, is intact)")


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "wb", *, before_replace: Any = None
) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync it and rename it into place.

    On any exception the temporary file is removed and ``path`` is left untouched. Disk errors
    (ENOSPC, EIO, ...) are turned into a :class:`ScratchLLMError` naming the path and the reason,
    e.g. "No space left on device". ``before_replace()`` runs after the data is durable and before
    the rename (a manifest can then list the new file before it appears).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _disk_error(path, err) from err
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """Read a UTF-8 text file a user gave us; every way it can fail is a one-line error naming it.

    ``what`` says what the file is for ("training text", "instruction data file", ...). A leading
    byte-order mark (as spreadsheet programs and some editors write) is dropped.
    """
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ScratchLLMError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ScratchLLMError(f"{what} {path} is a directory; give a file") from None
    except UnicodeDecodeError as err:
        raise ScratchLLMError(
            f"{what} {path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
        ) from None
    except OSError as err:
        raise ScratchLLMError(f"cannot read {what} {path}: {err.strerror or err}") from None


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file, turning a missing or malformed file into a one-line user error."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ScratchLLMError(f"{what} {path} is not valid JSON ({err})") from None


def read_json_records(path: str | os.PathLike, what: str = "file") -> list[Any]:
    """The values of a JSON file holding a list (its text starts with ``[``) or of a JSON Lines
    file (one value per non-blank line); errors name the file and, for JSON Lines, the line."""
    path = Path(path)
    raw = read_text(path, what)
    if raw.lstrip().startswith("["):
        try:
            return list(json.loads(raw))
        except json.JSONDecodeError as err:
            raise ScratchLLMError(f"{path} is not valid JSON ({err})") from None
    records = []
    for n, line in enumerate(raw.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ScratchLLMError(f"{path} line {n} is not valid JSON ({err.msg})") from None
    return records


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so memory stays flat."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def ensure_empty_dir(
    path: str | os.PathLike, *, force: bool = False, what: str = "output directory", create: bool = True
) -> Path:
    """Create ``path`` or check it is empty; refuse to overwrite a populated one unless ``force``.

    ``create=False`` only checks: a command calls it first to fail fast on a populated --out, then
    validates its inputs, and creates the directory when it is about to write (so a bad input never
    leaves an empty directory behind).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ScratchLLMError(f"{what} {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise ScratchLLMError(
            f"{what} {path} already contains files; choose another --out or pass --force to overwrite"
        )
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
