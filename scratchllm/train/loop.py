"""The one training loop: pretraining and every fine-tune run through :func:`train`.

One optimizer step (:func:`optimizer_step`), in the order the code performs it:

1. set the learning rate for this step (a pure function of the step, :func:`~.optim.lr_at`);
2. for each of ``grad_accum_steps`` micro-batches: fetch a batch from the task's
   :class:`~scratchllm.data.batches.BatchSource`, compute the loss (``task.loss``), ``backward()``
   on ``loss / grad_accum_steps`` — gradients *add up* in ``.grad``, so K micro-batches of B make
   one step on a batch of K*B. Under DDP the gradient all-reduce is skipped (``no_sync``) on all
   but the last micro-batch, since only the final sum needs averaging across processes;
3. measure the global gradient norm and clip it to ``grad_clip``;
4. **check before stepping**: a non-finite loss or gradient norm (on *any* rank; one tiny
   all-reduce makes every rank agree) means this step is thrown away — weights and optimizer
   moments stay bit-identical — and counted. ``max_bad_steps`` bad steps in a row abort the run
   with exit code 3, keeping the last good checkpoint. An optional z-score test also skips
   isolated loss *spikes*;
5. ``optimizer.step()`` and drop the gradients (``set_to_none``: frees memory, skips a memset).

Around the steps, at their intervals: log a line (``metrics.jsonl``, the progress bar, MFU),
evaluate and sample (:func:`evaluate_and_sample`: val loss, a sample, ``best.safetensors``), save
a checkpoint.

**Exact resume.** A checkpoint stores the weights, the optimizer moments and a *trainer state*:
the :class:`LoopState` (step, counters, the spike window), every random generator (python,
numpy, torch CPU/CUDA — dropout draws from torch's) and the data cursor of every rank. Restoring
all of it makes ``k steps + resume + (N - k) steps`` bit-identical to ``N steps`` on the same
machine. Samples at eval time draw from a *forked* generator so that printing samples never
changes training.

**Stopping.** SIGINT (Ctrl-C) or SIGTERM make the loop finish the current step, save a checkpoint
and return (``TrainResult.interrupted``); a second Ctrl-C stops immediately.

**Speed.** The loop reads one small tensor back from the device per step (the finiteness flag and
the loss, all-reduced together); everything else stays on the device. Evaluation, plotting and
checkpoints happen only at their intervals, and their time is excluded from tokens/s. On a CPU
two more things keep the step lean: the gradient clip uses torch's ``foreach`` kernels (one call
for all gradients), and :func:`~scratchllm.device.keep_freed_memory` stops glibc from returning
each step's freed activations to the kernel, which would otherwise fault in and zero the same
pages again on the next step (~13 % of a step at nanoGPT's CPU config).
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scratchllm.config import to_dict
from scratchllm.device import keep_freed_memory, peak_rss_mb, set_threads
from scratchllm.errors import ScratchLLMError
from scratchllm.runs import (
    BEST_FILE,
    CHECKPOINTS_DIR,
    Restart,
    RunLock,
    clean_stale_restarts,
    holds_a_run,
    save_best,
    save_run_files,
    step_dir_name,
)
from scratchllm.tasks.base import Task
from scratchllm.train import checkpoint
from scratchllm.train.config import TrainConfig
from scratchllm.train.distributed import (
    DistEnv,
    ShardedModel,
    gathered,
    init_distributed,
    local_tensor,
    prepare_model,
)
from scratchllm.train.estimate import check_fits, estimate_run, measure_step
from scratchllm.train.metrics import PLOT_FILE, MetricsLogger, mfu, plot_losses
from scratchllm.train.optim import build_optimizer, clip_gradients, lr_at, set_lr
from scratchllm.train.state import (
    capture_rng_state,
    env_fingerprint,
    fingerprint_differences,
    restore_rng_state,
)

#: Exit code of a run stopped because the loss/gradients stayed non-finite (documented in the README).
EXIT_NON_FINITE = 3
#: At most one loss.png refresh per this many seconds during training (it is always drawn at the end).
PLOT_EVERY_S = 60.0

#: Evaluation results not worth a line on the terminal (they still go to metrics.jsonl).
_NOT_SHOWN = ("tokens_per_s", "peak_rss_mb", "cuda_max_memory_mb", "tokens", "batches")


class ResumeWarning(UserWarning):
    """Resuming cannot be bit-exact (a different thread count, device, torch version...)."""


@dataclass
class TrainResult:
    """What :func:`train` did. ``history`` holds the (all-rank mean) loss of every step it ran."""

    run_dir: Path
    step: int
    tokens_seen: int
    elapsed: float
    tokens_per_s: float
    final_loss: float | None
    best_val_loss: float | None
    last_eval: dict[str, float] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    skipped_steps: int = 0
    #: "SIGINT"/"SIGTERM" when a signal stopped the run, "stop_at" for a planned pause, else None.
    interrupted: str | None = None
    resumed_from: int | None = None
    history: list[float] = field(default_factory=list)
    checkpoint: Path | None = None


# ============================================================================ the loop's state
@dataclass
class LoopState:
    """Everything the loop carries from one step to the next that a checkpoint must restore.

    (The RNGs and the data cursor are saved beside it; see :meth:`Session.trainer_state`.)
    """

    step: int = 0
    tokens_seen: int = 0
    best_val_loss: float | None = None
    skipped_steps: int = 0
    consecutive_bad: int = 0
    consecutive_spikes: int = 0
    #: recent step losses, for the spike z-score.
    spike_window: deque[float] = field(default_factory=deque)
    #: wall-clock seconds of the earlier sessions of this run (before the last resume).
    elapsed_before: float = 0.0

    def to_dict(self, elapsed: float) -> dict[str, Any]:
        """The JSON fields of ``trainer_state.json`` that belong to the loop."""
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_val_loss,
            "skipped_steps": self.skipped_steps,
            "consecutive_bad": self.consecutive_bad,
            "consecutive_spikes": self.consecutive_spikes,
            "spike_window": list(self.spike_window),
            "elapsed": elapsed,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any], *, spike_window: int) -> LoopState:
        return cls(
            step=int(state["step"]),
            tokens_seen=int(state.get("tokens_seen", 0)),
            best_val_loss=state.get("best_val_loss"),
            skipped_steps=int(state.get("skipped_steps", 0)),
            consecutive_bad=int(state.get("consecutive_bad", 0)),
            consecutive_spikes=int(state.get("consecutive_spikes", 0)),
            spike_window=deque((float(x) for x in state.get("spike_window", [])), maxlen=spike_window),
            elapsed_before=float(state.get("elapsed", 0.0)),
        )


@dataclass
class StepOutcome:
    """What one optimizer step did."""

    loss: float
    grad_norm: float
    lr: float
    tokens: int
    #: why the step was skipped ("non-finite", "loss spike (z=...)"), or None when it was taken.
    skipped: str | None
    #: some rank was asked to stop (SIGINT/SIGTERM).
    stop_requested: bool
    extra: dict[str, Any]


@dataclass
class _Window:
    """What happened since the last log line (for its averages and tokens/s)."""

    losses: list[float] = field(default_factory=list)
    skipped: int = 0
    tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    excluded: float = 0.0  # seconds spent in eval/sampling/saving since the window began
    started: float = field(default_factory=time.perf_counter)


# ============================================================================ small helpers
class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it once per step (all ranks agree via all-reduce)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}
        self._say: Callable[[str], None] | None = None

    def install(self, say: Callable[[str], None] | None = None) -> None:
        """Catch SIGINT/SIGTERM; ``say`` acknowledges a signal at once (a step may take a while)."""
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self._say = say
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.reason is None
        self.reason = signal.Signals(signum).name
        if first and self._say is not None:
            again = "; press Ctrl-C again to stop at once" if signum == signal.SIGINT else ""
            self._say(f"{self.reason} received: stopping after this step, then saving a checkpoint{again}")
        # A second Ctrl-C should not wait for the checkpoint: give SIGINT back its usual meaning.
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
        self._previous.clear()


def _batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens in a batch, for tokens/s: ``input_ids`` if present, else the first tensor's size."""
    t = batch.get("input_ids")
    if t is None:
        t = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
    return int(t.numel()) if t is not None else 0


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {
        k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def _as_float(v: Any) -> Any:
    return float(v.detach().float().mean().item()) if isinstance(v, torch.Tensor) else v


def _all_finite(tensors: Any) -> bool:
    """True when no element of any tensor is NaN or infinite (one device sync)."""
    flags = [torch.isfinite(t.detach()).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


def _autocast(device: torch.device, cfg: TrainConfig) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA ("auto" or "bfloat16"); full float32 everywhere else."""
    if cfg.dtype == "bfloat16" and device.type != "cuda":
        raise ScratchLLMError("dtype bfloat16 (autocast) is only supported on CUDA; use --set dtype=float32")
    if device.type == "cuda" and cfg.dtype in ("auto", "bfloat16") and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _on_main(env: DistEnv, fn: Callable[[], Any]) -> None:
    """Run ``fn`` on rank 0 only; if it raises there, every rank raises (nobody waits forever)."""
    env.agreed(fn, main_only=True)


@dataclass
class RunDir:
    """Where this session writes: the run directory, or — for ``--force`` on an existing run — a
    staging sibling that replaces it at the first checkpoint (:class:`scratchllm.runs.Restart`).
    Holds the directory locks (rank 0 only)."""

    final: Path
    restart: Restart | None = None
    locks: list[RunLock] = field(default_factory=list)

    @property
    def work(self) -> Path:
        if self.restart is not None and not self.restart.done:
            return self.restart.staging
        return self.final

    def release(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks.clear()


def claim_run_dir(run_dir: Path, *, resume: bool, force: bool) -> RunDir:
    """Lock the run directory and decide where this session writes.

    A new run needs an empty directory; ``force`` starts over in a populated one without
    destroying it until the new run has saved something; ``resume`` continues the run there — or
    starts one when nothing has been saved yet, so a requeued job can pass ``--resume`` from its
    first launch. A second trainer on the same directory is refused (naming the PID holding it).
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ScratchLLMError(f"output directory {run_dir} exists and is not a directory")
    claimed = RunDir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    claimed.locks.append(RunLock(run_dir).acquire())
    try:
        clean_stale_restarts(run_dir)
        if not resume and holds_a_run(run_dir):
            if not force:
                raise ScratchLLMError(
                    f"output directory {run_dir} already contains files; pass --resume to continue that "
                    "run, --force to start over in it (the old run is kept until the new one saves its "
                    "first checkpoint), or choose another --out"
                )
            claimed.restart = Restart(run_dir)
            claimed.locks.append(RunLock(claimed.restart.begin()).acquire())
    except BaseException:
        claimed.release()
        raise
    return claimed


def _non_finite_error(session: Session, state: LoopState, what: str) -> ScratchLLMError:
    """The one message for a run that cannot go on: what went wrong, which checkpoint survives."""
    kept = checkpoint.find_resumable_checkpoint(session.run_dir)[0] if session.env.is_main else None
    return ScratchLLMError(
        f"training stopped at step {state.step}: {what}; "
        + (f"the last good checkpoint is {kept}" if kept else "no checkpoint was saved yet")
        + " — try a lower lr, more warmup_steps or grad_clip",
        exit_code=EXIT_NON_FINITE,
    )


# ============================================================================ one session of a run
@dataclass
class Session:
    """The fixed parts of one training session (one process, from start or resume to stop)."""

    model: torch.nn.Module
    #: the model as it is called (``torch.compile`` and/or DDP around ``model``).
    train_model: Any
    task: Task
    cfg: TrainConfig
    dirs: RunDir
    env: DistEnv
    device: torch.device
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    source: Any
    autocast: contextlib.AbstractContextManager
    metrics: MetricsLogger
    stop: _StopFlag
    fingerprint: dict[str, Any]
    say: Callable[[str], None]
    t_start: float = field(default_factory=time.perf_counter)
    #: model FLOPs per trained token (None when the model cannot estimate them).
    flops_per_token: float | None = None
    #: store only these parameters in weights files (a fine-tune kept on top of its base model).
    store_only: set[str] | None = None
    #: the parameters are sharded across the processes (FSDP): every rank takes part in each
    #: forward pass (evaluation and samples too) and writes its own part of each checkpoint.
    sharded: bool = False

    @property
    def run_dir(self) -> Path:
        """Where files go now (a ``--force`` restart's staging directory until its first checkpoint)."""
        return self.dirs.work

    def elapsed(self, state: LoopState) -> float:
        """Wall-clock seconds of the whole run, earlier sessions included."""
        return state.elapsed_before + time.perf_counter() - self.t_start

    def plot(self) -> None:
        """Redraw ``loss.png`` from metrics.jsonl (rank 0)."""
        plot_losses(
            self.metrics.path, self.run_dir / PLOT_FILE, title=f"training curves: {self.run_dir.name}"
        )

    def trainer_state(self, state: LoopState) -> dict[str, Any]:
        """The loop's side of a checkpoint (every rank's RNGs and data cursor, gathered)."""
        return {
            **state.to_dict(self.elapsed(state)),
            "world_size": self.env.world_size,
            "strategy": self.fingerprint.get("strategy"),
            "rng": self.env.gather_json(capture_rng_state()),
            "data": self.env.gather_json(self.source.state_dict()),
            "environment": self.fingerprint,
            "train_config": to_dict(self.cfg),
        }


def _seed_everything(cfg: TrainConfig, env: DistEnv, device: torch.device) -> None:
    """Seed every generator (a resumed run then overwrites them all with the saved states)."""
    random.seed(cfg.seed + env.rank)
    np.random.seed((cfg.seed + env.rank) % 2**32)
    torch.manual_seed(cfg.seed + env.rank)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~free speed on Ampere+
        torch.backends.cudnn.allow_tf32 = True


def _restore(session: Session, *, allow_world_size_change: bool, echo_given: bool) -> LoopState:
    """``--resume``: load the newest valid checkpoint into the model, optimizer, RNGs and data cursor.

    With no checkpoint at all (a first launch, or a run killed before its first save) the run
    starts at step 0 and says so; damaged checkpoints only are an error (nothing is overwritten).
    """
    env, cfg, say = session.env, session.cfg, session.say
    # Rank 0 verifies the checkpoints (every file's SHA-256) and picks one; every rank loads it.
    found = checkpoint.find_resumable_checkpoint(session.run_dir) if env.is_main else (None, [])
    choice = env.from_main({"path": str(found[0]) if found[0] else None, "skipped": found[1]})
    if choice["path"] is None and not choice["skipped"]:
        say(f"nothing to resume in {session.run_dir} yet (no checkpoint): starting at step 0")
        session.metrics.truncate_after(0)
        return LoopState(spike_window=deque(maxlen=cfg.spike_window))
    if choice["path"] is None:
        checkpoint.cannot_resume(session.run_dir, choice["skipped"])
    ckpt_path, skipped = Path(choice["path"]), choice["skipped"]
    saved = env.agreed(
        lambda: checkpoint.load_checkpoint(ckpt_path, session.model, session.optimizer, verify=False)
    )
    for why in skipped:
        say(f"warning: skipped a damaged checkpoint: {why}")
    saved_ws = int(saved.get("world_size", 1))
    if saved_ws != env.world_size and not allow_world_size_change:
        raise ScratchLLMError(
            f"this run was trained with {saved_ws} process(es) and is resumed with {env.world_size}; "
            "each process would read different data, so the result cannot match an uninterrupted run. "
            "Pass --allow-world-size-change to continue anyway"
        )
    for diff in fingerprint_differences(saved.get("environment"), session.fingerprint):
        msg = f"resume will not be bit-exact: {diff}"
        if not echo_given:
            warnings.warn(msg, ResumeWarning, stacklevel=3)
        say(f"warning: {msg}")
    state = LoopState.from_dict(saved, spike_window=cfg.spike_window)
    _warn_schedule_change(saved.get("train_config"), cfg, state.step, say)
    rngs, datas = saved.get("rng") or [], saved.get("data") or []
    if saved_ws == env.world_size and len(rngs) == env.world_size and len(datas) == env.world_size:
        restore_rng_state(rngs[env.rank])
        session.source.load_state_dict(datas[env.rank])
    else:
        # A deliberate world-size change: keep the data position (rank 0's), fresh dropout RNGs.
        torch.manual_seed(cfg.seed + env.rank + 7919 * state.step)
        session.source.load_state_dict(datas[0], strict=False)
    session.metrics.truncate_after(state.step)
    say(f"resumed from {ckpt_path} (step {state.step})")
    if state.step >= cfg.max_steps:
        say(f"the run already reached max_steps={cfg.max_steps}; raise it (--set max_steps=N) to train more")
    return state


def _warn_schedule_change(saved: Any, cfg: TrainConfig, step: int, say: Callable[[str], None]) -> None:
    """Resuming with other schedule keys recomputes warm-up + cosine from the new ones: the learning
    rate jumps. That can be intended (a longer run), but it must never be silent."""
    keys = ("max_steps", "warmup_steps", "lr", "min_lr", "lr_schedule", "decay_frac", "muon_lr")
    if not isinstance(saved, dict):
        return
    moved = [k for k in keys if k in saved and saved[k] != getattr(cfg, k)]  # (older runs lack new keys)
    if not moved:
        return
    import dataclasses

    old = dataclasses.replace(cfg, **{k: saved[k] for k in keys if k in saved})
    changed = ", ".join(f"{k} {saved[k]} -> {getattr(cfg, k)}" for k in moved)
    say(
        f"warning: the learning-rate schedule changed on resume ({changed}): at step {step} the lr goes "
        f"from {lr_at(step, old):.3g} (the old schedule) to {lr_at(step, cfg):.3g}"
    )


def _wrap_for_speed(model: torch.nn.Module, cfg: TrainConfig, env: DistEnv, device: torch.device) -> Any:
    """``torch.compile`` (optional) and DistributedDataParallel (under torchrun) around the model;
    a model FSDP has already sharded (in place, :func:`~.distributed.prepare_model`) only gets the
    thin :class:`~.distributed.ShardedModel` around it."""
    train_model: Any = model
    if cfg.compile:
        train_model = torch.compile(model)
    if env.enabled and cfg.strategy == "fsdp":
        return ShardedModel(train_model)
    if env.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(
            train_model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(getattr(model, "ddp_find_unused_parameters", False)),
        )
    return train_model


# ============================================================================ the step
def optimizer_step(session: Session, state: LoopState) -> StepOutcome:
    """Steps 1-5 of the module docstring: one optimizer step (or a skipped one), all ranks agreeing."""
    cfg, env, device = session.cfg, session.env, session.device
    lr = lr_at(state.step, cfg)
    set_lr(session.optimizer, lr)

    # ---- forward/backward over the micro-batches ----
    loss_sum = torch.zeros((), device=device)
    tokens = 0
    extra: dict[str, Any] = {}
    for micro in range(cfg.grad_accum_steps):
        batch = _to_device(session.source.next_batch(), device)
        tokens += _batch_tokens(batch)
        last_micro = micro == cfg.grad_accum_steps - 1
        sync = session.train_model.no_sync() if env.enabled and not last_micro else contextlib.nullcontext()
        with sync:
            with session.autocast:
                loss, extra = session.task.loss(session.train_model, batch)
            (loss / cfg.grad_accum_steps).backward()
        loss_sum += loss.detach().float()
    grad_norm = clip_gradients(session.params, cfg.grad_clip).to(device=device, dtype=torch.float32)

    # ---- one sync per step: mean loss, "anything non-finite?", "stop requested?" ----
    local_bad = ~(torch.isfinite(loss_sum) & torch.isfinite(grad_norm))
    stats = torch.stack(
        [
            loss_sum / cfg.grad_accum_steps,
            local_bad.float(),
            torch.tensor(float(session.stop.reason is not None), device=device),
            grad_norm,  # the same on every rank (DDP averaged the gradients)
        ]
    )
    env.all_reduce_sum(stats)
    step_loss, n_bad, n_stop, gnorm = stats.tolist()
    step_loss /= env.world_size
    gnorm /= env.world_size

    # ---- decide: step, or skip (bad numbers / loss spike) ----
    reason = None
    window = state.spike_window
    if n_bad > 0:
        reason = "non-finite"
    elif cfg.spike_zscore > 0 and len(window) >= min(10, cfg.spike_window):
        mean = sum(window) / len(window)
        std = math.sqrt(sum((x - mean) ** 2 for x in window) / (len(window) - 1))
        z = (step_loss - mean) / max(std, 1e-8)
        if z > cfg.spike_zscore and state.consecutive_spikes < cfg.max_bad_steps:
            reason = f"loss spike (z={z:.1f})"
    if reason is None:
        session.optimizer.step()
        state.consecutive_bad = state.consecutive_spikes = 0
        window.append(step_loss)
    else:
        state.skipped_steps += 1
        if reason == "non-finite":
            state.consecutive_bad += 1
        else:
            state.consecutive_spikes += 1
    session.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.tokens_seen += tokens * env.world_size
    return StepOutcome(step_loss, gnorm, lr, tokens * env.world_size, reason, n_stop > 0, extra)


# ============================================================================ evaluation and samples
def _eval_and_sample(
    session: Session, state: LoopState, *, evaluate: bool, sample: bool
) -> tuple[dict[str, float], str | None]:
    model, cfg = session.model, session.cfg
    scores: dict[str, float] = {}
    text = None
    if evaluate and cfg.eval_steps > 0:
        model.eval()  # dropout off
        with torch.no_grad(), session.autocast:
            scores = dict(session.task.evaluate(model, max_batches=cfg.eval_steps))
        model.train()
    if sample:
        devices = [session.device.index or 0] if session.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), session.autocast, torch.no_grad():
            torch.manual_seed(cfg.seed + state.step)
            text = session.task.sample(model)
        model.train()
    return scores, text


def evaluate_and_sample(
    session: Session, state: LoopState, *, evaluate: bool, sample: bool
) -> tuple[dict[str, float], str | None]:
    """Val metrics (rank 0, eval mode, no grad) and a sample (from forked RNGs, so that printing it
    never changes what training draws next). A new best ``val_loss`` writes ``best.safetensors``."""
    model, env, cfg = session.model, session.env, session.cfg
    # The plain model (no DDP wrapper) runs on rank 0 alone. A sharded (FSDP) model is gathered
    # whole on every rank for the duration (:func:`~.distributed.gathered`), and every rank
    # evaluates the same batches and draws the same sample (same seed); rank 0's results count.
    if not env.is_main and not session.sharded:
        return {}, None
    with gathered(model, cfg.fsdp_reshard_after_forward) if session.sharded else contextlib.nullcontext():
        scores, text = _eval_and_sample(session, state, evaluate=evaluate, sample=sample)
    if session.sharded:
        scores = env.from_main(scores)
        text = text if env.is_main else None
    val = scores.get("val_loss")
    if val is not None and math.isfinite(val) and (state.best_val_loss is None or val < state.best_val_loss):
        state.best_val_loss = val
        if session.sharded:
            checkpoint.save_sharded_weights(session.run_dir, BEST_FILE, model, env, only=session.store_only)
        else:
            save_best(session.run_dir, model, only=session.store_only)
    return scores, text


def _report_eval(
    session: Session, state: LoopState, result: TrainResult, scores: dict, text: str | None
) -> None:
    """Show an evaluation on the terminal and append it to metrics.jsonl (rank 0)."""
    if not session.env.is_main:
        return
    if text is not None:
        result.samples.append(text)
        session.say(f"--- sample at step {state.step} ---\n{text}\n---")
    if scores:
        result.last_eval = scores
        shown = ", ".join(
            f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float) and k not in _NOT_SHOWN
        )
        session.say(f"step {state.step}: {shown}")
    if scores or text is not None:
        session.metrics.log("eval", step=state.step, **scores, sample=text, elapsed=session.elapsed(state))


def _save(session: Session, state: LoopState, *, final: bool = False) -> Path | None:
    """Commit a checkpoint on rank 0; every rank learns whether it worked.

    While training the two newest checkpoints are kept (a damaged one has a fallback); a finished
    run keeps its final checkpoint only, which ``--resume`` with a larger ``max_steps`` continues.
    """
    # A finite loss can still produce an update that overflows the weights; never let such weights
    # replace the last good checkpoint. (All ranks hold the same weights — or, sharded, a slice each.)
    finite = _all_finite(local_tensor(p) for p in session.model.parameters())
    if not (session.env.all_agree(finite) if session.sharded else finite):
        session.metrics.log(
            "stop", step=state.step, reason="non-finite weights", elapsed=session.elapsed(state)
        )
        raise _non_finite_error(session, state, "the weights are no longer finite (an update overflowed)")
    trainer_state = session.trainer_state(state)  # collective: every rank takes part

    def save() -> None:  # rank 0; sharded: every rank, each writing its own slices
        checkpoint.save_checkpoint(
            session.run_dir,
            step=state.step,
            model=session.model,
            optimizer=session.optimizer,
            trainer_state=trainer_state,
            only=session.store_only,
            # by default the newest two while training (one may be torn), the final one at the end
            keep=session.cfg.keep_checkpoints or (1 if final else 2),
            env=session.env if session.sharded else None,
        )

    def promote() -> None:
        restart = session.dirs.restart
        if restart is not None and not restart.done:  # --force: the new run replaces the old one now
            restart.promote()
            session.metrics.path = session.run_dir / session.metrics.path.name
            session.say(f"replaced the previous run in {session.run_dir}")

    if session.sharded:
        save()
        _on_main(session.env, promote)
    else:
        _on_main(session.env, lambda: (save(), promote()))
    return session.run_dir / CHECKPOINTS_DIR / step_dir_name(state.step) if session.env.is_main else None


# ============================================================================ progress and logs
class Progress:
    """What the user sees while training, and the ``train`` lines of metrics.jsonl.

    On a terminal: a tqdm bar (loss, lr, tokens/s in its postfix). Anywhere else (a log file, CI,
    ``nohup``): a plain line every ``cfg.progress_interval`` seconds, so a log never goes silent.
    The window — what happened since the last ``train`` line — gives that line its averages.
    """

    def __init__(self, session: Session, state: LoopState, *, enabled: bool) -> None:
        import sys

        self.session, self.cfg = session, session.cfg
        self.window = _Window()
        self.train_tokens, self.train_seconds = 0, 0.0
        self.final_loss: float | None = None
        self.last_plot = self.last_line = time.perf_counter()
        self.bar = None
        self.lines = False
        if enabled and session.env.is_main:
            if sys.stderr.isatty():
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=self.cfg.max_steps,
                    initial=min(state.step, self.cfg.max_steps),
                    desc="train",
                    unit="step",
                    dynamic_ncols=True,
                )
            else:
                self.lines = self.cfg.progress_interval > 0

    def step(self, state: LoopState, out: StepOutcome) -> None:
        """Account for one optimizer step (skipped ones are logged as ``skip`` events)."""
        w = self.window
        w.tokens += out.tokens
        w.extra = out.extra or w.extra
        if out.skipped is None:
            w.losses.append(out.loss)
        else:
            w.skipped += 1
            self.session.metrics.log(
                "skip",
                step=state.step,
                reason=out.skipped,
                loss=out.loss,
                grad_norm=out.grad_norm,
                lr=out.lr,
                elapsed=self.session.elapsed(state),
            )
        if self.bar is not None:
            self.bar.update(1)

    def log(self, state: LoopState, out: StepOutcome) -> None:
        """One ``train`` line in metrics.jsonl (means over the window, tokens/s, MFU)."""
        session, w = self.session, self.window
        seconds = max(time.perf_counter() - w.started - w.excluded, 1e-9)
        tps = w.tokens / seconds
        mean_loss = sum(w.losses) / len(w.losses) if w.losses else float("nan")
        fields = {
            "step": state.step,
            "loss": mean_loss,
            "lr": out.lr,
            "grad_norm": out.grad_norm,
            "tokens_per_s": round(tps, 1),
            "tokens_seen": state.tokens_seen,
            "elapsed": round(session.elapsed(state), 3),
            "skipped": w.skipped,
            "peak_rss_mb": peak_rss_mb(),
            **{k: _as_float(v) for k, v in w.extra.items()},
        }
        if session.flops_per_token:
            fields["mfu"] = mfu(session.flops_per_token * tps, session.device)
        session.metrics.log("train", **fields)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{mean_loss:.4f}", lr=f"{out.lr:.2e}", tok_s=f"{tps:,.0f}", refresh=False
            )
        if self.lines and time.perf_counter() - self.last_line >= self.cfg.progress_interval:
            self.last_line = time.perf_counter()
            pct = 100 * state.step / self.cfg.max_steps
            session.say(
                f"step {state.step}/{self.cfg.max_steps} ({pct:.0f}%): loss {mean_loss:.4f}, "
                f"lr {out.lr:.2e}, {tps:,.0f} tokens/s, {session.elapsed(state):.0f} s"
            )
        self.train_tokens += w.tokens
        self.train_seconds += seconds
        if w.losses:
            self.final_loss = mean_loss
        self.window = _Window()

    def exclude(self, seconds: float) -> None:
        """Time spent evaluating or saving: not training time, so not in tokens/s."""
        self.window.excluded += seconds

    def maybe_plot(self) -> None:
        """Redraw loss.png during long runs (at most once per ``PLOT_EVERY_S``)."""
        if self.session.env.is_main and time.perf_counter() - self.last_plot > PLOT_EVERY_S:
            self.session.plot()
            self.last_plot = time.perf_counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _flops_per_token(model: torch.nn.Module, task: Task) -> float | None:
    """Training FLOPs per token from the model's own estimate, at the task's window length."""
    estimate = getattr(model, "estimate_flops_per_token", None)
    if estimate is None:
        return None
    return float(estimate(getattr(task, "context_length", None), training=True))


def start_session(
    model: torch.nn.Module,
    task: Task,
    cfg: TrainConfig,
    run_dir: Path,
    *,
    arch: str,
    tokenizer: Any,
    resume: bool,
    force: bool,
    model_config: Any,
    extra_config: dict[str, Any] | None,
    allow_world_size_change: bool,
    echo: Callable[[str], None] | None,
    check_memory: bool = True,
    estimate_time: bool = False,
    store_only: set[str] | None = None,
) -> tuple[Session, LoopState]:
    """Everything before the first step: processes, the size and memory check (before anything is
    written), the run directory, seeds, the model on its device, the optimizer and data, the
    resumed state, ``config.json``, a measured step, the speed wrappers."""
    say = echo or (lambda msg: None)
    env = init_distributed(cfg.device)
    device = torch.device(env.device)
    set_threads(cfg.threads)
    if device.type == "cpu":
        keep_freed_memory()  # no page faults for every step's activations (see its docstring)
    seq_len = getattr(task, "context_length", None) or getattr(model.config, "context_length", 1)
    estimate = estimate_run(
        model,
        cfg,
        batch_size=cfg.batch_size,
        seq_len=seq_len,
        device=str(device),
        world_size=env.world_size,
        processes_sharing_memory=env.local_world_size if device.type == "cpu" else 1,
    )
    if env.is_main:
        for line in estimate.describe():
            say(line)
        if cfg.strategy == "fsdp" and not env.enabled:
            say("strategy fsdp in a single process: nothing to shard, training as one process")
    if check_memory:
        check_fits(estimate)
    claimed = [RunDir(run_dir)]
    _on_main(env, lambda: claimed.__setitem__(0, claim_run_dir(run_dir, resume=resume, force=force)))
    dirs = claimed[0]
    try:
        _seed_everything(cfg, env, device)
        model.train()
        # Activation checkpointing; FSDP shards the model in place (so the optimizer comes after).
        sharded = prepare_model(model, cfg, env)
        session = Session(
            model=model,
            train_model=model,
            task=task,
            cfg=cfg,
            dirs=dirs,
            env=env,
            device=device,
            optimizer=build_optimizer(model, cfg, device.type),
            params=[p for p in model.parameters() if p.requires_grad],
            source=task.train_batches(seed=cfg.seed, rank=env.rank, world_size=env.world_size),
            autocast=_autocast(device, cfg),
            metrics=MetricsLogger(dirs.work, enabled=env.is_main),
            stop=_StopFlag(),
            fingerprint=env_fingerprint(
                device=device,
                world_size=env.world_size,
                strategy=cfg.strategy if env.enabled else "single",
            ),
            say=say,
            flops_per_token=_flops_per_token(model, task),
            store_only=store_only,
            sharded=sharded,
        )
        if resume:
            state = _restore(
                session, allow_world_size_change=allow_world_size_change, echo_given=echo is not None
            )
        else:
            state = LoopState(spike_window=deque(maxlen=cfg.spike_window))
        _on_main(
            env,
            lambda: save_run_files(
                dirs.work,
                None,
                arch=arch,
                model_config=model_config if model_config is not None else getattr(model, "config", None),
                train_config=cfg,
                tokenizer=tokenizer,
                extra=extra_config,
            ),
        )
        if estimate_time and (env.is_main or sharded):  # a sharded model computes on every rank
            estimate.step_seconds, estimate.measured_peak_bytes = measure_step(
                model, task, cfg, device, agree=env.all_agree if sharded else None
            )
        if env.is_main and estimate_time:
            say(estimate.describe()[-1])
            session.metrics.log(
                "estimate",
                step=state.step,
                params=estimate.params,
                trainable=estimate.trainable,
                estimated_peak_mb=round(estimate.total_bytes / 2**20, 1),
                measured_peak_mb=round((estimate.measured_peak_bytes or 0) / 2**20, 1),
                step_seconds=round(estimate.step_seconds, 4),
                estimated_run_s=round(estimate.step_seconds * cfg.max_steps, 1),
            )
        session.train_model = _wrap_for_speed(model, cfg, env, device)
    except BaseException:  # a failed start (bad resume, ...) holds no lock and leaves no staging
        if dirs.restart is not None:
            dirs.restart.abandon()
        dirs.release()
        raise
    return session, state


def _due(step: int, interval: int | None) -> bool:
    return bool(interval) and step % interval == 0


# ============================================================================ train()
def train(
    model: torch.nn.Module,
    task: Task,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    arch: str = "gpt",
    tokenizer: Any = None,
    resume: bool = False,
    force: bool = False,
    model_config: Any = None,
    extra_config: dict[str, Any] | None = None,
    progress: bool = True,
    allow_world_size_change: bool = False,
    stop_at: int | None = None,
    echo: Callable[[str], None] | None = None,
    check_memory: bool = True,
    estimate_time: bool = False,
    store_only: set[str] | None = None,
) -> TrainResult:
    """Train ``model`` on ``task`` for ``cfg.max_steps`` optimizer steps, saving into ``run_dir``.

    Which parameters train is decided by the caller (``requires_grad``); the optimizer sees only
    those. ``model`` is moved to the configured device. ``resume=True`` continues from the newest
    valid checkpoint in ``run_dir`` (weights, optimizer, RNGs, data cursor — bit-exact when the
    environment is unchanged). ``force=True`` starts over in a populated ``run_dir``.
    ``model_config`` (default ``model.config``) and ``extra_config`` go into ``config.json``.
    ``stop_at`` pauses after that step as if interrupted (a checkpoint is saved): useful for
    time-sliced training and for testing resume. ``echo`` receives human-readable messages
    (samples, warnings, saves, the size/memory/time estimate); the CLI prints them.
    ``check_memory=False`` trains even when the estimated peak memory exceeds what is available;
    ``estimate_time`` times one extra forward/backward first (with forked RNGs and its own batch,
    so training is unchanged) and reports the time per step and for the run (the CLI does).
    ``store_only`` names the parameters weights files keep (a fine-tune that trains a few of them
    is stored on top of its base model: :func:`scratchllm.runs.attach_base`).

    Raises :class:`ScratchLLMError` for user errors, with ``exit_code`` 3 when the loss stayed
    non-finite for ``max_bad_steps`` consecutive steps.
    """
    if stop_at is not None and stop_at < 1:
        raise ScratchLLMError(f"stop_at must be >= 1 (got {stop_at})")
    run_dir = Path(run_dir)
    session, state = start_session(
        model,
        task,
        cfg,
        run_dir,
        arch=arch,
        tokenizer=tokenizer,
        resume=resume,
        force=force,
        model_config=model_config,
        extra_config=extra_config,
        allow_world_size_change=allow_world_size_change,
        echo=echo,
        check_memory=check_memory,
        estimate_time=estimate_time,
        store_only=store_only,
    )
    result = TrainResult(
        run_dir=run_dir,
        step=state.step,
        tokens_seen=state.tokens_seen,
        elapsed=state.elapsed_before,
        tokens_per_s=0.0,
        final_loss=None,
        best_val_loss=state.best_val_loss,
        skipped_steps=state.skipped_steps,
        resumed_from=state.step if resume else None,
    )
    shown = Progress(session, state, enabled=progress)
    session.stop.install(session.say if session.env.is_main else None)
    try:
        while state.step < cfg.max_steps:
            out = optimizer_step(session, state)
            result.history.append(out.loss)
            shown.step(state, out)
            if state.consecutive_bad >= cfg.max_bad_steps:
                _stop_on_bad_steps(session, state)
            final = state.step >= cfg.max_steps
            stopping = out.stop_requested or (stop_at is not None and state.step >= stop_at)
            if final or stopping or _due(state.step, cfg.log_interval):
                shown.log(state, out)

            t0 = time.perf_counter()
            due_eval = cfg.eval_steps > 0 and (final or _due(state.step, cfg.eval_interval))
            due_sample = (
                due_eval
                if cfg.sample_interval is None
                else cfg.sample_interval > 0 and (final or _due(state.step, cfg.sample_interval))
            )
            if (due_eval or due_sample) and out.skipped != "non-finite":  # unchanged model: wait
                scores, text = evaluate_and_sample(session, state, evaluate=due_eval, sample=due_sample)
                _report_eval(session, state, result, scores, text)
                if scores and not final:
                    shown.maybe_plot()
            if final or stopping or _due(state.step, cfg.save_interval):
                result.checkpoint = _save(session, state, final=final) or result.checkpoint
            shown.exclude(time.perf_counter() - t0)

            if stopping and not final:
                result.interrupted = session.stop.reason or "stop_at"
                session.metrics.log(
                    "stop", step=state.step, reason=result.interrupted, elapsed=session.elapsed(state)
                )
                break
    finally:
        session.stop.uninstall()
        shown.close()
        session.metrics.close()
        restart = session.dirs.restart
        if restart is not None and not restart.done:
            restart.abandon()
            session.say(
                f"the previous run in {run_dir} was kept: the new one stopped before its first checkpoint"
            )
        session.dirs.release()

    if session.env.is_main:
        session.plot()
    result.step, result.tokens_seen, result.elapsed = state.step, state.tokens_seen, session.elapsed(state)
    result.tokens_per_s = shown.train_tokens / shown.train_seconds if shown.train_seconds else 0.0
    result.final_loss, result.best_val_loss = shown.final_loss, state.best_val_loss
    result.skipped_steps = state.skipped_steps
    return result


def _stop_on_bad_steps(session: Session, state: LoopState) -> None:
    """``max_bad_steps`` non-finite steps in a row: stop with exit code 3, the last good checkpoint kept."""
    first = state.step - state.consecutive_bad + 1
    session.metrics.log("stop", step=state.step, reason="non-finite", elapsed=session.elapsed(state))
    raise _non_finite_error(
        session,
        state,
        f"the loss or gradients were not finite for {state.consecutive_bad} consecutive steps "
        f"(steps {first}-{state.step}; max_bad_steps={session.cfg.max_bad_steps})",
    )
