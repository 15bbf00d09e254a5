"""Before training starts: how big is this run, will it fit in memory, and how long will it take?

Training memory has four parts:

* **weights** — every parameter, 4 bytes each in fp32;
* **gradients** — one per *trainable* parameter, same size;
* **optimizer state** — AdamW keeps two moments per trainable parameter (8 bytes in fp32);
* **the framework** — what PyTorch itself needs once training starts (autograd, the optimizer's
  compiled helpers, allocator caches): measured at 350-450 MiB on CPU, counted as 400 MiB;
* **activations** — what the forward pass saves for the backward pass. Per token and layer of a
  GPT block in fp32 that is the inputs of both norms, of the q/k/v projection, q/k/v themselves,
  the attention output, the FFN's input, pre-activation and activation (``4 * (7C + fc + hidden)``
  bytes) plus, when attention materialises them, the softmax weights (``4 * n_head * T``); then the
  logits and their gradient (``8 * vocab`` per token). This follows the accounting of Korthikanti
  et al. (2022), "Reducing Activation Recomputation in Large Transformer Models", in fp32.

:func:`estimate_run` adds them up from the model and the batch shape — before anything is
allocated — so a run that cannot fit is refused with a clear message instead of swapping the
machine to a standstill. :func:`measure_step` then times one real forward/backward pass (with
forked RNGs and its own batch, so training itself is unchanged) to turn steps into minutes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from scratchllm.device import available_memory_bytes, peak_rss_mb
from scratchllm.errors import ScratchLLMError

MiB = 1024 * 1024
#: PyTorch's own footprint during training (see the module docstring); a CUDA context is similar.
FRAMEWORK_BYTES = 400 * MiB


@dataclass
class RunEstimate:
    params: int
    trainable: int
    weights_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    available_bytes: int | None
    max_steps: int
    framework_bytes: int = FRAMEWORK_BYTES
    step_seconds: float | None = None
    measured_peak_bytes: int | None = None

    @property
    def total_bytes(self) -> int:
        return (
            self.weights_bytes
            + self.grads_bytes
            + self.optimizer_bytes
            + self.activations_bytes
            + self.framework_bytes
        )

    @property
    def fits(self) -> bool:
        return self.available_bytes is None or self.total_bytes <= self.available_bytes

    def describe(self) -> list[str]:
        """Lines a user reads before a long run."""

        def mb(n: int) -> str:
            return f"{n / MiB:,.0f} MiB"

        trainable = f" ({self.trainable:,} trainable)" if self.trainable != self.params else ""
        lines = [
            f"model: {self.params:,} parameters{trainable}",
            f"estimated peak memory: {mb(self.total_bytes)} = weights {mb(self.weights_bytes)} + gradients "
            f"{mb(self.grads_bytes)} + AdamW state {mb(self.optimizer_bytes)} + activations "
            f"{mb(self.activations_bytes)} + PyTorch {mb(self.framework_bytes)}"
            + (f" (available: {mb(self.available_bytes)})" if self.available_bytes is not None else ""),
        ]
        if self.step_seconds is not None:
            total = self.step_seconds * self.max_steps
            lines.append(
                f"measured {self.step_seconds:.3g} s per step -> about {_duration(total)} for "
                f"{self.max_steps:,} steps"
            )
        return lines


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _block_activation_bytes(cfg: Any, T: int) -> float:
    """Saved-for-backward bytes per token of one transformer block (fp32)."""
    C = cfg.n_embd
    hidden = getattr(cfg, "hidden_dim", 4 * C)
    fc_out = 2 * hidden if getattr(cfg, "activation", "gelu") == "swiglu" else hidden
    return 4 * (7 * C + fc_out + hidden) + 4 * cfg.n_head * T


def estimate_run(model: Any, cfg: Any, *, batch_size: int, seq_len: int, device: str = "cpu") -> RunEstimate:
    """The memory of a training run of ``model`` with micro-batches of ``batch_size x seq_len``."""
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    bytes_per = 4  # fp32 master weights (bf16 autocast on CUDA keeps them fp32 too)
    mcfg = model.config
    layers = getattr(mcfg, "n_layer", 1) + getattr(mcfg, "decoder_layers", 0)
    vocab = getattr(mcfg, "vocab_size", None) or getattr(mcfg, "tgt_vocab_size", 0)
    per_token = layers * _block_activation_bytes(mcfg, seq_len) + 8 * vocab + 8 * mcfg.n_embd
    activations = int(batch_size * seq_len * per_token)
    return RunEstimate(
        params=n,
        trainable=trainable,
        weights_bytes=n * bytes_per,
        grads_bytes=trainable * bytes_per,
        optimizer_bytes=2 * trainable * bytes_per,
        activations_bytes=activations,
        available_bytes=available_memory_bytes(device),
        max_steps=cfg.max_steps,
    )


def check_fits(estimate: RunEstimate) -> None:
    """Refuse a run whose estimated peak exceeds the memory available (the CLI's ``--yes`` skips it)."""
    if not estimate.fits:
        raise ScratchLLMError(
            f"this run needs about {estimate.total_bytes / MiB:,.0f} MiB but only "
            f"{estimate.available_bytes / MiB:,.0f} MiB are available; use a smaller model, batch_size or "
            "context_length (e.g. --preset small), gradient accumulation, or pass --yes to try anyway"
        )


def measure_step(model: Any, task: Any, cfg: Any, device: Any) -> tuple[float, int | None]:
    """Seconds for one forward + backward micro-batch step (times ``grad_accum_steps``), and the
    peak memory seen (bytes; CUDA allocations or the process's RSS).

    Uses forked RNGs and a batch source of its own, and drops the gradients afterwards, so the
    training run that follows is exactly what it would have been without the measurement.
    """
    import torch

    from scratchllm.device import model_device

    device = model_device(model)
    source = task.train_batches(seed=cfg.seed + 1, rank=0, world_size=1)
    devices = [device.index or 0] if device.type == "cuda" else []
    was_training = model.training
    model.train()
    timings = []
    with torch.random.fork_rng(devices=devices):
        for _ in range(2):
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in source.next_batch().items()}
            t0 = time.perf_counter()
            loss, _ = task.loss(model, batch)
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timings.append(time.perf_counter() - t0)
            if timings[0] > 2.0:  # slow steps: the first one is representative enough
                break
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
    else:
        peak = int(peak_rss_mb() * MiB)
    return timings[-1] * cfg.grad_accum_steps, peak
