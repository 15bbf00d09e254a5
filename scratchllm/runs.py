"""The run directory: what ``train`` writes, what every other command reads.

::

    RUN/
      config.json                  architecture + model config + train config (+ extras)
      model.safetensors            latest weights
      best.safetensors             best validation weights
      tokenizer.json
      checkpoints/step-00000200/   model.safetensors, optimizer.safetensors,
                                   trainer_state.json, config.json, manifest.json (written last)

This module owns that layout: the file names, ``config.json`` (:func:`run_config`,
:func:`save_run_files`), the checkpoint manifests (:func:`verify_checkpoint`), and loading a model
back from a run directory, a checkpoint directory or a weights file (:func:`load_run`, which
returns a :class:`LoadedModel`). Writing checkpoints and resuming training is
:mod:`scratchllm.train.checkpoint`; loading *any* model path (Hugging Face directories too) is
:func:`scratchllm.load.load_model`.

**Why a checkpoint is a directory with a manifest.** A checkpoint is several files and a kill can
strike between any two writes. ``manifest.json`` (the step, every file's size and SHA-256) is
written last, and the directory is renamed into place in one atomic step, so a ``step-*`` directory
is either complete or absent — and the manifest catches anything that went bad after the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any

from scratchllm.architectures import build_model, config_from_dict
from scratchllm.config import to_dict
from scratchllm.errors import ScratchLLMError
from scratchllm.io import atomic_open, atomic_write_json, read_json
from scratchllm.weights import (
    FORMAT_VERSION,
    ShardedTensors,
    is_partial,
    load_weights_into,
    read_safetensors,
)

CHECKPOINTS_DIR = "checkpoints"
STEP_PREFIX = "step-"
MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
#: A sharded (FSDP) checkpoint: where each tensor's rows are (a :class:`~scratchllm.weights.ShardedTensors`
#: index for the model and one for the optimizer), instead of one model/optimizer file.
SHARDING_FILE = "sharding.json"

STEP_RE = re.compile(r"^step-(\d{8,})$")


def shard_file_name(kind: str, rank: int, world_size: int) -> str:
    """``model-shard-00001-of-00008.safetensors``: rank 1's slice of a sharded checkpoint's ``kind``
    (``model`` or ``optimizer``)."""
    return f"{kind}-shard-{rank:05d}-of-{world_size:05d}.safetensors"


def step_dir_name(step: int) -> str:
    """``step-00000200``: zero-padded so that names sort in step order."""
    return f"{STEP_PREFIX}{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Committed checkpoint directories ``(step, path)``, oldest first (temp leftovers excluded)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete events of a ``metrics.jsonl`` file (a torn or malformed line is skipped; a
    missing file has none). Training writes it (:mod:`scratchllm.train.metrics`); anything that
    only looks at a run (the playground, sweeps) reads it here, without importing training code."""
    events = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            events.append(obj)
    return events


# =========================================================================== config.json and run files
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
    only: set[str] | None = None,
) -> Path:
    """Write ``config.json``, ``tokenizer.json`` and (if ``model`` is given) ``model.safetensors``
    (only the parameters named in ``only``, for a run stored on top of its base model).

    Called once when a run starts (and by fine-tuning/conversion to produce a loadable run
    directory). Each file is written atomically and recorded in the run manifest; ``extra`` adds
    top-level keys to config.json (e.g. a fine-tuning head description).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_vocab(tokenizer, model_config)
    if tokenizer is not None:
        _write_recorded(run_dir, TOKENIZER_FILE, tokenizer.save)
    doc = run_config(arch=arch, model_config=model_config, train_config=train_config, extra=extra)
    _write_recorded(run_dir, CONFIG_FILE, lambda path: atomic_write_json(path, doc))
    if model is not None:
        save_run_weights(run_dir, MODEL_FILE, model, only=only)
    return run_dir


def save_best(run_dir: str | os.PathLike, model: Any, *, only: set[str] | None = None) -> Path:
    """Write ``RUN/best.safetensors`` (the weights with the best validation loss so far)."""
    return save_run_weights(Path(run_dir), BEST_FILE, model, only=only)


def save_run_weights(
    run_dir: Path,
    name: str,
    model: Any,
    *,
    only: set[str] | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write one of the run's top-level weights files, listed in the run manifest before it appears."""
    from scratchllm.weights import weights_tensors

    tensors, meta = weights_tensors(model, only=only, metadata=metadata)
    return save_run_tensors(run_dir, name, tensors, meta)


def save_run_tensors(run_dir: Path, name: str, tensors: dict[str, Any], meta: dict[str, str]) -> Path:
    """Stream ``tensors`` (tensors or :class:`~scratchllm.weights.LazyTensor` s) into the run's
    weights file ``name``: a temp file, its hash listed in the run manifest, then renamed into place."""
    from scratchllm.weights import write_safetensors

    path = run_dir / name
    written: list[str] = []

    def record() -> None:
        record_run_file(run_dir, name, written[0])

    with atomic_open(path, "wb", before_replace=record) as f:
        written.append(write_safetensors(f, tensors, meta)[1])
    return path


# =========================================================================== the run manifest
RUN_MANIFEST = "run_manifest.json"


def _write_recorded(run_dir: Path, name: str, write: Any) -> None:
    """``write(path)`` a run file under a temp name, list its hash, then rename it into place."""
    from scratchllm.io import TMP_PREFIX, fsync_dir, sha256_file

    tmp = run_dir / f"{TMP_PREFIX}{name}.{os.getpid()}"
    try:
        write(tmp)
        record_run_file(run_dir, name, sha256_file(tmp))
        os.replace(tmp, run_dir / name)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(run_dir)


def record_run_file(run_dir: str | os.PathLike, name: str, sha256: str) -> None:
    """List ``name``'s new SHA-256 in ``RUN/run_manifest.json``, keeping the one it replaces.

    Called *before* the new file is renamed into place: a crash in between leaves a file whose hash
    is the previous one, which :func:`verify_run_file` accepts — so a manifest never calls a good
    file damaged, and a flipped bit, a truncation or a swapped file is always caught.
    """
    path = Path(run_dir) / RUN_MANIFEST
    doc = _read_run_manifest(path) or {"format_version": FORMAT_VERSION, "files": {}}
    entry = doc["files"].get(name, {})
    if entry.get("sha256") != sha256:
        doc["files"][name] = {"sha256": sha256, "previous_sha256": entry.get("sha256")}
        atomic_write_json(path, doc)


def _read_run_manifest(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ScratchLLMError(
            f"{path} is damaged (not valid JSON); delete it to skip the integrity check"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        raise ScratchLLMError(f"{path} is damaged (no file list); delete it to skip the integrity check")
    return doc


def verify_run_file(run_dir: str | os.PathLike, name: str) -> None:
    """Check ``RUN/name`` against the run manifest (runs written before manifests existed pass)."""
    from scratchllm.io import sha256_file

    run_dir = Path(run_dir)
    doc = _read_run_manifest(run_dir / RUN_MANIFEST)
    entry = (doc or {"files": {}})["files"].get(name)
    if entry is None or not (run_dir / name).is_file():
        return
    actual = sha256_file(run_dir / name)
    if actual not in (entry.get("sha256"), entry.get("previous_sha256")):
        raise ScratchLLMError(
            f"{run_dir / name} does not match the run manifest (sha256 {actual[:12]}, recorded "
            f"{str(entry.get('sha256'))[:12]}): the file changed after it was saved (damaged or "
            "replaced); restore it, or load a checkpoint from checkpoints/"
        )


# =========================================================================== checkpoint manifests
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
    m = STEP_RE.match(name)
    if m and int(m.group(1)) != manifest["step"]:
        raise ScratchLLMError(f"{name}: {MANIFEST} is for step {manifest['step']} (copied from elsewhere?)")
    weights = SHARDING_FILE if SHARDING_FILE in files else MODEL_FILE
    for required in (weights, TRAINER_STATE_FILE):
        if required not in files:
            raise ScratchLLMError(f"{name}: {MANIFEST} does not list {required}")
    for known in (OPTIMIZER_FILE, CONFIG_FILE, SHARDING_FILE, MODEL_FILE):
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
    if weights == SHARDING_FILE:
        for kind in ("model", "optimizer"):
            if kind in _sharding(path):
                for fname in checkpoint_tensors(path, kind).files():
                    if fname not in files:
                        raise ScratchLLMError(f"{name}: shard {fname} is not listed in {MANIFEST}")
    return manifest


def find_valid_checkpoint(run_dir: str | os.PathLike) -> tuple[Path | None, list[str]]:
    """The newest checkpoint of ``run_dir`` whose manifest validates, and why each newer one was
    skipped. Returns ``(path, skipped)``; ``path`` is None when none validates (``skipped`` then
    lists every failure, and is empty when there simply are none). Temp leftovers are ignored."""
    skipped: list[str] = []
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
        except ScratchLLMError as err:
            skipped.append(str(err))
            continue
        return path, skipped
    return None, skipped


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """True for a checkpoint written by several FSDP processes (one slice of every tensor each)."""
    return (Path(path) / SHARDING_FILE).is_file()


def _sharding(path: Path) -> dict[str, Any]:
    doc = read_json(path / SHARDING_FILE, f"{path.name}/{SHARDING_FILE}")
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise ScratchLLMError(f"{path.name}: {SHARDING_FILE} is malformed (no model index)")
    return doc


def checkpoint_tensors(path: str | os.PathLike, kind: str = "model") -> ShardedTensors:
    """A checkpoint's weights (``kind="model"``) or optimizer state (``"optimizer"``) as a
    :class:`~scratchllm.weights.ShardedTensors` reader, whether the checkpoint is sharded (FSDP:
    its ``sharding.json`` says which file holds which rows) or holds one ordinary file."""
    path = Path(path)
    what = f"{path.name}/{kind}"
    if is_sharded_checkpoint(path):
        index = _sharding(path).get(kind)
        if index is None:
            raise ScratchLLMError(f"{path.name}: {SHARDING_FILE} has no {kind} index")
        return ShardedTensors(path, index, what)
    fname = MODEL_FILE if kind == "model" else OPTIMIZER_FILE
    if not (path / fname).is_file():
        raise ScratchLLMError(f"{path.name}: {fname} is missing")
    return ShardedTensors.from_file(path / fname, f"{path.name}/{fname}")


def read_weights(path: Path, what: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors and metadata of a weights file, or of a checkpoint directory's weights (a sharded
    checkpoint is consolidated in memory)."""
    if path.is_dir():
        src = checkpoint_tensors(path, "model")
        return src.full_state(), src.metadata
    return read_safetensors(path, what)


# =========================================================================== loading
@dataclass
class LoadedModel:
    """What :func:`load_run` (or :func:`scratchllm.load.load_model`) found: the model (eval mode),
    its tokenizer (or None), and where it came from."""

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


def _load_tokenizer_near(*dirs: Path) -> Any:
    from scratchllm.tokenizer import load_tokenizer

    for d in dirs:
        if (d / TOKENIZER_FILE).is_file():
            verify_run_file(d, TOKENIZER_FILE)
            return load_tokenizer(d / TOKENIZER_FILE)
    return None


#: ``base_loader(path) -> LoadedModel``: how a run stored on top of a base model gets its base
#: (``scratchllm.load.load_model`` passes a loader that also reads Hugging Face directories).
BaseLoader = Any


def find_base(recorded: dict[str, Any], run_dir: Path) -> Path:
    """Where the base model of a fine-tuned run is now: the absolute path recorded at training
    time, else the path as the user typed it — relative to the current directory, then to the run
    directory and its parent."""
    typed = recorded.get("base_model")
    candidates = [recorded.get("base_model_path"), typed]
    if typed:
        candidates += [run_dir / typed, run_dir.parent / typed]
    for c in candidates:
        if c and Path(c).exists():
            return Path(c)
    raise ScratchLLMError(
        f"the base model of {run_dir} ({typed!r}) is not where it was when the run trained; this run "
        "stores only what fine-tuning changed, so it needs its base: put the base back, or merge it "
        f"into a standalone model with 'scratchllm lora merge --model {run_dir} --base PATH --out DIR'"
    )


def attach_base(model: Any, cfg: dict[str, Any], run_dir: Path, base_loader: BaseLoader, what: str) -> None:
    """Fill ``model`` with its base model's weights (a run stored on top of its base), checking
    the base is the one the run was fine-tuned from (its fingerprint)."""
    from scratchllm.model.lora import base_fingerprint

    info = cfg.get("finetune") or {}
    if base_loader is None:
        raise ScratchLLMError(
            f"{what} holds only fine-tuned parameters; load it with scratchllm.load.load_model"
        )
    from scratchllm.weights import state_sha256

    base = base_loader(find_base(info, run_dir)).model
    exclude = tuple(info.get("fingerprint_exclude") or ())
    if (
        info.get("base_fingerprint") and base_fingerprint(base, exclude=exclude) != info["base_fingerprint"]
    ) or (info.get("base_sha256") and state_sha256(base, exclude=exclude) != info["base_sha256"]):
        raise ScratchLLMError(
            f"the base model at {find_base(info, run_dir)} is not the one {run_dir} was fine-tuned from "
            "(its weights differ); pass the original base"
        )
    own = model.state_dict()
    state = {k: v for k, v in base.state_dict().items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(state, strict=False)


def _warn_non_finite(model: Any, what: str) -> None:
    import torch

    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        from scratchllm.errors import ScratchLLMWarning

        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        warnings.warn(
            f"{what} has non-finite weights (NaN or inf) in {bad[0]}{more}: its outputs will be garbage",
            ScratchLLMWarning,
            stacklevel=3,
        )


def _build_and_load(
    cfg: dict[str, Any],
    weights: Path,
    tokenizer: Any,
    device: str,
    source: str,
    what: str,
    *,
    run_dir: Path,
    base_loader: BaseLoader = None,
) -> LoadedModel:
    arch = cfg["architecture"]
    model_cfg = config_from_dict(arch, cfg["model"])
    check_vocab(tokenizer, model_cfg, what)
    tensors, meta = read_weights(weights, what)
    model = build_model(arch, model_cfg)
    if is_partial(meta):
        attach_base(model, cfg, run_dir, base_loader, what)
    load_weights_into(model, tensors, meta, what)
    _warn_non_finite(model, what)
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, arch=arch, config=cfg, source=source)


def load_run(path: str | os.PathLike, device: str = "cpu", *, base_loader: BaseLoader = None) -> LoadedModel:
    """Load a model for inference from what scratchllm writes (eval mode, on ``device``):

    * a run directory (``config.json`` + ``model.safetensors`` [+ ``tokenizer.json``]);
    * a checkpoint directory ``RUN/checkpoints/step-XXXXXXXX`` (verified against its manifest);
    * a ``.safetensors`` file with a ``config.json`` beside it (e.g. ``RUN/best.safetensors``).

    Top-level run files are checked against ``RUN/run_manifest.json``; non-finite weights are a
    warning. A fine-tune stored on top of its base model gets the base through ``base_loader``.
    ``LoadedModel.source`` says which kind of input was found. :func:`scratchllm.load.load_model`
    also accepts Hugging Face directories.
    """
    path = Path(path)
    if not path.exists():
        raise ScratchLLMError(
            f"model not found: {path} (give a run directory, a checkpoint or a .safetensors file)"
        )
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ScratchLLMError(f"{path} is not a .safetensors file; give a run directory or a checkpoint")
        if not (path.parent / CONFIG_FILE).is_file():
            raise ScratchLLMError(f"{path}: no config.json beside it, so the architecture is unknown")
        cfg = _read_config(path.parent / CONFIG_FILE)
        verify_run_file(path.parent, path.name)
        tok = _load_tokenizer_near(path.parent)
        return _build_and_load(
            cfg,
            path,
            tok,
            device,
            f"weights file {path}",
            str(path),
            run_dir=path.parent,
            base_loader=base_loader,
        )
    if (path / MANIFEST).is_file() or STEP_RE.match(path.name):
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
            path if is_sharded_checkpoint(path) else path / MODEL_FILE,
            tok,
            device,
            f"checkpoint step {manifest['step']} of {run_dir}",
            f"{path.name}/{MODEL_FILE}",
            run_dir=run_dir,
            base_loader=base_loader,
        )
    if not (path / CONFIG_FILE).is_file():
        raise ScratchLLMError(
            f"{path} has no config.json; expected a scratchllm run directory, a checkpoint or a "
            "Hugging Face GPT-2 directory"
        )
    verify_run_file(path, CONFIG_FILE)
    cfg = _read_config(path / CONFIG_FILE)
    if not (path / MODEL_FILE).is_file():
        raise ScratchLLMError(f"{path} has config.json but no {MODEL_FILE}; has training saved anything yet?")
    verify_run_file(path, MODEL_FILE)
    tok = _load_tokenizer_near(path)
    return _build_and_load(
        cfg,
        path / MODEL_FILE,
        tok,
        device,
        f"run directory {path}",
        f"{path}/{MODEL_FILE}",
        run_dir=path,
        base_loader=base_loader,
    )


def consolidate_checkpoint(source: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Write a checkpoint — sharded by FSDP or not — as an ordinary run directory ``out``
    (``config.json``, ``tokenizer.json``, one ``model.safetensors``) that every command loads.

    ``source`` is a checkpoint directory, or a run directory (its newest valid checkpoint). The
    weights are streamed one tensor at a time from the shards (each assembled from every rank's
    rows), so consolidating needs the memory of the largest tensor, not of the model. ``out``
    must be empty or absent (the caller checks ``--force``). Returns what was written.
    """
    from scratchllm.io import atomic_write_json

    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise ScratchLLMError(f"{source} is not a directory; give a checkpoint or a run directory")
    if (source / MANIFEST).is_file() or STEP_RE.match(source.name):
        ckpt = source
        verify_checkpoint(ckpt)
    else:
        ckpt, skipped = find_valid_checkpoint(source)
        if ckpt is None:
            why = f" ({'; '.join(skipped)})" if skipped else ""
            raise ScratchLLMError(f"{source} holds no valid checkpoint{why}; give a checkpoint directory")
    in_run = ckpt.parent.name == CHECKPOINTS_DIR
    run_dir = ckpt.parent.parent if in_run else ckpt.parent
    cfg_path = ckpt / CONFIG_FILE if (ckpt / CONFIG_FILE).is_file() else run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise ScratchLLMError(f"checkpoint {ckpt} has no config.json (nor does its run directory)")
    doc = _read_config(cfg_path)
    step = int(read_json(ckpt / MANIFEST, f"{ckpt.name}/{MANIFEST}")["step"])
    doc["consolidated_from"] = {"checkpoint": str(ckpt.resolve()), "step": step}
    src = checkpoint_tensors(ckpt, "model")
    out.mkdir(parents=True, exist_ok=True)
    _write_recorded(out, CONFIG_FILE, lambda path: atomic_write_json(path, doc))
    tok = next((d / TOKENIZER_FILE for d in (ckpt, run_dir) if (d / TOKENIZER_FILE).is_file()), None)
    if tok is not None:
        verify_run_file(tok.parent, TOKENIZER_FILE)
        data = tok.read_bytes()
        _write_recorded(out, TOKENIZER_FILE, lambda path: Path(path).write_bytes(data))
    save_run_tensors(out, MODEL_FILE, src.lazy(), src.metadata)
    return {
        "checkpoint": str(ckpt),
        "step": step,
        "sharded": is_sharded_checkpoint(ckpt),
        "shards": len(src.files()),
        "tensors": len(src.names()),
        "out": str(out),
        "files": sorted(p.name for p in out.iterdir() if p.is_file()),
    }


# =========================================================================== who may write a run
LOCK_FILE = ".lock"
#: What a run writes into its directory. On ``--force`` these belong to the old run and go with it;
#: anything else in the directory (the demo's data/, a user's notes) is kept.
RUN_ARTEFACTS = frozenset(
    {
        CONFIG_FILE,
        TOKENIZER_FILE,
        MODEL_FILE,
        BEST_FILE,
        CHECKPOINTS_DIR,
        "metrics.jsonl",
        "loss.png",
        "adapter",
        "test_metrics.json",
        "test_responses.json",
        "run_manifest.json",
        LOCK_FILE,
    }
)


class RunLock:
    """An exclusive lock on a run directory, held by the one process that trains into it.

    ``flock`` on ``RUN/.lock``: the kernel releases it when the process ends, however it ends, so a
    killed trainer never leaves a stale lock behind; the file holds the owner's PID for the message.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise ScratchLLMError(
                f"{self.path.parent} is in use by another training process (PID {owner}); wait for it "
                "to finish, stop it, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _is_locked(run_dir: Path) -> bool:
    """True while some process holds ``run_dir``'s lock."""
    lock = RunLock(run_dir)
    if not lock.path.exists():
        return False
    try:
        lock.acquire()
    except ScratchLLMError:
        return True
    lock.release()
    return False


def holds_a_run(run_dir: str | os.PathLike) -> bool:
    """True when ``run_dir`` has any entry besides the lock and temp leftovers."""
    path = Path(run_dir)
    return path.is_dir() and any(
        p.name != LOCK_FILE and not p.name.startswith(".tmp-") for p in path.iterdir()
    )


class Restart:
    """``--force`` on a directory that holds a run: the new run trains in a hidden sibling
    (``.RUN.tmp-new-PID``) and takes the old one's place only when it commits its first checkpoint.

    Until then the old run is untouched — a retrain that diverges, fails or is killed early loses
    nothing. :meth:`promote` swaps the two directories with renames (the old one is set aside, then
    deleted) and carries over whatever in the old directory was not a run artefact.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.final = Path(run_dir)
        self.staging = self.final.parent / f".{self.final.name}.tmp-new-{os.getpid()}"
        self.done = False

    def begin(self) -> Path:
        clean_stale_restarts(self.final)
        self.staging.mkdir()
        return self.staging

    def promote(self) -> None:
        from scratchllm.io import fsync_dir

        old = self.final.parent / f".{self.final.name}.tmp-old-{os.getpid()}"
        os.rename(self.final, old)
        os.rename(self.staging, self.final)
        fsync_dir(self.final.parent)
        self.done = True
        _carry_over(old, self.final)

    def abandon(self) -> None:
        """The new run stopped before its first checkpoint: drop it, the old run stays."""
        if not self.done:
            import shutil

            shutil.rmtree(self.staging, ignore_errors=True)


def _carry_over(old: Path, final: Path) -> None:
    """Move the non-run entries of a replaced run directory into its successor, then delete it."""
    import shutil

    for entry in old.iterdir():
        if entry.name not in RUN_ARTEFACTS and not entry.name.startswith(".tmp-"):
            target = final / entry.name
            if not target.exists():
                os.rename(entry, target)
    shutil.rmtree(old, ignore_errors=True)


def clean_stale_restarts(run_dir: str | os.PathLike) -> None:
    """Tidy up after a ``--force`` restart that was killed: an unlocked ``.RUN.tmp-new-*`` never
    committed (the old run is intact: delete it); an unlocked ``.RUN.tmp-old-*`` was already
    replaced (finish carrying its non-run entries over, then delete it)."""
    import shutil

    final = Path(run_dir)
    if not final.parent.is_dir():
        return
    for p in final.parent.glob(f".{final.name}.tmp-new-*"):
        if p.is_dir() and not _is_locked(p):
            shutil.rmtree(p, ignore_errors=True)
    for p in final.parent.glob(f".{final.name}.tmp-old-*"):
        if p.is_dir() and not _is_locked(p) and final.is_dir():
            _carry_over(p, final)
