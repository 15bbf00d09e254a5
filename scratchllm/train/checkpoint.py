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
from typing import Any, NoReturn

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
    SHARDING_FILE,
    TOKENIZER_FILE,
    TRAINER_STATE_FILE,
    checkpoint_tensors,
    find_valid_checkpoint,
    is_sharded_checkpoint,
    list_checkpoints,
    record_run_file,
    save_run_tensors,
    shard_file_name,
    step_dir_name,
    verify_checkpoint,
)
from scratchllm.train.distributed import (
    DistEnv,
    is_sharded,
    like_shard,
    local_tensor,
    reshard,
    shard_rows,
)
from scratchllm.weights import (
    FORMAT_VERSION,
    ShardedTensors,
    index_entry,
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
    ours += (f"{TMP_PREFIX}shards-",)  # the rows of an FSDP model's best.safetensors, before consolidation
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
    env: DistEnv | None = None,
) -> Path:
    """Commit a resumable checkpoint ``RUN/checkpoints/step-XXXXXXXX`` atomically; return its path.

    ``trainer_state`` is the loop's own state (counters, RNG states from
    :func:`scratchllm.train.state.capture_rng_state`, the sampler's ``state_dict()``, the loss-spike
    window, :func:`~scratchllm.train.state.env_fingerprint`, the train config...): JSON values,
    tensors and numpy arrays are all accepted. After the commit, the ``keep`` newest checkpoints are
    kept (older ones and any *newer* ones left from an abandoned timeline are removed) and, with
    ``update_latest``, ``RUN/model.safetensors`` is updated atomically. ``only`` stores just those
    parameters (a fine-tune kept on top of its base model, see :func:`scratchllm.runs.attach_base`).

    **Sharded (FSDP).** With ``env`` and a model whose parameters are sharded across its
    processes, *every* rank calls this and writes only what it holds: its rows of every weight
    (``model-shard-RRRRR-of-KKKKK.safetensors``) and of every optimizer moment
    (``optimizer-shard-...``). Nothing is gathered on one rank. Rank 0 creates the temp directory,
    waits until every rank has written and fsynced its files, writes ``trainer_state.json`` and
    ``sharding.json`` (which rows of which tensor each file holds), then the manifest (every
    rank's files) — last, as always — and renames the directory into place. Its
    ``RUN/model.safetensors`` is then an ordinary, consolidated file, streamed from the shards
    one tensor at a time. The directory must be on a filesystem every process sees.

    A failed write (disk full, I/O error) on any rank removes the temporary files, leaves every
    committed checkpoint untouched and raises a :class:`ScratchLLMError` naming the path and the
    reason (on every rank).
    """
    from scratchllm import __version__ as version
    from scratchllm.train.state import to_jsonable

    if keep < 1:
        raise ScratchLLMError(f"keep must be >= 1 checkpoint (got {keep})")
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    sharded = env is not None and env.enabled and is_sharded(model)
    env = env if sharded and env is not None else DistEnv()
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS_DIR
    final = Path(env.from_main(str(root / step_dir_name(step))))
    tmp = Path(env.from_main(str(root / f"{TMP_PREFIX}{step_dir_name(step)}-{os.getpid()}")))
    # Gather first (references, no copies; nothing on disk yet): a bug here cannot leave litter.
    metadata = {"scratchllm_step": str(step)}
    if sharded:
        files, layout, whole = _shard_files(model, optimizer, env, only=only, metadata=metadata)
    else:
        files = {MODEL_FILE: weights_tensors(model, only=only, metadata=metadata)}
        if optimizer is not None:
            files[OPTIMIZER_FILE] = optimizer_tensors(optimizer, model)
    if env.is_main:
        files[TRAINER_STATE_FILE] = (
            json.dumps(
                {"format_version": FORMAT_VERSION, **to_jsonable(trainer_state), "step": step}, indent=1
            )
            + "\n"
        ).encode("utf-8")
        if (run_dir / CONFIG_FILE).is_file():  # makes the checkpoint loadable on its own
            files[CONFIG_FILE] = (run_dir / CONFIG_FILE).read_bytes()

    def failed(err: OSError) -> ScratchLLMError:
        prev = [p.name for s, p in list_checkpoints(final.parent.parent) if s != step] if env.is_main else []
        kept = f"; the previous checkpoint {prev[-1]} is intact" if prev else ""
        return ScratchLLMError(_disk_full_message(final, err) + kept)

    def begin() -> None:  # rank 0
        try:
            if not root.is_dir():
                root.mkdir(parents=True)
                fsync_dir(run_dir)
            clean_temp_leftovers(run_dir)
            tmp.mkdir()
        except OSError as err:
            raise failed(err) from err

    def write_own() -> dict[str, Any]:  # every rank: its files, each fsynced
        try:
            return {name: _write_durably(tmp / name, data) for name, data in files.items()}
        except OSError as err:
            raise failed(err) from err

    def commit(entries: dict[str, Any]) -> None:  # rank 0, once every rank's files are durable
        try:
            if sharded:
                doc = _sharding_doc(whole, layouts, env.world_size)
                for name, entry in entries.items():  # the others' files, as this process sees them
                    if not (tmp / name).is_file() or (tmp / name).stat().st_size != entry["size"]:
                        raise ScratchLLMError(
                            f"could not save checkpoint {final}: {name} (written by another process) is "
                            "not visible here; a sharded checkpoint needs the run directory on a "
                            "filesystem that every process (every node) shares"
                        )
                entries[SHARDING_FILE] = _write_durably(
                    tmp / SHARDING_FILE, (json.dumps(doc, indent=1) + "\n").encode("utf-8")
                )
            manifest = {
                "format_version": FORMAT_VERSION,
                "step": step,
                "scratchllm_version": version,
                "files": dict(sorted(entries.items())),
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
            raise failed(err) from err

    layouts: list[Any] = []
    try:
        env.agreed(begin, main_only=True)
        own = env.agreed(write_own)
        reports = env.gather_json({"entries": own, "layout": layout if sharded else None})
        layouts = [r["layout"] for r in reports]
        entries = {name: e for r in reports for name, e in r["entries"].items()}
        env.agreed(lambda: commit(entries), main_only=True)
    except BaseException:
        if env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise

    def finish() -> None:  # rank 0: the checkpoint is committed; tidy up and publish the weights
        _prune(run_dir, step, keep)
        if update_latest:
            if sharded:
                src = checkpoint_tensors(final, "model")
                save_run_tensors(run_dir, MODEL_FILE, src.lazy(), src.metadata)
            else:
                _publish(final / MODEL_FILE, run_dir / MODEL_FILE, entries[MODEL_FILE]["sha256"])

    env.agreed(finish, main_only=True)
    return final


# =========================================================================== sharded (FSDP) files
def _local_slices(tensors: dict[str, Any], rank: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """What this rank stores of ``tensors``: its rows of each sharded one (DTensor), and — on rank
    0 only — every whole one (a buffer, a step count), plus the layout ``{name: [first_row, rows]
    or None (whole)}`` that tells rank 0 where each piece went."""
    out: dict[str, Any] = {}
    layout: dict[str, Any] = {}
    for name, t in tensors.items():
        rows = shard_rows(t)
        layout[name] = None if rows is None else list(rows)
        if rows is not None:
            out[name] = local_tensor(t).detach()
        elif rank == 0:
            out[name] = t.detach()
    return out, layout


def _shard_files(
    model: Any, optimizer: Any, env: DistEnv, *, only: set[str] | None, metadata: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, tuple[dict[str, Any], dict[str, str]]]]:
    """This rank's files of a sharded checkpoint: ``(files, layout, whole)`` — ``whole`` holds the
    full tensor descriptions (shapes, dtypes) and metadata that rank 0 writes into the index."""
    reshard(model)
    whole = {"model": weights_tensors(model, only=only, metadata=metadata)}
    if optimizer is not None:
        whole["optimizer"] = optimizer_tensors(optimizer, model)
    files, layout = {}, {}
    for kind, (tensors, meta) in whole.items():
        local, layout[kind] = _local_slices(tensors, env.rank)
        files[shard_file_name(kind, env.rank, env.world_size)] = (local, meta)
    return files, layout, whole


def _sharding_doc(whole: dict[str, Any], layouts: list[dict[str, Any]], world_size: int) -> dict[str, Any]:
    """``sharding.json``: for the model and the optimizer, where every row of every tensor is."""
    doc: dict[str, Any] = {"format_version": FORMAT_VERSION, "strategy": "fsdp", "world_size": world_size}
    for kind, (tensors, meta) in whole.items():
        index = {}
        for name, t in tensors.items():
            parts = []
            for rank, layout in enumerate(layouts):
                if name not in layout[kind]:
                    raise ScratchLLMError(
                        f"process {rank} has no {name!r} to save (the ranks disagree on the model)"
                    )
                rows = layout[kind][name]
                if rows is None:  # whole: rank 0's file holds it
                    if rank == 0:
                        parts.append({"file": shard_file_name(kind, 0, world_size), "rows": None})
                elif rows[1] > 0:
                    parts.append(
                        {"file": shard_file_name(kind, rank, world_size), "offset": rows[0], "rows": rows[1]}
                    )
            index[name] = index_entry(t, parts)
        doc[kind] = {"metadata": meta, "tensors": index}
    return doc


def save_sharded_weights(
    run_dir: str | os.PathLike, name: str, model: Any, env: DistEnv, *, only: set[str] | None = None
) -> Path:
    """A run weights file (``best.safetensors``) of an FSDP model as one ordinary file, without
    gathering the model on one rank: every rank writes its rows into a temp directory, rank 0
    streams them into ``RUN/name`` (one tensor in memory at a time) and removes them. Every rank
    calls this."""
    run_dir = Path(run_dir)
    tmp = Path(env.from_main(str(run_dir / f"{TMP_PREFIX}shards-{name}-{os.getpid()}")))
    tensors, meta = weights_tensors(model, only=only)
    local, layout = _local_slices(tensors, env.rank)
    fname = shard_file_name("model", env.rank, env.world_size)
    try:
        env.agreed(lambda: (shutil.rmtree(tmp, ignore_errors=True), tmp.mkdir()), main_only=True)
        env.agreed(lambda: _write_durably(tmp / fname, (local, meta)))
        layouts = env.gather_json({"model": layout})

        def consolidate() -> None:
            doc = _sharding_doc({"model": (tensors, meta)}, layouts, env.world_size)
            src = ShardedTensors(tmp, doc["model"], f"{name} shards")
            save_run_tensors(run_dir, name, src.lazy(), meta)

        env.agreed(consolidate, main_only=True)
    finally:
        if env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
    return run_dir / name


def _load_resharded(path: Path, model: Any, optimizer: Any) -> None:
    """Load a checkpoint when the saved or the live model is sharded: each process reads just its
    own rows of every tensor, from whichever files hold them — so a checkpoint written by K
    processes resumes on K' (re-sharding), a DDP checkpoint resumes under FSDP and back, and a
    sharded one loads into one process."""
    src = checkpoint_tensors(path, "model")
    what = f"{path.name} (weights)"
    target = unwrap(model).state_dict()
    tensors: dict[str, Any] = {}
    for name in src.names():
        ref = target.get(name)
        if ref is None or src.shape(name) != tuple(ref.shape):
            tensors[name] = src.read(name)  # a mismatch: load_weights_into names it
            continue
        tensors[name] = _slice_for(src, name, ref)
    load_weights_into(model, tensors, src.metadata, what)
    if optimizer is None:
        return
    osrc = checkpoint_tensors(path, "optimizer")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state: dict[str, Any] = {}
    for name in osrc.names():
        parts = name.split(".", 2)
        idx = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else -1
        p = params[idx] if 0 <= idx < len(params) else None
        if p is None or not osrc.shape(name) or osrc.shape(name) != tuple(p.shape):
            state[name] = osrc.read(name)  # scalars (step counts) whole; mismatches are reported
            continue
        state[name] = _slice_for(osrc, name, p)
    load_optimizer_from(optimizer, state, osrc.metadata, f"{path.name} (optimizer)")


def _slice_for(src: ShardedTensors, name: str, ref: Any) -> Any:
    """Tensor ``name`` as ``ref`` holds it here: this rank's rows (as a DTensor like ``ref``), or whole."""
    rows = shard_rows(ref)
    if rows is None:
        return src.read(name)
    return like_shard(src.read(name, rows[0], rows[0] + rows[1]), ref)


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
    (:func:`scratchllm.runs.find_valid_checkpoint`, which ``convert --consolidate`` uses too.)
    """
    return find_valid_checkpoint(run_dir)


def require_resumable_checkpoint(run_dir: str | os.PathLike) -> tuple[Path, list[str]]:
    """Like :func:`find_resumable_checkpoint` but raise when nothing can be resumed.

    ``--resume`` must never silently start from scratch: no checkpoint, or only corrupt ones,
    is an error that lists why each checkpoint failed.
    """
    path, skipped = find_resumable_checkpoint(run_dir)
    if path is not None:
        return path, skipped
    cannot_resume(run_dir, skipped)


def cannot_resume(run_dir: str | os.PathLike, skipped: list[str]) -> NoReturn:
    """The error for a run with nothing to resume: no checkpoint at all, or only damaged ones
    (``skipped`` says why each failed)."""
    run_dir = Path(run_dir)
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
    if is_sharded_checkpoint(path) or is_sharded(model):
        _load_resharded(path, model, optimizer)
        return read_trainer_state(path)
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
