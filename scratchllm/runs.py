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
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any

from scratchllm.architectures import build_model, config_from_dict
from scratchllm.config import to_dict
from scratchllm.errors import ScratchLLMError
from scratchllm.io import atomic_write_json, read_json
from scratchllm.weights import FORMAT_VERSION, load_weights_into, read_safetensors, save_weights

CHECKPOINTS_DIR = "checkpoints"
STEP_PREFIX = "step-"
MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"

STEP_RE = re.compile(r"^step-(\d{8,})$")


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
            return load_tokenizer(d / TOKENIZER_FILE)
    return None


def _build_and_load(
    cfg: dict[str, Any], weights: Path, tokenizer: Any, device: str, source: str, what: str
) -> LoadedModel:
    arch = cfg["architecture"]
    model_cfg = config_from_dict(arch, cfg["model"])
    check_vocab(tokenizer, model_cfg, what)
    tensors, meta = read_safetensors(weights, what)
    model = build_model(arch, model_cfg)
    load_weights_into(model, tensors, meta, what)
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, arch=arch, config=cfg, source=source)


def load_run(path: str | os.PathLike, device: str = "cpu") -> LoadedModel:
    """Load a model for inference from what scratchllm writes (eval mode, on ``device``):

    * a run directory (``config.json`` + ``model.safetensors`` [+ ``tokenizer.json``]);
    * a checkpoint directory ``RUN/checkpoints/step-XXXXXXXX`` (verified against its manifest);
    * a ``.safetensors`` file with a ``config.json`` beside it (e.g. ``RUN/best.safetensors``).

    ``LoadedModel.source`` says which one was found. :func:`scratchllm.load.load_model` also
    accepts Hugging Face directories.
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
        tok = _load_tokenizer_near(path.parent)
        return _build_and_load(cfg, path, tok, device, f"weights file {path}", str(path))
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
    cfg = _read_config(path / CONFIG_FILE)
    if not (path / MODEL_FILE).is_file():
        raise ScratchLLMError(f"{path} has config.json but no {MODEL_FILE}; has training saved anything yet?")
    tok = _load_tokenizer_near(path)
    return _build_and_load(
        cfg, path / MODEL_FILE, tok, device, f"run directory {path}", f"{path}/{MODEL_FILE}"
    )
