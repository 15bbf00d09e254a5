"""TrainConfig: every knob of the one training loop, in one dataclass.

The values resolve in the project's usual order — these defaults, then a named preset's
``"train"`` section (:data:`scratchllm.model.config.PRESETS`), then ``--config file.toml``, then
``--set key=value`` — through :func:`scratchllm.config.resolve_configs`. The resolved config is
saved in the run directory's ``config.json`` so a run can always be repeated.

The defaults are sensible for a small GPT on a CPU; the GPT-2-sized recipes (lr 6e-4, betas
(0.9, 0.95), weight decay 0.1, grad clip 1.0) come from the GPT-2/GPT-3 papers via nanoGPT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from scratchllm.errors import ScratchLLMError

Device = Literal["auto", "cpu", "cuda", "mps"]
OptimizerName = Literal["adamw", "muon"]
Schedule = Literal["cosine", "wsd"]
DType = Literal["auto", "float32", "bfloat16"]
Strategy = Literal["ddp", "fsdp"]


@dataclass
class TrainConfig:
    # --- how long and how big ---
    #: optimizer steps to run (one step = grad_accum_steps micro-batches on every rank).
    max_steps: int = 1000
    #: sequences per micro-batch, per process.
    batch_size: int = 16
    #: tokens per training window; None means the model's context_length.
    context_length: int | None = None
    #: micro-batches whose gradients are summed before one optimizer step (a bigger batch for free).
    grad_accum_steps: int = 1

    # --- optimizer (AdamW) and learning-rate schedule ---
    lr: float = 1e-3
    #: floor of the cosine decay; None means lr / 10 (the Chinchilla recipe).
    min_lr: float | None = None
    #: steps of linear warm-up from 0 to lr before the cosine decay starts.
    warmup_steps: int = 100
    #: decoupled weight decay, applied only to matrices and embeddings (never to biases or norms).
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    #: clip the global gradient norm to this value; 0 disables clipping (the norm is still measured).
    grad_clip: float = 1.0
    #: use the fused AdamW kernel; None means "when this torch build and device offer it".
    fused_adamw: bool | None = None
    #: "adamw" for every parameter, or "muon": Muon (momentum, then Newton-Schulz orthogonalisation)
    #: for the 2-D hidden matrices and AdamW (the keys above) for embeddings, the output head,
    #: norms and biases. See scratchllm.train.optim.
    optimizer: OptimizerName = "adamw"
    #: Muon's peak learning rate; it follows the same warm-up and decay as ``lr`` (scaled by muon_lr/lr).
    muon_lr: float = 0.02
    #: Muon's decoupled weight decay (each step multiplies the matrices by 1 - lr * muon_weight_decay).
    muon_weight_decay: float = 0.0
    #: Muon's (Nesterov) momentum.
    muon_momentum: float = 0.95
    #: "cosine": warm-up, then half a cosine down to min_lr. "wsd" (warm-up, stable, decay): warm-up,
    #: hold lr, then fall linearly to min_lr over the last ``decay_frac`` of the steps.
    lr_schedule: Schedule = "cosine"
    #: the fraction of max_steps the "wsd" schedule spends decaying.
    decay_frac: float = 0.3

    # --- evaluation, samples, logging, checkpoints (intervals are in optimizer steps) ---
    #: evaluate on the val split every this many steps; 0 means only at the end of training.
    eval_interval: int = 250
    #: val batches per evaluation; 0 disables evaluation entirely.
    eval_steps: int = 20
    #: print a sample every this many steps; None means "at every evaluation", 0 means never.
    sample_interval: int | None = None
    #: new tokens in each sample.
    sample_tokens: int = 200
    #: write a checkpoint every this many steps; 0 means only at the end (and on SIGINT/SIGTERM).
    save_interval: int = 500
    #: how many checkpoints to keep; 0: the newest two while training and only the final one at
    #: the end. Keep more to compare checkpoints (the playground's training and embeddings views).
    keep_checkpoints: int = 0
    #: write a metrics.jsonl line (and refresh the progress bar) every this many steps.
    log_interval: int = 10
    #: when stderr is not a terminal (a log file, CI, nohup): a plain progress line at most every
    #: this many seconds instead of the bar; 0 turns those lines off.
    progress_interval: float = 30.0

    # --- reproducibility and hardware ---
    seed: int = 1337
    device: Device = "auto"
    #: CPU threads for torch's kernels; 0 keeps torch's default (one per core; see scratchllm.device).
    threads: int = 0
    #: "auto" = bfloat16 autocast on CUDA, float32 elsewhere.
    dtype: DType = "auto"
    #: wrap the model in torch.compile (slow to start; pays off on long GPU runs).
    compile: bool = False

    # --- several processes (torchrun) and memory ---
    #: how K processes share the work: "ddp" = every process holds the whole model, gradients and
    #: AdamW state (DistributedDataParallel); "fsdp" = each holds 1/K of them and gathers a
    #: block's weights only while it computes (FSDP2, ``fully_shard``). Ignored in one process.
    strategy: Strategy = "ddp"
    #: fsdp: free a block's gathered weights after its forward pass (and gather them again for
    #: the backward pass); false keeps them until the backward pass: faster, more memory.
    fsdp_reshard_after_forward: bool = True
    #: recompute each transformer block's activations during the backward pass instead of
    #: keeping them: much less activation memory for about one extra forward pass of compute.
    activation_checkpointing: bool = False

    # --- protection against bad steps ---
    #: abort (exit code 3) after this many consecutive steps with a non-finite loss or gradient.
    max_bad_steps: int = 5
    #: skip a step whose loss is this many standard deviations above the recent mean; 0 = off.
    #: After max_bad_steps spikes in a row the step is taken anyway: the loss level really changed.
    spike_zscore: float = 0.0
    #: how many recent losses the spike detector remembers.
    spike_window: int = 100

    def __post_init__(self) -> None:
        self.validate()

    @property
    def effective_min_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise ScratchLLMError(f"invalid train config: {msg}")

        for name in (
            "max_steps",
            "batch_size",
            "grad_accum_steps",
            "log_interval",
            "sample_tokens",
            "max_bad_steps",
        ):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in (
            "warmup_steps",
            "eval_interval",
            "eval_steps",
            "save_interval",
            "threads",
            "keep_checkpoints",
        ):
            if getattr(self, name) < 0:
                bad(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.context_length is not None and self.context_length < 1:
            bad(f"context_length must be >= 1 (got {self.context_length})")
        if self.sample_interval is not None and self.sample_interval < 0:
            bad(f"sample_interval must be >= 0 (got {self.sample_interval})")
        for name in (
            "lr",
            "min_lr",
            "weight_decay",
            "grad_clip",
            "spike_zscore",
            "progress_interval",
            "muon_lr",
            "muon_weight_decay",
            "muon_momentum",
            "decay_frac",
        ):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):  # NaN and inf would train garbage
                bad(f"{name} must be a finite number (got {value})")
        if not self.lr > 0:
            bad(f"lr must be > 0 (got {self.lr})")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            bad(f"min_lr must be between 0 and lr (got {self.min_lr}, lr {self.lr})")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.spike_zscore < 0:
            bad("weight_decay, grad_clip and spike_zscore must be >= 0")
        if self.progress_interval < 0:
            bad(f"progress_interval must be >= 0 (got {self.progress_interval})")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            bad(f"beta1 and beta2 must be in [0, 1) (got {self.beta1}, {self.beta2})")
        if not self.muon_lr > 0 or self.muon_weight_decay < 0 or not 0 <= self.muon_momentum < 1:
            bad(
                "muon_lr must be > 0, muon_weight_decay >= 0 and muon_momentum in [0, 1) "
                f"(got {self.muon_lr}, {self.muon_weight_decay}, {self.muon_momentum})"
            )
        if not 0 < self.decay_frac <= 1:
            bad(f"decay_frac must be in (0, 1] (got {self.decay_frac})")
        if self.spike_window < 2:
            bad(f"spike_window must be >= 2 (got {self.spike_window})")
