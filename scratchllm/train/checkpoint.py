"""Saving and loading models and training state, so that no crash can lose more than one interval.

A run directory holds everything needed to use a model and to continue training it::

    RUN/
      config.json                  architecture + model config + train config (+ extras)
      model.safetensors            latest weights
      best.safetensors             best validation weights
      tokenizer.json
      checkpoints/step-00000200/   model.safetensors, optimizer.safetensors,
                                   trainer_state.json, config.json, manifest.json (written last)

**Why the checkpoint is a directory with a manifest.** A checkpoint is several files and a kill
can strike between any two writes. So the files are written into a temporary directory
(``checkpoints/.tmp-step-...``), each one fsynced; then ``manifest.json`` (the step, every file's
size and SHA-256) is written and fsynced; only then is the directory renamed to ``step-XXXXXXXX``
— one atomic ``rename`` — and the parent directory fsynced so the rename itself is durable. A
``step-*`` directory therefore either does not exist or is complete, and the manifest lets
:func:`find_resumable_checkpoint` detect anything that went bad *after* the commit (a flipped
bit, a truncated copy, a deleted file) and fall back to the previous checkpoint. Temporary
leftovers of a killed save are ignored and cleaned at the next save.

**Why nothing is pickled.** ``torch.save`` pickles, and unpickling runs arbitrary code chosen by
whoever wrote the file. Weights and optimizer moments go to safetensors (a JSON header plus raw
bytes); everything else is JSON. Before the safetensors library sees a file, its header is
validated here (:func:`read_safetensors_header`), so a truncated or malformed file becomes one
clear :class:`ScratchLLMError`.

The loop talks to this module through a few functions (see docs/ARCHITECTURE.md, "Training
contract"): :func:`save_run_files` once at the start, :func:`save_checkpoint` every
``save_interval`` steps, :func:`save_best` on a new best validation loss, and
:func:`find_resumable_checkpoint` + :func:`load_checkpoint` (or :func:`resume`) for ``--resume``.
Everything else that needs a model calls :func:`load_model`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import struct
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any

from scratchllm.config import to_dict
from scratchllm.errors import ScratchLLMError
from scratchllm.io import TMP_PREFIX, atomic_write_bytes, atomic_write_json, fsync_dir, read_json

FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
STEP_PREFIX = "step-"
MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"

_STEP_RE = re.compile(r"^step-(\d{8,})$")


def step_dir_name(step: int) -> str:
    """``step-00000200``: zero-padded so that names sort in step order."""
    return f"{STEP_PREFIX}{step:08d}"


# =========================================================================== safetensors, validated
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


# =========================================================================== weights <-> bytes
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
        key = (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen.setdefault(key, name)
        kept[name] = t.detach().cpu().contiguous()
    return kept, aliases


def unwrap(model: Any) -> Any:
    """The plain model inside DistributedDataParallel (``.module``) / torch.compile (``._orig_mod``).

    Their ``state_dict`` keys carry a ``module.`` / ``_orig_mod.`` prefix; files always hold the
    plain names so that any model of the architecture can load them.
    """
    while True:
        inner = getattr(model, "module", None)
        if inner is None:
            inner = getattr(model, "_orig_mod", None)
        if inner is None or inner is model:
            return model
        model = inner


def weights_to_bytes(model: Any, metadata: dict[str, str] | None = None) -> bytes:
    """Serialise a model's ``state_dict`` to safetensors bytes, tied tensors stored once."""
    from safetensors.torch import save

    tensors, aliases = _dedup_state_dict(unwrap(model).state_dict())
    meta = {"format": "pt", "scratchllm_format_version": str(FORMAT_VERSION), **(metadata or {})}
    if aliases:
        meta["scratchllm_aliases"] = json.dumps(aliases, sort_keys=True)
    return save(tensors, metadata=meta)


def load_weights_into(model: Any, tensors: dict[str, Any], metadata: dict[str, str], what: str) -> None:
    """Copy ``tensors`` into ``model`` after checking names and shapes, naming any mismatch.

    Tied parameters (aliases) may be missing from the file: they are the same Parameter as the
    one they are tied to, so loading that one loads both.
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
    missing = [k for k in expected if k not in full]
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
    for name, ref in expected.items():
        got = full[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise ScratchLLMError(
                f"{what} does not match the model: tensor {name!r} has shape {list(got.shape)} "
                f"in the file but {list(ref.shape)} in the model"
            )
    with torch.no_grad():
        model.load_state_dict(full, strict=True)


def save_weights(path: str | os.PathLike, model: Any, *, metadata: dict[str, str] | None = None) -> None:
    """Write a model's weights to one safetensors file, atomically (temp + fsync + rename)."""
    atomic_write_bytes(path, weights_to_bytes(model, metadata))


def load_weights(path: str | os.PathLike, model: Any) -> None:
    """Load a safetensors file written by :func:`save_weights` into an already built ``model``."""
    tensors, metadata = read_safetensors(path)
    load_weights_into(model, tensors, metadata, str(path))


# =========================================================================== optimizer <-> bytes
def _param_names(model: Any, optimizer: Any) -> list[str]:
    """The name of every optimizer parameter index (in ``state_dict`` order), for error messages."""
    by_id = {id(p): n for n, p in unwrap(model).named_parameters()} if model is not None else {}
    names = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            names.append(by_id.get(id(p), f"param{len(names)}"))
    return names


def optimizer_to_bytes(optimizer: Any, model: Any = None) -> bytes:
    """AdamW's (or any torch optimizer's) state: tensors in safetensors, the rest as JSON metadata."""
    import torch
    from safetensors.torch import save

    from scratchllm.train.state import to_jsonable

    sd = optimizer.state_dict()
    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in sd["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    info = {
        "format_version": FORMAT_VERSION,
        "optimizer": type(optimizer).__name__,
        "param_names": _param_names(model, optimizer),
        "param_groups": to_jsonable(sd["param_groups"]),
        "scalars": to_jsonable(scalars),
    }
    return save(tensors, metadata={"format": "pt", "scratchllm_optimizer": json.dumps(info)})


def load_optimizer_from(optimizer: Any, tensors: dict[str, Any], metadata: dict[str, str], what: str) -> None:
    """Inverse of :func:`optimizer_to_bytes`, checking that groups and shapes match this optimizer."""
    try:
        info = json.loads(metadata["scratchllm_optimizer"])
        saved_groups = info["param_groups"]
        scalars = info.get("scalars", {})
        names = info.get("param_names", [])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise ScratchLLMError(f"{what} has no readable optimizer description") from None
    if info.get("optimizer") != type(optimizer).__name__:
        raise ScratchLLMError(
            f"{what} holds {info.get('optimizer')} state but this run uses {type(optimizer).__name__}"
        )
    current = optimizer.state_dict()["param_groups"]
    if len(saved_groups) != len(current) or any(
        len(s.get("params", [])) != len(c["params"]) for s, c in zip(saved_groups, current)
    ):
        raise ScratchLLMError(
            f"{what} was saved for a different set of trainable parameters "
            f"({[len(g.get('params', [])) for g in saved_groups]} per group, this run has "
            f"{[len(g['params']) for g in current]})"
        )
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        parts = key.split(".", 2)
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit():
            raise ScratchLLMError(f"{what} has an unexpected tensor {key!r}")
        idx = int(parts[1])
        if idx >= len(params):
            raise ScratchLLMError(f"{what} has state for parameter #{idx}, but there are only {len(params)}")
        name = names[idx] if idx < len(names) else f"#{idx}"
        if t.dim() > 0 and tuple(t.shape) != tuple(params[idx].shape):
            raise ScratchLLMError(
                f"{what}: optimizer state {parts[2]!r} of {name!r} has shape {list(t.shape)} "
                f"but the parameter has shape {list(params[idx].shape)}"
            )
        state.setdefault(idx, {})[parts[2]] = t
    for idx, extra in scalars.items():
        state.setdefault(int(idx), {}).update(extra)
    # JSON turned tuples (betas) into lists; give them back the type the optimizer uses.
    groups = []
    for saved, cur in zip(saved_groups, current):
        g = dict(saved)
        for k, v in cur.items():
            if isinstance(v, tuple) and isinstance(g.get(k), list):
                g[k] = tuple(g[k])
        groups.append(g)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise ScratchLLMError(f"cannot restore optimizer state from {what}: {err}") from None


# =========================================================================== run files
def _config_dict(cfg: Any) -> Any:
    if cfg is None or isinstance(cfg, dict):
        return cfg
    if is_dataclass(cfg):
        return to_dict(cfg)
    raise TypeError(f"config must be a dataclass or dict, got {type(cfg).__name__}")


def check_vocab(tokenizer: Any, model_config: Any, what: str = "model") -> None:
    """A tokenizer whose ids exceed the model's embedding table cannot work with it."""
    vocab = (
        model_config.get("vocab_size")
        if isinstance(model_config, dict)
        else getattr(model_config, "vocab_size", None)
    )
    if tokenizer is None or vocab is None:
        return
    if tokenizer.vocab_size > int(vocab):
        raise ScratchLLMError(
            f"tokenizer/model vocabulary mismatch: the tokenizer has {tokenizer.vocab_size} tokens but the "
            f"{what} has vocab_size {vocab}; use the tokenizer the model was trained with "
            f"(or --set vocab_size={tokenizer.vocab_size} for a new model)"
        )


def run_config(
    *, arch: str, model_config: Any, train_config: Any = None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``config.json`` document of a run directory."""
    from scratchllm import __version__

    doc: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "scratchllm_version": __version__,
        "architecture": arch,
        "model": _config_dict(model_config),
    }
    if train_config is not None:
        doc["train"] = _config_dict(train_config)
    for k, v in (extra or {}).items():
        if k in doc:
            raise ValueError(f"extra config key {k!r} would overwrite a standard key")
        doc[k] = v
    return doc


def save_run_files(
    run_dir: str | os.PathLike,
    model: Any,
    *,
    arch: str,
    model_config: Any,
    train_config: Any = None,
    tokenizer: Any = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``config.json``, ``tokenizer.json`` and (if ``model`` is given) ``model.safetensors``.

    Called once when a run starts (and by fine-tuning/conversion to produce a loadable run
    directory). Each file is written atomically; ``extra`` adds top-level keys to config.json
    (e.g. a fine-tuning head description).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_vocab(tokenizer, model_config)
    if tokenizer is not None:
        tokenizer.save(run_dir / TOKENIZER_FILE)
    atomic_write_json(
        run_dir / CONFIG_FILE,
        run_config(arch=arch, model_config=model_config, train_config=train_config, extra=extra),
    )
    if model is not None:
        save_weights(run_dir / MODEL_FILE, model)
    return run_dir


def save_best(run_dir: str | os.PathLike, model: Any) -> Path:
    """Write ``RUN/best.safetensors`` (the weights with the best validation loss so far)."""
    path = Path(run_dir) / BEST_FILE
    save_weights(path, model)
    return path


# =========================================================================== checkpoints: save
def _disk_full_message(path: Path, err: OSError) -> str:
    reason = err.strerror or (os.strerror(err.errno) if err.errno else str(err))
    return f"could not save checkpoint {path}: {reason}"


def _write_durably(path: Path, data: bytes) -> dict[str, Any]:
    """Write a new file and fsync it; return its manifest entry (size, sha256)."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Committed checkpoint directories ``(step, path)``, oldest first (temp leftovers excluded)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def clean_temp_leftovers(run_dir: str | os.PathLike) -> list[Path]:
    """Remove temp entries of saves that were killed half-way. Returns what was removed.

    Only one process trains into a run directory (rank 0 saves), so any ``checkpoints/.tmp-*``
    entry present before a save starts belongs to a save that died; so does a temp file of the
    run files this module writes atomically (``RUN/.tmp-model.safetensors.*`` and the like).
    """
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS_DIR
    candidates = list(root.iterdir()) if root.is_dir() else []
    ours = tuple(f"{TMP_PREFIX}{name}." for name in (MODEL_FILE, BEST_FILE, CONFIG_FILE, TOKENIZER_FILE))
    if run_dir.is_dir():
        candidates += [p for p in run_dir.iterdir() if p.name.startswith(ours)]
    removed = []
    for p in candidates:
        if p.name.startswith(TMP_PREFIX):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed


def save_checkpoint(
    run_dir: str | os.PathLike,
    *,
    step: int,
    model: Any,
    optimizer: Any,
    trainer_state: dict[str, Any],
    keep: int = 2,
    update_latest: bool = True,
) -> Path:
    """Commit a resumable checkpoint ``RUN/checkpoints/step-XXXXXXXX`` atomically; return its path.

    ``trainer_state`` is the loop's own state (counters, RNG states from
    :func:`scratchllm.train.state.capture_rng_state`, the sampler's ``state_dict()``, the loss-spike
    window, :func:`~scratchllm.train.state.env_fingerprint`, the train config...): JSON values,
    tensors and numpy arrays are all accepted. After the commit, the ``keep`` newest checkpoints are
    kept (older ones and any *newer* ones left from an abandoned timeline are removed) and, with
    ``update_latest``, ``RUN/model.safetensors`` is updated atomically.

    A failed write (disk full, I/O error) removes the temporary files, leaves every committed
    checkpoint untouched and raises a :class:`ScratchLLMError` naming the path and the reason.
    """
    from scratchllm import __version__ as version
    from scratchllm.train.state import to_jsonable

    if keep < 1:
        raise ScratchLLMError(f"keep must be >= 1 checkpoint (got {keep})")
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS_DIR
    final = root / step_dir_name(step)
    tmp = root / f"{TMP_PREFIX}{step_dir_name(step)}-{os.getpid()}"
    # Serialise first (pure CPU work, nothing on disk yet): a bug here cannot leave litter behind.
    model_bytes = weights_to_bytes(model, {"scratchllm_step": str(step)})
    files: dict[str, bytes] = {
        MODEL_FILE: model_bytes,
        OPTIMIZER_FILE: optimizer_to_bytes(optimizer, model) if optimizer is not None else b"",
        TRAINER_STATE_FILE: (
            json.dumps(
                {"format_version": FORMAT_VERSION, **to_jsonable(trainer_state), "step": step}, indent=1
            )
            + "\n"
        ).encode("utf-8"),
    }
    if optimizer is None:
        del files[OPTIMIZER_FILE]
    if (run_dir / CONFIG_FILE).is_file():  # makes the checkpoint loadable on its own
        files[CONFIG_FILE] = (run_dir / CONFIG_FILE).read_bytes()
    try:
        if not root.is_dir():
            root.mkdir(parents=True)
            fsync_dir(run_dir)
        clean_temp_leftovers(run_dir)
        tmp.mkdir()
        entries = {name: _write_durably(tmp / name, data) for name, data in files.items()}
        manifest = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "scratchllm_version": version,
            "files": entries,
        }
        _write_durably(tmp / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
        fsync_dir(tmp)
        if final.exists():
            # Only reachable after resuming from an older checkpoint (the newer one failed
            # validation or the user chose an older one): move the stale one aside first.
            stale = _retire(final)
            os.rename(tmp, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.rename(tmp, final)
        fsync_dir(root)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        prev = [p.name for s, p in list_checkpoints(run_dir) if s != step]
        kept = f"; the previous checkpoint {prev[-1]} is intact" if prev else ""
        raise ScratchLLMError(_disk_full_message(final, err) + kept) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(run_dir, step, keep)
    if update_latest:
        atomic_write_bytes(run_dir / MODEL_FILE, model_bytes)
    return final


def _retire(path: Path) -> Path:
    """Rename a checkpoint to a temp name before deleting it.

    The rename is atomic, so a kill during the (slow, file-by-file) deletion leaves a temp
    leftover that is ignored and cleaned later, never a half-deleted ``step-*`` directory.
    """
    retired = path.parent / f"{TMP_PREFIX}old-{path.name}-{os.getpid()}"
    os.rename(path, retired)
    return retired


def _prune(run_dir: Path, step: int, keep: int) -> None:
    """Remove old checkpoints beyond ``keep``, and newer ones from an abandoned timeline.

    Runs only after the new checkpoint is committed, so the newest valid checkpoint always
    exists. A checkpoint with a higher step than the one just saved can only come from before a
    resume to an older point; keeping it would make the next ``--resume`` jump to that other
    timeline.
    """
    ckpts = list_checkpoints(run_dir)
    doomed = [p for s, p in ckpts if s > step]
    older = [p for s, p in ckpts if s <= step]
    doomed += older[: max(0, len(older) - keep)]
    retired = []
    for p in doomed:
        with contextlib.suppress(OSError):
            retired.append(_retire(p))
    fsync_dir(run_dir / CHECKPOINTS_DIR)
    for p in retired:
        shutil.rmtree(p, ignore_errors=True)


# =========================================================================== checkpoints: find + load
def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Check a checkpoint directory against its manifest; return the manifest.

    Raises :class:`ScratchLLMError` saying which file failed and why: manifest missing or
    unreadable, a file missing, a size differing (truncated or grown), a SHA-256 mismatch
    (changed after it was saved).
    """
    path = Path(path)
    name = path.name
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ScratchLLMError(
            f"{name}: {MANIFEST} is missing (the save did not finish or the file was deleted)"
        )
    try:
        manifest = json.loads(mpath.read_bytes().decode("utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict) or not isinstance(manifest.get("step"), int):
            raise TypeError
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise ScratchLLMError(f"{name}: {MANIFEST} is unreadable or malformed") from None
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ScratchLLMError(
            f"{name}: checkpoint format {manifest.get('format_version')} is newer than this scratchllm "
            f"understands ({FORMAT_VERSION}); upgrade scratchllm"
        )
    m = _STEP_RE.match(name)
    if m and int(m.group(1)) != manifest["step"]:
        raise ScratchLLMError(f"{name}: {MANIFEST} is for step {manifest['step']} (copied from elsewhere?)")
    for required in (MODEL_FILE, TRAINER_STATE_FILE):
        if required not in files:
            raise ScratchLLMError(f"{name}: {MANIFEST} does not list {required}")
    for known in (OPTIMIZER_FILE, CONFIG_FILE):
        # A file the loaders read must be covered by the manifest, or it could be swapped unnoticed.
        if known not in files and (path / known).exists():
            raise ScratchLLMError(f"{name}: {known} is not listed in {MANIFEST}")
    for fname, entry in files.items():
        fpath = path / fname
        if "/" in fname or fname.startswith(".") or not isinstance(entry, dict):
            raise ScratchLLMError(f"{name}: {MANIFEST} has a malformed entry {fname!r}")
        if not fpath.is_file():
            raise ScratchLLMError(f"{name}: {fname} is missing")
        size = fpath.stat().st_size
        if size != entry.get("size"):
            raise ScratchLLMError(
                f"{name}: {fname} has {size} bytes, the manifest says {entry.get('size')} (truncated?)"
            )
        h = hashlib.sha256()
        with open(fpath, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        if h.hexdigest() != entry.get("sha256"):
            raise ScratchLLMError(f"{name}: {fname} sha256 mismatch (the file changed after it was saved)")
    return manifest


def find_resumable_checkpoint(run_dir: str | os.PathLike) -> tuple[Path | None, list[str]]:
    """The newest checkpoint whose manifest validates, and why each newer one was skipped.

    Returns ``(path, skipped)``; ``path`` is None when no checkpoint validates (``skipped`` then
    lists every failure, and is empty when there simply are none). Temp leftovers are ignored.
    """
    skipped: list[str] = []
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
        except ScratchLLMError as err:
            skipped.append(str(err))
            continue
        return path, skipped
    return None, skipped


def require_resumable_checkpoint(run_dir: str | os.PathLike) -> tuple[Path, list[str]]:
    """Like :func:`find_resumable_checkpoint` but raise when nothing can be resumed.

    ``--resume`` must never silently start from scratch: no checkpoint, or only corrupt ones,
    is an error that lists why each checkpoint failed.
    """
    run_dir = Path(run_dir)
    path, skipped = find_resumable_checkpoint(run_dir)
    if path is not None:
        return path, skipped
    if not skipped:
        raise ScratchLLMError(
            f"nothing to resume: {run_dir / CHECKPOINTS_DIR} holds no checkpoint; "
            "run without --resume to start a new run"
        )
    raise ScratchLLMError(
        f"cannot resume: every checkpoint in {run_dir / CHECKPOINTS_DIR} is damaged ("
        + "; ".join(skipped)
        + "); nothing was changed — restore a backup or start a new run in another directory"
    )


def load_checkpoint(
    path: str | os.PathLike, model: Any, optimizer: Any = None, *, verify: bool = True
) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model`` (and state into ``optimizer``); return the trainer state.

    The returned dict is what was passed to :func:`save_checkpoint` (tensors and arrays restored,
    tuples as lists) plus ``"step"``. ``verify`` re-checks the manifest first (skip it right after
    :func:`find_resumable_checkpoint` has just done so).
    """
    path = Path(path)
    if verify:
        verify_checkpoint(path)
    tensors, meta = read_safetensors(path / MODEL_FILE, f"{path.name}/{MODEL_FILE}")
    load_weights_into(model, tensors, meta, f"{path.name}/{MODEL_FILE}")
    if optimizer is not None:
        opt_path = path / OPTIMIZER_FILE
        if not opt_path.is_file():
            raise ScratchLLMError(f"{path.name}: {OPTIMIZER_FILE} is missing; cannot resume the optimizer")
        otensors, ometa = read_safetensors(opt_path, f"{path.name}/{OPTIMIZER_FILE}")
        load_optimizer_from(optimizer, otensors, ometa, f"{path.name}/{OPTIMIZER_FILE}")
    return read_trainer_state(path)


def read_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded ``trainer_state.json`` of a checkpoint directory."""
    from scratchllm.train.state import from_jsonable

    tpath = Path(path) / TRAINER_STATE_FILE
    try:
        state = json.loads(tpath.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ScratchLLMError(f"{Path(path).name}: {TRAINER_STATE_FILE} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ScratchLLMError(f"{Path(path).name}: {TRAINER_STATE_FILE} is not valid JSON") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ScratchLLMError(f"{Path(path).name}: {TRAINER_STATE_FILE} has no step")
    return from_jsonable(state)


def resume(
    run_dir: str | os.PathLike, model: Any, optimizer: Any = None
) -> tuple[dict[str, Any], Path, list[str]]:
    """``--resume`` in one call: find the newest valid checkpoint, load it, report what was skipped.

    Returns ``(trainer_state, checkpoint_path, skipped)``; raises when nothing can be resumed.
    """
    path, skipped = require_resumable_checkpoint(run_dir)
    return load_checkpoint(path, model, optimizer, verify=False), path, skipped


# =========================================================================== load_model
@dataclass
class LoadedModel:
    """What :func:`load_model` found: the model (eval mode), its tokenizer (or None), and where from."""

    model: Any
    tokenizer: Any
    arch: str
    config: dict[str, Any]  # the full config.json document
    source: str  # e.g. "run directory runs/demo", "checkpoint step 200 of runs/demo"


def _read_config(path: Path) -> dict[str, Any]:
    cfg = read_json(path, "model config")
    if not isinstance(cfg, dict):
        raise ScratchLLMError(f"{path} is not a scratchllm config (expected a JSON object)")
    if cfg.get("format_version", 0) > FORMAT_VERSION:
        raise ScratchLLMError(
            f"{path} was written by a newer scratchllm (format {cfg.get('format_version')}); upgrade"
        )
    if "architecture" not in cfg or not isinstance(cfg.get("model"), dict):
        raise ScratchLLMError(
            f"{path} has no 'architecture'/'model' entries; is it a scratchllm run's config.json?"
        )
    return cfg


def _is_hf_dir(path: Path) -> bool:
    try:
        cfg = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and "model_type" in cfg and "architecture" not in cfg


def _load_tokenizer_near(*dirs: Path) -> Any:
    from scratchllm.tokenizer import load_tokenizer

    for d in dirs:
        if (d / TOKENIZER_FILE).is_file():
            return load_tokenizer(d / TOKENIZER_FILE)
    return None


def _build_and_load(
    cfg: dict[str, Any], weights: Path, tokenizer: Any, device: str, source: str, what: str
) -> LoadedModel:
    from scratchllm.model import build_model, config_from_dict

    arch = cfg["architecture"]
    model_cfg = config_from_dict(arch, cfg["model"])
    check_vocab(tokenizer, model_cfg, what)
    tensors, meta = read_safetensors(weights, what)
    model = build_model(arch, model_cfg)
    load_weights_into(model, tensors, meta, what)
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, arch=arch, config=cfg, source=source)


def load_model(path: str | os.PathLike, device: str = "cpu") -> LoadedModel:
    """Load a model for inference from any of the places a model can live.

    * a run directory (``config.json`` + ``model.safetensors`` [+ ``tokenizer.json``]);
    * a checkpoint directory ``RUN/checkpoints/step-XXXXXXXX`` (verified against its manifest);
    * a ``.safetensors`` file with a ``config.json`` beside it (e.g. ``RUN/best.safetensors``);
    * a Hugging Face GPT-2 directory (``config.json`` with ``model_type``), via
      :func:`scratchllm.convert.hf_gpt2.load_hf_gpt2`.

    ``LoadedModel.source`` says which one was found.
    """
    path = Path(path)
    if not path.exists():
        raise ScratchLLMError(
            f"model not found: {path} (give a run directory, a checkpoint or a .safetensors file)"
        )
    if path.is_file() and path.name == MODEL_FILE and _is_hf_dir(path.parent):
        path = path.parent  # the weights file of a Hugging Face directory: load the directory
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ScratchLLMError(f"{path} is not a .safetensors file; give a run directory or a checkpoint")
        if not (path.parent / CONFIG_FILE).is_file():
            raise ScratchLLMError(f"{path}: no config.json beside it, so the architecture is unknown")
        cfg = _read_config(path.parent / CONFIG_FILE)
        tok = _load_tokenizer_near(path.parent)
        return _build_and_load(cfg, path, tok, device, f"weights file {path}", str(path))
    if (path / MANIFEST).is_file() or _STEP_RE.match(path.name):
        manifest = verify_checkpoint(path)
        # The run directory is two levels up only when the checkpoint still lives in one.
        in_run = path.parent.name == CHECKPOINTS_DIR
        run_dir = path.parent.parent if in_run else path.parent
        cfg_path = path / CONFIG_FILE
        if not cfg_path.is_file() and in_run:
            cfg_path = run_dir / CONFIG_FILE
        if not cfg_path.is_file():
            raise ScratchLLMError(f"checkpoint {path} has no config.json (nor does its run directory)")
        cfg = _read_config(cfg_path)
        tok = _load_tokenizer_near(path, run_dir) if in_run else _load_tokenizer_near(path)
        return _build_and_load(
            cfg,
            path / MODEL_FILE,
            tok,
            device,
            f"checkpoint step {manifest['step']} of {run_dir}",
            f"{path.name}/{MODEL_FILE}",
        )
    if not (path / CONFIG_FILE).is_file():
        raise ScratchLLMError(
            f"{path} has no config.json; expected a scratchllm run directory, a checkpoint or a "
            "Hugging Face GPT-2 directory"
        )
    if _is_hf_dir(path):
        try:
            from scratchllm.convert.hf_gpt2 import load_hf_gpt2
        except ImportError as err:
            raise ScratchLLMError(
                f"{path} is a Hugging Face directory but the converter is unavailable ({err})"
            ) from None
        return load_hf_gpt2(path, device)
    cfg = _read_config(path / CONFIG_FILE)
    if not (path / MODEL_FILE).is_file():
        raise ScratchLLMError(f"{path} has config.json but no {MODEL_FILE}; has training saved anything yet?")
    tok = _load_tokenizer_near(path)
    return _build_and_load(
        cfg, path / MODEL_FILE, tok, device, f"run directory {path}", f"{path}/{MODEL_FILE}"
    )


__all__ = [
    "LoadedModel",
    "check_safetensors_header",
    "check_vocab",
    "load_weights_into",
    "run_config",
    "unwrap",
    "find_resumable_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_model",
    "load_weights",
    "read_safetensors",
    "read_trainer_state",
    "require_resumable_checkpoint",
    "resume",
    "save_best",
    "save_checkpoint",
    "save_run_files",
    "save_weights",
    "verify_checkpoint",
]
