"""Model weights on disk: safetensors files, validated before anything is loaded.

**Why nothing is pickled.** ``torch.save`` pickles, and unpickling runs arbitrary code chosen by
whoever wrote the file. Weights go to safetensors (a JSON header plus raw bytes). Before the
safetensors library sees a file, its header is validated here (:func:`read_safetensors_header`),
so a truncated or malformed file becomes one clear :class:`ScratchLLMError` naming what is wrong.

**Tied weights are stored once.** GPT-2's output head *is* its token embedding; the file keeps one
copy and records the alias, and loading fills the tied name back in.

This module knows nothing about run directories (:mod:`scratchllm.runs`) or training state
(:mod:`scratchllm.train.checkpoint`); both build on it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchllm.device import unwrap
from scratchllm.errors import ScratchLLMError
from scratchllm.io import atomic_open

#: Version of the files this package writes (weights metadata, config.json, manifests).
FORMAT_VERSION = 1


# dtype name in the header -> (torch dtype name, bytes per element)
_DTYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "I16": ("int16", 2),
    "U16": ("uint16", 2),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I32": ("int32", 4),
    "U32": ("uint32", 4),
    "F32": ("float32", 4),
    "F64": ("float64", 8),
    "I64": ("int64", 8),
    "U64": ("uint64", 8),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
}
#: The safetensors library refuses headers above 100 MB; so do we, before allocating anything.
MAX_HEADER_BYTES = 100 * 1024 * 1024


def check_safetensors_header(header_bytes: bytes, data_len: int, what: str = "file") -> dict[str, Any]:
    """Parse and check a safetensors JSON header against the size of the data that follows it.

    Returns the header dict. Raises :class:`ScratchLLMError` unless the header is a JSON object
    whose tensors have known dtypes, non-negative integer shapes, and byte ranges that match their
    shapes and tile the data section exactly (no gaps, no overlaps, nothing missing) — the same
    rules the safetensors format specifies, checked here so that the error message can say which.
    """

    def bad(msg: str) -> ScratchLLMError:
        return ScratchLLMError(f"{what} is not a valid safetensors file: {msg}")

    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise bad("its header is not valid JSON (damaged or not a safetensors file)") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    meta = header.get("__metadata__")
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    ):
        raise bad("its __metadata__ is not a string-to-string map")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise bad(f"tensor {name!r} has no description")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _DTYPES:
            raise bad(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise bad(f"tensor {name!r} has a malformed shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise bad(f"tensor {name!r} has malformed data_offsets {offsets!r}")
        if offsets[1] - offsets[0] != math.prod(shape) * _DTYPES[dtype][1]:
            raise bad(
                f"tensor {name!r} has {offsets[1] - offsets[0]} bytes but shape {shape} needs more or less"
            )
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise bad(f"tensor {name!r} starts at byte {begin}, expected {pos} (overlapping or gapped data)")
        pos = end
    if pos != data_len:
        if pos > data_len:
            raise bad(f"it is truncated: the header describes {pos} data bytes, the file holds {data_len}")
        raise bad(f"the header describes {pos} data bytes but the file holds {data_len}")
    return header


def read_safetensors_header(path: str | os.PathLike, what: str | None = None) -> dict[str, Any]:
    """Read and validate the header of a safetensors file (see :func:`check_safetensors_header`)."""
    path = Path(path)
    what = what or str(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size < 8:
                raise ScratchLLMError(f"{what} is not a valid safetensors file: truncated to {size} bytes")
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER_BYTES or n > size - 8:
                raise ScratchLLMError(
                    f"{what} is not a valid safetensors file: header length {n} does not fit the "
                    f"file size {size} (truncated or damaged)"
                )
            header_bytes = f.read(n)
    except FileNotFoundError:
        raise ScratchLLMError(f"{what} not found") from None
    except IsADirectoryError:
        raise ScratchLLMError(f"{what} is a directory, not a safetensors file") from None
    except OSError as err:
        raise ScratchLLMError(f"cannot read {what}: {err.strerror or err}") from None
    return check_safetensors_header(header_bytes, size - 8 - n, what)


def parse_safetensors_bytes(data: bytes, what: str = "data") -> tuple[dict[str, Any], dict[str, str]]:
    """Validate an in-memory safetensors blob and return (tensors, metadata)."""
    if len(data) < 8:
        raise ScratchLLMError(f"{what} is not a valid safetensors file: truncated to {len(data)} bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or n > len(data) - 8:
        raise ScratchLLMError(
            f"{what} is not a valid safetensors file: header length {n} does not fit the size {len(data)}"
        )
    header = check_safetensors_header(data[8 : 8 + n], len(data) - 8 - n, what)
    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as err:  # the library's own checks; our header check should have caught it
        raise ScratchLLMError(f"{what} is not a valid safetensors file ({err})") from None
    return tensors, dict(header.get("__metadata__") or {})


def read_safetensors(
    path: str | os.PathLike, what: str | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Load a safetensors file as CPU tensors after validating it: returns (tensors, metadata)."""
    path = Path(path)
    what = what or str(path)
    header = read_safetensors_header(path, what)
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as err:
        raise ScratchLLMError(f"{what} is not a valid safetensors file ({err})") from None
    return tensors, dict(header.get("__metadata__") or {})


def _dedup_state_dict(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Drop tensors that share memory with an earlier one (tied weights), remembering the alias.

    The tied GPT-2 head ``out_head.weight`` *is* ``tok_emb.weight``; storing it twice would waste
    space, and safetensors refuses shared tensors anyway. ``aliases`` maps the dropped name to the
    kept one so loading can fill it back in.
    """
    kept: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in state.items():
        # A DTensor (a parameter sharded by FSDP) is compared by the slice this process holds and
        # kept as it is: the sharded checkpoint writer stores each rank's slice.
        sharded = hasattr(t, "to_local") and hasattr(t, "placements")
        local = t.to_local() if sharded else t
        key = (
            local.device.type,
            local.untyped_storage().data_ptr(),
            local.storage_offset(),
            tuple(t.shape),
            t.dtype,
        )
        if local.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen.setdefault(key, name)
        kept[name] = t.detach() if sharded else t.detach().cpu().contiguous()
    return kept, aliases


_HEADER_DTYPE = {torch_name: header for header, (torch_name, _) in _DTYPES.items()}


def header_dtype(dtype: Any) -> str:
    """The safetensors name of a torch dtype (``torch.float32`` -> ``"F32"``)."""
    name = _HEADER_DTYPE.get(str(dtype).removeprefix("torch."))
    if name is None:
        raise ValueError(f"dtype {dtype}: safetensors cannot store it")
    return name


@dataclass(frozen=True)
class LazyTensor:
    """A tensor :func:`write_safetensors` fetches only when its turn comes: its shape and dtype
    make the header, ``load()`` gives the data. Consolidating a sharded checkpoint streams this
    way, with one whole tensor in memory at a time."""

    shape: tuple[int, ...]
    dtype: Any
    load: Callable[[], Any]


def write_safetensors(
    f: Any, tensors: dict[str, Any], metadata: dict[str, str] | None = None
) -> tuple[int, str]:
    """Stream ``tensors`` into the open binary file ``f`` in the safetensors format.

    The format is small: 8 bytes (little-endian) giving the header's length, a JSON header with
    every tensor's dtype, shape and byte range (padded with spaces to a multiple of 8), then the
    raw bytes of each tensor, back to back. Writing tensor by tensor keeps the extra memory to one
    tensor's CPU copy (none for tensors already on the CPU) instead of a second copy of the whole
    model. Returns ``(bytes written, sha256)`` — hashed on the way, for manifests.
    """
    import torch

    header: dict[str, Any] = {}
    offset = 0
    for name, t in tensors.items():
        dtype = _HEADER_DTYPE.get(str(t.dtype).removeprefix("torch."))
        if dtype is None:
            raise ValueError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        n = math.prod(t.shape) * _DTYPES[dtype][1]
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    digest = hashlib.sha256()
    for chunk in (struct.pack("<Q", len(raw)), raw):
        f.write(chunk)
        digest.update(chunk)
    for name, t in tensors.items():
        if isinstance(t, LazyTensor):
            t = t.load()
            if tuple(t.shape) != tuple(header[name]["shape"]):
                raise ValueError(
                    f"tensor {name!r} has shape {list(t.shape)}, announced {header[name]['shape']}"
                )
        data = t.detach().to("cpu").contiguous().reshape(-1)
        if data.numel():
            view = memoryview(data.view(torch.uint8).numpy())
            f.write(view)
            digest.update(view)
    return 8 + len(raw) + offset, digest.hexdigest()


def weights_tensors(
    model: Any, *, only: set[str] | None = None, metadata: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors and metadata of a model's weights file: the ``state_dict`` with tied tensors
    once (the aliases recorded), or only the names in ``only`` (a *partial* file: a fine-tune that
    trained a few parameters stores just those; its base model supplies the rest on load)."""
    tensors, aliases = _dedup_state_dict(unwrap(model).state_dict())
    meta = {"format": "pt", "scratchllm_format_version": str(FORMAT_VERSION), **(metadata or {})}
    if only is not None:
        tensors = {k: v for k, v in tensors.items() if k in only}
        aliases = {k: v for k, v in aliases.items() if v in tensors}
        meta[PARTIAL_KEY] = "1"
    if aliases:
        meta["scratchllm_aliases"] = json.dumps(aliases, sort_keys=True)
    return tensors, meta


#: Metadata key marking a weights file that holds only some of a model's tensors.
PARTIAL_KEY = "scratchllm_partial"


def is_partial(metadata: dict[str, str]) -> bool:
    return metadata.get(PARTIAL_KEY) == "1"


def load_weights_into(model: Any, tensors: dict[str, Any], metadata: dict[str, str], what: str) -> None:
    """Copy ``tensors`` into ``model`` after checking names and shapes, naming any mismatch.

    Tied parameters (aliases) may be missing from the file: they are the same Parameter as the
    one they are tied to, so loading that one loads both. A partial file (:func:`is_partial`)
    must hold only names the model has; the others keep their current values (the base's).
    """
    import torch

    model = unwrap(model)
    expected = model.state_dict()
    aliases: dict[str, str] = {}
    if metadata.get("scratchllm_aliases"):
        try:
            aliases = dict(json.loads(metadata["scratchllm_aliases"]))
        except (json.JSONDecodeError, TypeError, ValueError):
            raise ScratchLLMError(f"{what}: its alias table is not valid JSON") from None
    # Tensors that share memory in the model need to be present only once.
    _, model_aliases = _dedup_state_dict(expected)
    full = dict(tensors)
    for name, target in {**model_aliases, **aliases}.items():
        if name not in full and target in full:
            full[name] = full[target]
    partial = is_partial(metadata)
    missing = [] if partial else [k for k in expected if k not in full]
    unexpected = [k for k in full if k not in expected]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ScratchLLMError(
            f"{what} does not match the model: tensor {missing[0]!r} is missing{more}; "
            "was it saved from a different architecture or config?"
        )
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ScratchLLMError(
            f"{what} does not match the model: unexpected tensor {unexpected[0]!r}{more}; "
            "was it saved from a different architecture or config?"
        )
    for name, got in full.items():
        ref = expected[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise ScratchLLMError(
                f"{what} does not match the model: tensor {name!r} has shape {list(got.shape)} "
                f"in the file but {list(ref.shape)} in the model"
            )
    with torch.no_grad():
        model.load_state_dict(full, strict=not partial)


def save_weights(
    path: str | os.PathLike,
    model: Any,
    *,
    metadata: dict[str, str] | None = None,
    only: set[str] | None = None,
) -> tuple[int, str]:
    """Write a model's weights (or only the names in ``only``) to one safetensors file, streamed
    and atomic (temp file + fsync + rename). Returns ``(size, sha256)``."""
    tensors, meta = weights_tensors(model, only=only, metadata=metadata)
    with atomic_open(path, "wb") as f:
        return write_safetensors(f, tensors, meta)


def load_weights(path: str | os.PathLike, model: Any) -> None:
    """Load a safetensors file written by :func:`save_weights` into an already built ``model``."""
    tensors, metadata = read_safetensors(path)
    load_weights_into(model, tensors, metadata, str(path))


def state_sha256(model: Any, *, exclude: tuple[str, ...] = ()) -> str:
    """SHA-256 over every tensor of ``model`` (name, dtype, shape and bytes, in name order), LoRA
    matrices and the names under ``exclude`` left out: the identity of a base model's weights.

    A fine-tune stored on top of its base records it, so a base that was retrained, edited or
    swapped — even by one value — is refused instead of giving silently different outputs.
    Reads every weight once (about a second per GB).
    """
    import torch

    digest = hashlib.sha256()
    tensors, _ = _dedup_state_dict(unwrap(model).state_dict())
    for name in sorted(tensors):
        if ".lora_" in name or any(name == e or name.startswith(e + ".") for e in exclude):
            continue
        t = tensors[name].reshape(-1)
        digest.update(f"{name}:{t.dtype}:{list(tensors[name].shape)};".encode())
        if t.numel():
            digest.update(memoryview(t.view(torch.uint8).numpy()))
    return digest.hexdigest()


# =========================================================================== tensors split over files
class ShardedTensors:
    """Tensors whose rows are spread over several safetensors files — a sharded (FSDP) checkpoint,
    where rank r wrote rows ``[offset, offset + rows)`` of each tensor — or held whole in one file
    (:meth:`from_file`). :meth:`read` returns any row range of any tensor, opening only the files
    that hold it; nothing else is loaded. This is how a checkpoint written by K processes is read
    back by K' processes (each reads its own new slice) or consolidated into one ordinary file.

    The *index* (JSON, next to the files) describes every tensor::

        {"metadata": {...},                      # the weights file metadata (aliases, format...)
         "tensors": {"tok_emb.weight": {"dtype": "F32", "shape": [23, 16], "parts": [
             {"file": "model-shard-00000-of-00002.safetensors", "offset": 0, "rows": 12},
             {"file": "model-shard-00001-of-00002.safetensors", "offset": 12, "rows": 11}]}}}

    ``rows`` is null for a tensor stored whole in one file. The parts must tile the rows exactly;
    each file's header is validated before the safetensors library opens it.
    """

    def __init__(self, directory: Path, index: dict[str, Any], what: str) -> None:
        self.directory, self.what = Path(directory), what
        try:
            self.metadata: dict[str, str] = dict(index.get("metadata") or {})
            self.tensors: dict[str, dict[str, Any]] = dict(index["tensors"])
        except (AttributeError, KeyError, TypeError, ValueError):
            raise ScratchLLMError(f"{what}: its shard index is malformed") from None
        for name, spec in self.tensors.items():
            self._check(name, spec)
        self._files: dict[str, Any] = {}
        self._keys: dict[str, set[str]] = {}

    @classmethod
    def from_file(cls, path: str | os.PathLike, what: str | None = None) -> ShardedTensors:
        """One ordinary safetensors file, every tensor whole (in the same reader interface)."""
        path = Path(path)
        header = read_safetensors_header(path, what)
        tensors = {
            name: {
                "dtype": info["dtype"],
                "shape": info["shape"],
                "parts": [{"file": path.name, "rows": None}],
            }
            for name, info in header.items()
            if name != "__metadata__"
        }
        return cls(
            path.parent, {"metadata": header.get("__metadata__") or {}, "tensors": tensors}, what or str(path)
        )

    def _check(self, name: str, spec: Any) -> None:
        def bad(msg: str) -> ScratchLLMError:
            return ScratchLLMError(f"{self.what}: tensor {name!r} {msg}")

        if not isinstance(spec, dict) or spec.get("dtype") not in _DTYPES:
            raise bad("has no valid dtype in the shard index")
        shape, parts = spec.get("shape"), spec.get("parts")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise bad(f"has a malformed shape {shape!r}")
        if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) for p in parts):
            raise bad("lists no files")
        for p in parts:
            f = p.get("file")
            if not isinstance(f, str) or "/" in f or f.startswith("."):
                raise bad(f"names a malformed file {f!r}")
        if len(parts) == 1 and parts[0].get("rows") is None:
            return
        if not shape:
            raise bad("is a scalar split into parts")
        pos = 0
        for p in sorted(parts, key=lambda p: p.get("offset", -1)):
            if p.get("offset") != pos or type(p.get("rows")) is not int or p["rows"] < 0:
                raise bad(f"has parts that do not tile its {shape[0]} rows (at row {pos})")
            pos += p["rows"]
        if pos != shape[0]:
            raise bad(f"has parts covering {pos} of its {shape[0]} rows")

    def files(self) -> list[str]:
        """Every file the index refers to."""
        return sorted({p["file"] for spec in self.tensors.values() for p in spec["parts"]})

    def names(self) -> list[str]:
        return list(self.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name]["shape"])

    def dtype(self, name: str) -> Any:
        import torch

        return getattr(torch, _DTYPES[self.tensors[name]["dtype"]][0])

    def _open(self, fname: str) -> Any:
        handle = self._files.get(fname)
        if handle is None:
            from safetensors import safe_open

            path = self.directory / fname
            read_safetensors_header(path, f"{self.what}: {fname}")  # validated before the library parses it
            try:
                handle = safe_open(str(path), framework="pt", device="cpu")
            except Exception as err:
                raise ScratchLLMError(
                    f"{self.what}: {fname} is not a valid safetensors file ({err})"
                ) from None
            self._files[fname] = handle
            self._keys[fname] = set(handle.keys())
        return handle

    def read(self, name: str, start: int = 0, stop: int | None = None) -> Any:
        """Rows ``start:stop`` of tensor ``name`` (the whole tensor by default) as a CPU tensor."""
        import torch

        spec = self.tensors[name]
        shape = spec["shape"]
        full_rows = shape[0] if shape else None
        stop = full_rows if stop is None else stop
        pieces = []
        for part in spec["parts"]:
            handle = self._open(part["file"])
            if part.get("rows") is None:  # stored whole
                if name not in self._keys[part["file"]]:
                    raise ScratchLLMError(f"{self.what}: {part['file']} does not hold {name!r}")
                t = handle.get_tensor(name)
                self._check_shape(name, part, t.shape, shape)
                return t if not shape or (start, stop) == (0, full_rows) else t[start:stop].clone()
            lo, hi = max(start, part["offset"]), min(stop, part["offset"] + part["rows"])
            if lo >= hi:
                continue
            if name not in self._keys[part["file"]]:
                raise ScratchLLMError(f"{self.what}: {part['file']} does not hold its part of {name!r}")
            sl = handle.get_slice(name)
            self._check_shape(name, part, sl.get_shape(), [part["rows"], *shape[1:]])
            pieces.append(sl[lo - part["offset"] : hi - part["offset"]])
        if not pieces:
            return torch.empty((0, *shape[1:]), dtype=self.dtype(name))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def _check_shape(self, name: str, part: dict, got: Any, want: list[int]) -> None:
        if list(got) != list(want):
            raise ScratchLLMError(
                f"{self.what}: {part['file']} holds {name!r} with shape {list(got)}, the index says {want}"
            )

    def lazy(self, names: list[str] | None = None) -> dict[str, LazyTensor]:
        """The tensors as :class:`LazyTensor` s, for :func:`write_safetensors` to stream."""
        return {
            n: LazyTensor(self.shape(n), self.dtype(n), lambda n=n: self.read(n))
            for n in (names or self.names())
        }

    def full_state(self) -> dict[str, Any]:
        """Every tensor whole, in memory (what loading a model for inference needs anyway)."""
        return {n: self.read(n) for n in self.names()}


def index_entry(t: Any, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One tensor's entry in a :class:`ShardedTensors` index."""
    return {"dtype": header_dtype(t.dtype), "shape": list(t.shape), "parts": parts}
