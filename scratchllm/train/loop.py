"""The one training loop: pretraining and every fine-tune run through :func:`train`.

One optimizer step, in the order the code below performs it:

1. set the learning rate for this step (a pure function of the step, :func:`~.optim.lr_at`);
2. for each of ``grad_accum_steps`` micro-batches: fetch a batch from the task's
   :class:`~.task.BatchSource`, compute the loss (``task.loss``), ``backward()`` on
   ``loss / grad_accum_steps`` — gradients *add up* in ``.grad``, so K micro-batches of B make
   one step on a batch of K*B. Under DDP the gradient all-reduce is skipped (``no_sync``) on all
   but the last micro-batch, since only the final sum needs averaging across processes;
3. measure the global gradient norm and clip it to ``grad_clip``;
4. **check before stepping**: a non-finite loss or gradient norm (on *any* rank; one tiny
   all-reduce makes every rank agree) means this step is thrown away — weights and optimizer
   moments stay bit-identical — and counted. ``max_bad_steps`` bad steps in a row abort the run
   with exit code 3, keeping the last good checkpoint. An optional z-score test also skips
   isolated loss *spikes*;
5. ``optimizer.step()`` and drop the gradients (``set_to_none``: frees memory, skips a memset);
6. every so often: log (``metrics.jsonl``, progress bar), evaluate (val loss, perplexity, a
   sample, ``best.safetensors``), save a checkpoint.

**Exact resume.** A checkpoint stores the weights, the optimizer moments and a *trainer state*:
the step, counters, the spike window, every random generator (python, numpy, torch CPU/CUDA —
dropout draws from torch's) and the data cursor of every rank. Restoring all of it makes
``k steps + resume + (N - k) steps`` bit-identical to ``N steps`` on the same machine. Samples at
eval time draw from a *forked* generator so that printing samples never changes training.

**Stopping.** SIGINT (Ctrl-C) or SIGTERM make the loop finish the current step, save a checkpoint
and return (``TrainResult.interrupted``); a second Ctrl-C stops immediately.

**Speed.** The loop reads one small tensor back from the device per step (the finiteness flag and
the loss, all-reduced together); everything else stays on the device. Evaluation, plotting and
checkpoints happen only at their intervals, and their time is excluded from tokens/s.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scratchllm.config import to_dict
from scratchllm.errors import ScratchLLMError
from scratchllm.train import checkpoint
from scratchllm.train.config import TrainConfig
from scratchllm.train.distributed import init_distributed
from scratchllm.train.metrics import PLOT_FILE, MetricsLogger, peak_rss_mb, plot_losses
from scratchllm.train.optim import build_optimizer, lr_at, set_lr
from scratchllm.train.state import (
    capture_rng_state,
    env_fingerprint,
    fingerprint_differences,
    restore_rng_state,
)
from scratchllm.train.task import Task

#: Exit code of a run stopped because the loss/gradients stayed non-finite (documented in the README).
EXIT_NON_FINITE = 3
#: Files a new run writes into its directory; ``force=True`` removes stale ones first.
RUN_FILES = ("checkpoints", "model.safetensors", "best.safetensors", "metrics.jsonl", PLOT_FILE)
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


# ============================================================================ small helpers
class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it once per step (all ranks agree via all-reduce)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.reason = signal.Signals(signum).name
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


def _grad_norm(params: list[torch.Tensor], clip: float) -> torch.Tensor:
    """Global L2 norm of all gradients (before clipping); clips in place when ``clip > 0``."""
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, clip)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if get_total_norm is not None:
        return get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _autocast(device: torch.device, cfg: TrainConfig) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA ("auto" or "bfloat16"); full float32 everywhere else."""
    if cfg.dtype == "bfloat16" and device.type != "cuda":
        raise ScratchLLMError("dtype bfloat16 (autocast) is only supported on CUDA; use --set dtype=float32")
    if device.type == "cuda" and cfg.dtype in ("auto", "bfloat16") and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _on_main(env: Any, fn: Callable[[], Any]) -> None:
    """Run ``fn`` on rank 0 only; if it raises there, every rank raises (nobody waits forever)."""
    error = None
    if env.is_main:
        try:
            fn()
        except ScratchLLMError as err:
            error = err
    if not env.all_agree(error is None):
        raise error or ScratchLLMError("rank 0 stopped with an error (see its message)")


def _prepare_run_dir(run_dir: Path, *, resume: bool, force: bool) -> None:
    """A new run needs an empty directory (or ``force``); ``resume`` needs an existing run."""
    if resume:
        if not run_dir.is_dir():
            raise ScratchLLMError(f"cannot resume: {run_dir} does not exist; start a run without --resume")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise ScratchLLMError(f"output directory {run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not force:
            raise ScratchLLMError(
                f"output directory {run_dir} already contains files; pass --resume to continue that run, "
                "--force to start over in it, or choose another --out"
            )
        # Starting over: stale checkpoints would otherwise be picked up by a later --resume.
        for name in RUN_FILES:
            p = run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


# ============================================================================ the loop
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
) -> TrainResult:
    """Train ``model`` on ``task`` for ``cfg.max_steps`` optimizer steps, saving into ``run_dir``.

    Which parameters train is decided by the caller (``requires_grad``); the optimizer sees only
    those. ``model`` is moved to the configured device. ``resume=True`` continues from the newest
    valid checkpoint in ``run_dir`` (weights, optimizer, RNGs, data cursor — bit-exact when the
    environment is unchanged). ``force=True`` starts over in a populated ``run_dir``.
    ``model_config`` (default ``model.config``) and ``extra_config`` go into ``config.json``.
    ``stop_at`` pauses after that step as if interrupted (a checkpoint is saved): useful for
    time-sliced training and for testing resume. ``echo`` receives human-readable messages
    (samples, warnings, saves); the CLI prints them.

    Raises :class:`ScratchLLMError` for user errors, with ``exit_code`` 3 when the loss stayed
    non-finite for ``max_bad_steps`` consecutive steps.
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    say = echo or (lambda msg: None)
    env = init_distributed(cfg.device)
    device = torch.device(env.device)
    if model_config is None:
        model_config = getattr(model, "config", None)
    if stop_at is not None and stop_at < 1:
        raise ScratchLLMError(f"stop_at must be >= 1 (got {stop_at})")

    _on_main(env, lambda: _prepare_run_dir(run_dir, resume=resume, force=force))

    # --- seeds (a resumed run overwrites all of them with the saved states below) ---
    import random

    import numpy as np

    random.seed(cfg.seed + env.rank)
    np.random.seed((cfg.seed + env.rank) % 2**32)
    torch.manual_seed(cfg.seed + env.rank)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~free speed on Ampere+
        torch.backends.cudnn.allow_tf32 = True

    model.to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(model, cfg, device.type)
    source = task.train_batches(seed=cfg.seed, rank=env.rank, world_size=env.world_size)

    # --- state that a checkpoint carries ---
    step = 0
    tokens_seen = 0
    best_val: float | None = None
    skipped_total = 0
    consecutive_bad = 0
    consecutive_spikes = 0
    spike_window: deque[float] = deque(maxlen=cfg.spike_window)
    elapsed_before = 0.0
    resumed_from: int | None = None
    fingerprint = env_fingerprint(device=device, world_size=env.world_size)
    metrics = MetricsLogger(run_dir, enabled=env.is_main)

    if resume:
        state, ckpt_path, skipped = checkpoint.resume(run_dir, model, optimizer)
        for why in skipped:
            say(f"warning: skipped a damaged checkpoint: {why}")
        saved_ws = int(state.get("world_size", 1))
        if saved_ws != env.world_size and not allow_world_size_change:
            raise ScratchLLMError(
                f"this run was trained with {saved_ws} process(es) and is resumed with {env.world_size}; "
                "each process would read different data, so the result cannot match an uninterrupted run. "
                "Pass --allow-world-size-change to continue anyway"
            )
        for diff in fingerprint_differences(state.get("environment"), fingerprint):
            msg = f"resume will not be bit-exact: {diff}"
            if echo is None:
                warnings.warn(msg, ResumeWarning, stacklevel=2)
            say(f"warning: {msg}")
        step = int(state["step"])
        resumed_from = step
        tokens_seen = int(state.get("tokens_seen", 0))
        best_val = state.get("best_val_loss")
        skipped_total = int(state.get("skipped_steps", 0))
        consecutive_bad = int(state.get("consecutive_bad", 0))
        consecutive_spikes = int(state.get("consecutive_spikes", 0))
        spike_window.extend(float(x) for x in state.get("spike_window", []))
        elapsed_before = float(state.get("elapsed", 0.0))
        rngs, datas = state.get("rng") or [], state.get("data") or []
        if saved_ws == env.world_size and len(rngs) == env.world_size and len(datas) == env.world_size:
            restore_rng_state(rngs[env.rank])
            source.load_state_dict(datas[env.rank])
        else:
            # A deliberate world-size change: keep the data position (rank 0's), fresh dropout RNGs.
            torch.manual_seed(cfg.seed + env.rank + 7919 * step)
            try:
                source.load_state_dict(datas[0], strict=False)  # type: ignore[call-arg]
            except TypeError:
                source.load_state_dict(datas[0])
        metrics.truncate_after(step)
        say(f"resumed from {ckpt_path} (step {step})")
        if step >= cfg.max_steps:
            say(
                f"the run already reached max_steps={cfg.max_steps}; "
                "raise it (--set max_steps=N) to train more"
            )

    _on_main(
        env,
        lambda: checkpoint.save_run_files(
            run_dir,
            None,
            arch=arch,
            model_config=model_config,
            train_config=cfg,
            tokenizer=tokenizer,
            extra=extra_config,
        ),
    )

    # --- wrappers for speed and for several processes ---
    train_model: Any = model
    if cfg.compile:
        train_model = torch.compile(model)
    if env.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # A Mixture-of-Experts step may route no token to some expert, leaving its weights without a
        # gradient; DDP must then look for unused parameters (a little slower, so only then).
        moe = getattr(getattr(model, "config", None), "n_experts", 0) > 0
        train_model = DDP(
            train_model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=moe,
        )
    autocast = _autocast(device, cfg)

    # --- bookkeeping for logs ---
    result = TrainResult(
        run_dir=run_dir,
        step=step,
        tokens_seen=tokens_seen,
        elapsed=elapsed_before,
        tokens_per_s=0.0,
        final_loss=None,
        best_val_loss=best_val,
        skipped_steps=skipped_total,
        resumed_from=resumed_from,
    )
    window_losses: list[float] = []
    window_skipped = 0
    window_tokens = 0
    window_extra: dict[str, Any] = {}
    excluded = 0.0  # seconds spent in eval/sampling/saving since the last log (not training time)
    last_log_t = time.perf_counter()
    last_plot_t = time.perf_counter()
    train_tokens_total, train_seconds_total = 0, 0.0
    last_ckpt: Path | None = None
    stop = _StopFlag()

    bar = None
    if env.is_main and progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.max_steps,
            initial=min(step, cfg.max_steps),
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=None,  # off when stderr is not a terminal (logs, CI)
        )

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t_start

    def trainer_state() -> dict[str, Any]:
        """The loop's side of a checkpoint (every rank's RNGs and data cursor, gathered)."""
        rngs = env.gather_json(capture_rng_state())
        datas = env.gather_json(source.state_dict())
        return {
            "step": step,
            "tokens_seen": tokens_seen,
            "best_val_loss": best_val,
            "skipped_steps": skipped_total,
            "consecutive_bad": consecutive_bad,
            "consecutive_spikes": consecutive_spikes,
            "spike_window": list(spike_window),
            "elapsed": elapsed(),
            "world_size": env.world_size,
            "rng": rngs,
            "data": datas,
            "environment": fingerprint,
            "train_config": to_dict(cfg),
        }

    def save() -> Path | None:
        """Commit a checkpoint on rank 0; every rank learns whether it worked."""
        # A finite loss can still produce an update that overflows the weights; never let such
        # weights replace the last good checkpoint. (All ranks hold the same weights.)
        if not _all_finite(model.parameters()):
            kept = checkpoint.find_resumable_checkpoint(run_dir)[0] if env.is_main else None
            metrics.log("stop", step=step, reason="non-finite weights", elapsed=elapsed())
            raise ScratchLLMError(
                f"training stopped at step {step}: the weights are no longer finite (an update "
                "overflowed); "
                + (f"the last good checkpoint is {kept}" if kept else "no checkpoint was saved yet")
                + " — try a lower lr, more warmup_steps or grad_clip",
                exit_code=EXIT_NON_FINITE,
            )
        state = trainer_state()  # collective: every rank takes part
        saved: list[Path] = []
        _on_main(
            env,
            lambda: saved.append(
                checkpoint.save_checkpoint(
                    run_dir, step=step, model=model, optimizer=optimizer, trainer_state=state
                )
            ),
        )
        return saved[0] if saved else None

    def evaluate() -> dict[str, float]:
        out: dict[str, float] = {}
        if cfg.eval_steps > 0 and env.is_main:
            model.eval()  # dropout off; the plain model (no DDP wrapper: no collectives on one rank)
            with torch.no_grad(), autocast:
                out = dict(task.evaluate(model, max_batches=cfg.eval_steps))
            model.train()
        return out

    def sample() -> str | None:
        if not env.is_main:
            return None
        # Fork the RNGs: drawing a sample must not change what training draws next.
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), autocast, torch.no_grad():
            torch.manual_seed(cfg.seed + step)
            text = task.sample(model)
        model.train()
        return text

    stop.install()
    try:
        while step < cfg.max_steps:
            lr = lr_at(step, cfg)
            set_lr(optimizer, lr)

            # ---- forward/backward over the micro-batches ----
            loss_sum = torch.zeros((), device=device)
            step_tokens = 0
            extra: dict[str, Any] = {}
            for micro in range(cfg.grad_accum_steps):
                batch = _to_device(source.next_batch(), device)
                step_tokens += _batch_tokens(batch)
                last_micro = micro == cfg.grad_accum_steps - 1
                sync_ctx = (
                    train_model.no_sync() if env.enabled and not last_micro else contextlib.nullcontext()
                )
                with sync_ctx:
                    with autocast:
                        loss, extra = task.loss(train_model, batch)
                    (loss / cfg.grad_accum_steps).backward()
                loss_sum += loss.detach().float()
            grad_norm = _grad_norm(params, cfg.grad_clip)

            # ---- one sync per step: mean loss, "anything non-finite?", "stop requested?" ----
            grad_norm = grad_norm.to(device=device, dtype=torch.float32)
            local_bad = ~(torch.isfinite(loss_sum) & torch.isfinite(grad_norm))
            stats = torch.stack(
                [
                    loss_sum / cfg.grad_accum_steps,
                    local_bad.float(),
                    torch.tensor(float(stop.reason is not None), device=device),
                    grad_norm,  # the same on every rank (DDP averaged the gradients)
                ]
            )
            env.all_reduce_sum(stats)
            step_loss, n_bad, n_stop, gnorm = stats.tolist()
            step_loss /= env.world_size
            gnorm /= env.world_size

            # ---- decide: step, or skip (bad numbers / loss spike) ----
            reason = None
            if n_bad > 0:
                reason = "non-finite"
            elif cfg.spike_zscore > 0 and len(spike_window) >= min(10, cfg.spike_window):
                mean = sum(spike_window) / len(spike_window)
                std = math.sqrt(sum((x - mean) ** 2 for x in spike_window) / (len(spike_window) - 1))
                z = (step_loss - mean) / max(std, 1e-8)
                if z > cfg.spike_zscore and consecutive_spikes < cfg.max_bad_steps:
                    reason = f"loss spike (z={z:.1f})"
            if reason is None:
                optimizer.step()
                consecutive_bad = consecutive_spikes = 0
                spike_window.append(step_loss)
                window_losses.append(step_loss)
                result.history.append(step_loss)
            else:
                skipped_total += 1
                window_skipped += 1
                result.history.append(step_loss)
                if reason == "non-finite":
                    consecutive_bad += 1
                else:
                    consecutive_spikes += 1
                metrics.log(
                    "skip",
                    step=step + 1,
                    reason=reason,
                    loss=step_loss,
                    grad_norm=gnorm,
                    lr=lr,
                    elapsed=elapsed(),
                )
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += step_tokens * env.world_size
            window_tokens += step_tokens * env.world_size
            if extra:
                window_extra = extra
            if bar is not None:
                bar.update(1)

            if consecutive_bad >= cfg.max_bad_steps:
                first = step - consecutive_bad + 1
                kept = checkpoint.find_resumable_checkpoint(run_dir)[0] if env.is_main else None
                metrics.log("stop", step=step, reason="non-finite", elapsed=elapsed())
                raise ScratchLLMError(
                    f"training stopped at step {step}: the loss or gradients were not finite for "
                    f"{consecutive_bad} consecutive steps (steps {first}-{step}; max_bad_steps="
                    f"{cfg.max_bad_steps}); "
                    + (f"the last good checkpoint is {kept}" if kept else "no checkpoint was saved yet")
                    + " — try a lower lr, more warmup_steps or grad_clip",
                    exit_code=EXIT_NON_FINITE,
                )

            final = step >= cfg.max_steps
            stopping = n_stop > 0 or (stop_at is not None and step >= stop_at)

            # ---- log ----
            if step % cfg.log_interval == 0 or final or stopping:
                now = time.perf_counter()
                seconds = max(now - last_log_t - excluded, 1e-9)
                tps = window_tokens / seconds
                train_tokens_total += window_tokens
                train_seconds_total += seconds
                mean_loss = sum(window_losses) / len(window_losses) if window_losses else float("nan")
                result.final_loss = mean_loss if window_losses else result.final_loss
                fields = {
                    "step": step,
                    "loss": mean_loss,
                    "lr": lr,
                    "grad_norm": gnorm,
                    "tokens_per_s": round(tps, 1),
                    "tokens_seen": tokens_seen,
                    "elapsed": round(elapsed(), 3),
                    "skipped": window_skipped,
                    "peak_rss_mb": peak_rss_mb(),
                    **{k: _as_float(v) for k, v in window_extra.items()},
                }
                metrics.log("train", **fields)
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}", refresh=False
                    )
                window_losses, window_skipped, window_tokens, excluded = [], 0, 0, 0.0
                last_log_t = now

            # ---- evaluate (+ sample, best weights) ----
            t_extra = time.perf_counter()
            due_eval = cfg.eval_steps > 0 and (
                final or (cfg.eval_interval > 0 and step % cfg.eval_interval == 0)
            )
            if cfg.sample_interval is None:  # with every evaluation
                due_sample = due_eval
            else:
                due_sample = cfg.sample_interval > 0 and (final or step % cfg.sample_interval == 0)
            if reason == "non-finite":
                due_eval = due_sample = False  # the model is unchanged; evaluate after a good step
            if due_eval or due_sample:
                scores = evaluate() if due_eval else {}
                text = sample() if due_sample else None
                if env.is_main:
                    if text is not None:
                        result.samples.append(text)
                        say(f"--- sample at step {step} ---\n{text}\n---")
                    if scores:
                        result.last_eval = scores
                        val = scores.get("val_loss")
                        if val is not None and math.isfinite(val) and (best_val is None or val < best_val):
                            best_val = val
                            checkpoint.save_best(run_dir, model)
                        result.best_val_loss = best_val
                        shown = ", ".join(
                            f"{k} {v:.4f}"
                            for k, v in scores.items()
                            if isinstance(v, float) and k not in _NOT_SHOWN
                        )
                        say(f"step {step}: {shown}")
                    if scores or text is not None:
                        metrics.log(
                            "eval",
                            step=step,
                            **{k: v for k, v in scores.items()},
                            sample=text,
                            elapsed=elapsed(),
                        )
                    if scores and time.perf_counter() - last_plot_t > PLOT_EVERY_S and not final:
                        plot_losses(
                            metrics.path, run_dir / PLOT_FILE, title=f"training curves: {run_dir.name}"
                        )
                        last_plot_t = time.perf_counter()

            # ---- checkpoint ----
            if final or stopping or (cfg.save_interval > 0 and step % cfg.save_interval == 0):
                last_ckpt = save() or last_ckpt
            excluded += time.perf_counter() - t_extra

            if stopping and not final:
                result.interrupted = stop.reason or "stop_at"
                metrics.log("stop", step=step, reason=result.interrupted, elapsed=elapsed())
                break
    finally:
        stop.uninstall()
        if bar is not None:
            bar.close()
        metrics.close()

    if env.is_main:
        plot_losses(metrics.path, run_dir / PLOT_FILE, title=f"training curves: {run_dir.name}")
    result.step = step
    result.tokens_seen = tokens_seen
    result.elapsed = elapsed()
    result.tokens_per_s = train_tokens_total / train_seconds_total if train_seconds_total else 0.0
    result.best_val_loss = best_val
    result.skipped_steps = skipped_total
    result.checkpoint = last_ckpt
    return result
