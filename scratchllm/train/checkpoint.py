"""Saving and resuming training state, so that no crash can lose more than one interval.

A checkpoint ``RUN/checkpoints/step-XXXXXXXX/`` holds the weights, the optimizer state and the
loop's own state (``trainer_state.json``: counters, every RNG, the data cursor). Saving it:

1. everything is serialised in memory first (a bug here cannot leave litter behind);
2. the files are written into ``checkpoints/.tmp-step-...``, each one fsynced;
3. ``manifest.json`` (the step, every file's size and SHA-256) is written and fsynced last;
4. the directory is renamed to ``step-XXXXXXXX`` — one atomic ``rename`` — and the parent
   directory fsynced so the rename itself is durable;
5. only then are old checkpoints pruned (the ``keep`` newest stay).

So a ``step-*`` directory either does not exist or is complete, and its manifest
(:func:`scratchllm.runs.verify_checkpoint`) lets :func:`find_resumable_checkpoint` detect anything
that went bad *after* the commit (a flipped bit, a truncated copy, a deleted file) and fall back to
the previous checkpoint. Temporary leftovers of a killed save are ignored and cleaned at the next
save. Optimizer moments go to safetensors like the weights; everything else is JSON: nothing is
ever pickled.

The loop talks to this module through a few functions: :func:`save_checkpoint` every
``save_interval`` steps and :func:`resume` for ``--resume``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from scratchllm.device import unwrap
from scratchllm.errors import ScratchLLMError
from scratchllm.io import TMP_PREFIX, fsync_dir
from scratchllm.runs import (
    BEST_FILE,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    MANIFEST,
    MODEL_FILE,
    OPTIMIZER_FILE,
    TOKENIZER_FILE,
    TRAINER_STATE_FILE,
    list_checkpoints,
    record_run_file,
    step_dir_name,
    verify_checkpoint,
)
from scratchllm.weights import (
    FORMAT_VERSION,
    load_weights_into,
    read_safetensors,
    weights_tensors,
    write_safetensors,
)


def _param_names(model: Any, optimizer: Any) -> list[str]:
    """The name of every optimizer parameter index (in ``state_dict`` order), for error messages."""
    by_id = {id(p): n for n, p in unwrap(model).named_parameters()} if model is not None else {}
    names = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            names.append(by_id.get(id(p), f"param{len(names)}"))
    return names


def optimizer_tensors(optimizer: Any, model: Any = None) -> tuple[dict[str, Any], dict[str, str]]:
    """AdamW's (or any torch optimizer's) state as safetensors tensors + metadata: moment tensors
    named ``state.{param_index}.{name}``, everything else (step counts, hyper-parameters, the
    parameter names) as JSON in the metadata. The tensors are the optimizer's own (no copies)."""
    import torch

    from scratchllm.train.state import to_jsonable

    sd = optimizer.state_dict()
    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in sd["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    info = {
        "format_version": FORMAT_VERSION,
        "optimizer": type(optimizer).__name__,
        "param_names": _param_names(model, optimizer),
        "param_groups": to_jsonable(sd["param_groups"]),
        "scalars": to_jsonable(scalars),
    }
    return tensors, {"format": "pt", "scratchllm_optimizer": json.dumps(info)}


def load_optimizer_from(optimizer: Any, tensors: dict[str, Any], metadata: dict[str, str], what: str) -> None:
    """Inverse of :func:`optimizer_tensors`, checking that groups and shapes match this optimizer."""
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


# =========================================================================== checkpoints: save
def _disk_full_message(path: Path, err: OSError) -> str:
    reason = err.strerror or (os.strerror(err.errno) if err.errno else str(err))
    return f"could not save checkpoint {path}: {reason}"


def _write_durably(path: Path, data: bytes | tuple[dict[str, Any], dict[str, str]]) -> dict[str, Any]:
    """Write a new file and fsync it; return its manifest entry (size, sha256).

    ``data`` is bytes, or ``(tensors, metadata)`` streamed as safetensors tensor by tensor, so a
    save never holds a second copy of the weights and optimizer moments in memory.
    """
    with open(path, "xb") as f:
        if isinstance(data, bytes):
            f.write(data)
            size, sha = len(data), hashlib.sha256(data).hexdigest()
        else:
            size, sha = write_safetensors(f, *data)
        f.flush()
        os.fsync(f.fileno())
    return {"size": size, "sha256": sha}


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
    only: set[str] | None = None,
) -> Path:
    """Commit a resumable checkpoint ``RUN/checkpoints/step-XXXXXXXX`` atomically; return its path.

    ``trainer_state`` is the loop's own state (counters, RNG states from
    :func:`scratchllm.train.state.capture_rng_state`, the sampler's ``state_dict()``, the loss-spike
    window, :func:`~scratchllm.train.state.env_fingerprint`, the train config...): JSON values,
    tensors and numpy arrays are all accepted. After the commit, the ``keep`` newest checkpoints are
    kept (older ones and any *newer* ones left from an abandoned timeline are removed) and, with
    ``update_latest``, ``RUN/model.safetensors`` is updated atomically. ``only`` stores just those
    parameters (a fine-tune kept on top of its base model, see :func:`scratchllm.runs.attach_base`).

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
    # Gather first (references, no copies; nothing on disk yet): a bug here cannot leave litter.
    files: dict[str, Any] = {
        MODEL_FILE: weights_tensors(model, only=only, metadata={"scratchllm_step": str(step)}),
        TRAINER_STATE_FILE: (
            json.dumps(
                {"format_version": FORMAT_VERSION, **to_jsonable(trainer_state), "step": step}, indent=1
            )
            + "\n"
        ).encode("utf-8"),
    }
    if optimizer is not None:
        files[OPTIMIZER_FILE] = optimizer_tensors(optimizer, model)
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
        _publish(final / MODEL_FILE, run_dir / MODEL_FILE, entries[MODEL_FILE]["sha256"])
    return final


def _publish(src: Path, dst: Path, sha256: str) -> None:
    """Make the checkpoint's weights the run's ``model.safetensors``: a hard link (no copy, no
    extra disk), or a streamed copy where links are not possible; listed in the run manifest
    before it appears, then renamed into place atomically."""
    tmp = dst.parent / f"{TMP_PREFIX}{dst.name}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    record_run_file(dst.parent, dst.name, sha256)
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


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
