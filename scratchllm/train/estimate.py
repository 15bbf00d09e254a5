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
  et al. (2022), "Reducing Activation Recomputation in Large Transformer Models", in fp32 (half
  of it for the blocks when they compute in bf16 on CUDA). With **activation checkpointing** a
  block keeps only its input (``C`` values per token) and recomputes the rest in the backward
  pass, so the layers cost ``layers * C`` per token plus one block's full activations.

**Several processes** (the figures are per process; ``world_size`` K, ``cfg.strategy``):

* **ddp** — every process holds everything above, plus DDP's gradient buckets (a second copy of
  the gradients that the all-reduce works on);
* **fsdp** — weights, gradients and AdamW state are split K ways (``ceil(P / K)`` each), plus what
  is *gathered* while computing: the root unit (embeddings, head) and two blocks (the one
  computing and the one prefetched) in the compute dtype, and one block's full gradients before
  they are reduce-scattered; with ``fsdp_reshard_after_forward=false`` the whole model stays
  gathered between the forward and backward passes. Activations do not shrink with K (each
  process computes its own micro-batch): activation checkpointing is what cuts them.

CPU processes on one machine share its memory: the check divides the available memory among them.

:func:`estimate_run` adds them up from the model and the batch shape — before anything is
allocated — so a run that cannot fit is refused with a clear message instead of swapping the
machine to a standstill. :func:`measure_step` then times one real forward/backward pass (with
forked RNGs and its own batch, so training itself is unchanged) to turn steps into minutes.
"""

from __future__ import annotations

import os
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
    #: processes training together, and how they share the work ("single", "ddp", "fsdp").
    world_size: int = 1
    strategy: str = "single"
    #: fsdp: weights gathered while computing + one block's unsharded gradients; ddp: its buckets.
    communication_bytes: int = 0
    activation_checkpointing: bool = False
    #: "float32", or "bfloat16" (autocast on CUDA; FSDP gathers bf16 weights).
    compute_dtype: str = "float32"

    @property
    def total_bytes(self) -> int:
        return (
            self.weights_bytes
            + self.grads_bytes
            + self.optimizer_bytes
            + self.activations_bytes
            + self.framework_bytes
            + self.communication_bytes
        )

    def parts(self) -> dict[str, int]:
        """The figures by name, bytes per process (what ``inspect`` tabulates)."""
        return {
            "weights": self.weights_bytes,
            "gathered" if self.strategy == "fsdp" else "ddp_buckets": self.communication_bytes,
            "gradients": self.grads_bytes,
            "optimizer": self.optimizer_bytes,
            "activations": self.activations_bytes,
            "framework": self.framework_bytes,
            "total": self.total_bytes,
        }

    @property
    def fits(self) -> bool:
        return self.available_bytes is None or self.total_bytes <= self.available_bytes

    def describe(self) -> list[str]:
        """Lines a user reads before a long run."""

        def mb(n: int) -> str:
            return f"{n / MiB:,.0f} MiB"

        trainable = f" ({self.trainable:,} trainable)" if self.trainable != self.params else ""
        who, shard, extra = "", "", ""
        if self.strategy != "single":
            who = f" per process ({self.strategy}, {self.world_size} processes)"
        if self.strategy == "fsdp":
            shard = f" (1/{self.world_size})"
            extra = f" + gathered weights {mb(self.communication_bytes)}"
        elif self.communication_bytes:
            extra = f" + DDP buckets {mb(self.communication_bytes)}"
        ckpt = " (checkpointed)" if self.activation_checkpointing else ""
        lines = [
            f"model: {self.params:,} parameters{trainable}",
            f"estimated peak memory{who}: {mb(self.total_bytes)} = weights{shard} {mb(self.weights_bytes)}"
            f"{extra} + gradients{shard} {mb(self.grads_bytes)} + AdamW state{shard} "
            f"{mb(self.optimizer_bytes)} + activations{ckpt} {mb(self.activations_bytes)} + PyTorch "
            f"{mb(self.framework_bytes)}"
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


def estimate_run(
    model: Any,
    cfg: Any,
    *,
    batch_size: int,
    seq_len: int,
    device: str = "cpu",
    world_size: int | None = None,
    processes_sharing_memory: int | None = None,
    available_bytes: int | None | bool = True,
) -> RunEstimate:
    """The memory of one process of a training run of ``model`` with micro-batches of
    ``batch_size x seq_len`` (``cfg``: :class:`~.config.TrainConfig` — its ``strategy``,
    ``activation_checkpointing``, ``fsdp_reshard_after_forward`` and ``dtype`` count).

    ``world_size`` is the number of processes (default: this launch's, from torchrun's
    environment); ``processes_sharing_memory`` how many of them share this machine's memory
    (default: torchrun's ``LOCAL_WORLD_SIZE`` on the CPU, else 1). ``available_bytes``: True
    measures the free memory of ``device``; pass a number, or None for "unknown" (``inspect``).
    """
    from scratchllm.device import world_size as launched_world_size
    from scratchllm.train.distributed import transformer_blocks

    if world_size is None:
        world_size = launched_world_size()
    if processes_sharing_memory is None:
        cpu = str(device) == "cpu"
        processes_sharing_memory = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if cpu else 1
    strategy = cfg.strategy if world_size > 1 else "single"
    fsdp = strategy == "fsdp"
    bf16 = str(device).startswith("cuda") and cfg.dtype in ("auto", "bfloat16")

    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    k = world_size if fsdp else 1

    def share(count: int) -> int:  # FSDP: ceil(count / K) per process
        return -(-count // k)

    bytes_per = 4  # fp32 master weights (bf16 autocast on CUDA keeps them fp32 too)
    blocks = [sum(p.numel() for p in b.parameters()) for b in transformer_blocks(model)]
    largest = max(blocks, default=0)
    communication = 0
    if fsdp:
        gathered_bytes = 2 if bf16 else 4
        in_use = n if not cfg.fsdp_reshard_after_forward else (n - sum(blocks)) + 2 * largest
        communication = min(in_use, n) * gathered_bytes + largest * (bytes_per + (2 if bf16 else 0))
    elif strategy == "ddp":
        communication = trainable * bytes_per

    mcfg = model.config
    layers = getattr(mcfg, "n_layer", 1) + getattr(mcfg, "decoder_layers", 0)
    vocab = getattr(mcfg, "vocab_size", None) or getattr(mcfg, "tgt_vocab_size", 0)
    block = _block_activation_bytes(mcfg, seq_len) * (0.5 if bf16 else 1.0)
    if cfg.activation_checkpointing:
        stack = layers * (2 if bf16 else 4) * mcfg.n_embd + block  # inputs kept + one block recomputed
    else:
        stack = layers * block
    per_token = stack + 8 * vocab + 8 * mcfg.n_embd
    activations = int(batch_size * seq_len * per_token)
    if available_bytes is True:
        available_bytes = available_memory_bytes(device)
        if available_bytes is not None and processes_sharing_memory > 1:
            available_bytes //= processes_sharing_memory
    return RunEstimate(
        params=n,
        trainable=trainable,
        weights_bytes=share(n) * bytes_per,
        grads_bytes=share(trainable) * bytes_per,
        optimizer_bytes=2 * share(trainable) * bytes_per,
        activations_bytes=activations,
        available_bytes=available_bytes if available_bytes is not False else None,
        max_steps=cfg.max_steps,
        world_size=world_size,
        strategy=strategy,
        communication_bytes=communication,
        activation_checkpointing=bool(cfg.activation_checkpointing),
        compute_dtype="bfloat16" if bf16 else "float32",
    )


def check_fits(estimate: RunEstimate) -> None:
    """Refuse a run whose estimated peak exceeds the memory available (the CLI's ``--yes`` skips it)."""
    if not estimate.fits:
        raise ScratchLLMError(
            f"this run needs about {estimate.total_bytes / MiB:,.0f} MiB but only "
            f"{estimate.available_bytes / MiB:,.0f} MiB are available; use a smaller model, batch_size or "
            "context_length (e.g. --preset small), gradient accumulation, --set activation_checkpointing=true"
            + (", more processes" if estimate.strategy == "fsdp" else ", --strategy fsdp under torchrun")
            + ", or pass --yes to try anyway"
        )


def measure_step(
    model: Any, task: Any, cfg: Any, device: Any, *, agree: Any = None
) -> tuple[float, int | None]:
    """Seconds for one forward + backward micro-batch step (times ``grad_accum_steps``), and the
    peak memory seen (bytes; CUDA allocations or the process's RSS).

    Uses forked RNGs and a batch source of its own, and drops the gradients afterwards, so the
    training run that follows is exactly what it would have been without the measurement.
    A sharded (FSDP) model is measured on every rank at once; ``agree(ok) -> bool`` (all ranks
    agree) then decides together whether a second pass is worth its time.
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
            more = timings[0] <= 2.0  # slow steps: the first one is representative enough
            if not (agree(more) if agree is not None else more):
                break
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
    else:
        peak = int(peak_rss_mb() * MiB)
    return timings[-1] * cfg.grad_accum_steps, peak
