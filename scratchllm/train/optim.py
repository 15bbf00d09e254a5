"""The optimizers (AdamW, or Muon + AdamW) and the learning-rate schedule.

**AdamW** (the default, ``optimizer="adamw"``). Weight decay pulls weights towards zero so that no
single weight grows without need. It makes sense for the big matrices (linear layers, embeddings)
but not for biases and normalisation gains, whose job is to shift and scale — decaying a LayerNorm
gain towards 0 would fight the normalisation itself. So the parameters are split by shape: every
tensor with two or more dimensions is decayed, every 1-D tensor is not. That is the GPT-2/nanoGPT
rule.

**Muon** (``optimizer="muon"``; Jordan et al. 2024, the optimizer of the modded-nanoGPT speedruns).
For a hidden weight matrix W, AdamW scales every entry of the gradient on its own; Muon treats the
update as a *matrix*. It keeps a Nesterov momentum of the gradient, then replaces that matrix by
the nearest (semi-)orthogonal one, ``U V^T`` of its SVD ``U S V^T``, computed approximately by five
Newton-Schulz iterations. Every direction of the update then moves by the same amount, instead of
the few directions a raw gradient is dominated by. It only makes sense for 2-D matrices *inside*
the network: the token embedding (a lookup table, each row updated alone), the output head and the
1-D norms and biases stay with AdamW. :class:`MuonAdamW` runs the two side by side and looks like
one optimizer to the loop and to checkpoints (below).

The schedule is a pure function of the step: linear warm-up, then a cosine curve (or, with
``lr_schedule="wsd"``, a constant stretch and a final linear decay) down to ``min_lr``. Because it
holds no state, resuming a run needs nothing but the step number. Muon follows the same curve
scaled to its own peak ``muon_lr``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from scratchllm.train.config import TrainConfig

if TYPE_CHECKING:
    import torch


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): warm-up, then decay to min_lr.

    * steps ``0 .. warmup_steps-1`` rise linearly: ``lr * (step + 1) / warmup_steps`` (never 0,
      so the very first step already learns something);
    * ``lr_schedule="cosine"``: from ``warmup_steps`` to ``max_steps`` the rate follows half a
      cosine from ``lr`` down to ``min_lr``;
    * ``lr_schedule="wsd"`` (warm-up, stable, decay): the rate stays at ``lr`` until the last
      ``decay_frac`` of the steps, then falls linearly to ``min_lr`` at ``max_steps``;
    * past ``max_steps`` (a run extended on resume) it stays at ``min_lr``.
    """
    min_lr = cfg.effective_min_lr
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return min_lr
    if cfg.lr_schedule == "wsd":
        decay_start = max(cfg.warmup_steps, cfg.max_steps - round(cfg.decay_frac * cfg.max_steps))
        if step < decay_start:
            return cfg.lr
        return cfg.lr + (min_lr - cfg.lr) * (step - decay_start) / max(1, cfg.max_steps - decay_start)
    decay_steps = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = (step - cfg.warmup_steps) / decay_steps
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


def param_groups(
    model: torch.nn.Module, weight_decay: float, *, skip: frozenset[int] = frozenset()
) -> list[dict]:
    """Split the *trainable* parameters into a decayed group (>= 2-D) and a non-decayed one (1-D).

    Frozen parameters (``requires_grad=False``, e.g. a base model under LoRA) are left out
    entirely, so the optimizer keeps no state for them. Tied weights appear once because
    ``named_parameters`` de-duplicates shared tensors. Parameters whose ``id`` is in ``skip`` are
    left out too (Muon takes those).
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in skip:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def muon_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The hidden matrices Muon trains: the trainable weight of every ``nn.Linear`` inside the
    network — not an output head (a module named ``*head``) and not a weight shared with an
    embedding (a tied head). Embeddings, raw ``Parameter`` tables (LoRA, MoE experts), norms and
    biases are left to AdamW."""
    from torch import nn

    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    out, seen = [], set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name.rsplit(".", 1)[-1].endswith("head"):
            continue
        w = module.weight
        if w.requires_grad and w.dim() == 2 and id(w) not in embedded and id(w) not in seen:
            seen.add(id(w))
            out.append(w)
    return out


def newton_schulz(
    g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    """Muon's approximate orthogonalisation of a 2-D matrix ``g``: ``U S' V^T`` with every ``S'`` near 1.

    Scale ``g`` so its spectral norm is at most 1 (dividing by the Frobenius norm, which is larger),
    then apply ``steps`` times the quintic ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``. Each
    application pushes every singular value of ``X`` towards 1 and leaves ``U`` and ``V`` alone; the
    coefficients ``(a, b, c)`` of Keller Jordan's Muon are tuned to get there in five steps from
    anywhere in (0, 1], overshooting a little (the singular values end up in roughly [0.7, 1.2]). A
    wide matrix is iterated as is, a tall one transposed, so ``A`` is the smaller Gram matrix. The
    arithmetic runs in ``dtype`` (``torch.optim.Muon`` uses bfloat16, cheap on a GPU; on a CPU
    bfloat16 matmuls are emulated and two orders of magnitude slower than float32).
    """
    import torch

    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(g.dtype)


def _new_optimizer_class() -> type:
    """Define :class:`MuonAdamW` on first use, so importing this module does not import torch."""
    import torch

    class MuonAdamW(torch.optim.Optimizer):
        """Muon for the hidden matrices and AdamW for everything else, as **one** optimizer.

        The design: ``torch.optim.AdamW`` and ``torch.optim.Muon`` each do their own math, and
        this object owns their parameter groups and state. Its ``param_groups`` are the AdamW
        groups followed by the Muon groups (the very same dicts), its ``state`` is the one
        dictionary both read and write. So everything written for one optimizer just works:
        ``step`` and ``zero_grad``, the schedule setting each group's ``lr``, and
        ``state_dict``/``load_state_dict`` — which is how checkpoints store it (the moments
        ``exp_avg``/``exp_avg_sq``/``step`` of AdamW's parameters and ``momentum_buffer`` of
        Muon's, in one safetensors file, indexed over all groups in order).

        ``lr_scales`` holds each group's multiplier of the scheduled learning rate (1 for AdamW,
        ``muon_lr / lr`` for Muon); it comes from the config, not from a checkpoint, so a resumed
        run uses the ``muon_lr`` it is given, as it uses the ``lr`` it is given.
        """

        def __init__(self, adamw: torch.optim.AdamW, muon: torch.optim.Optimizer, muon_scale: float):
            self.adamw, self.muon = adamw, muon
            self._n_adamw = len(adamw.param_groups)
            super().__init__(adamw.param_groups + muon.param_groups, {})
            self.lr_scales = [1.0] * self._n_adamw + [muon_scale] * len(muon.param_groups)
            self._link()

        def _link(self) -> None:
            """Point both inner optimizers at this object's groups and state (again after a load)."""
            self.adamw.param_groups = self.param_groups[: self._n_adamw]
            self.muon.param_groups = self.param_groups[self._n_adamw :]
            self.adamw.state = self.muon.state = self.state

        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            self.adamw.step()
            self.muon.step()
            return loss

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            super().load_state_dict(state_dict)
            self._link()

    class Muon(torch.optim.Muon):
        """``torch.optim.Muon`` (its parameter groups, state and checks), stepping in float32 off CUDA.

        torch's step orthogonalises in bfloat16, which a GPU does fast and a CPU without AMX does
        about 300x slower than the float32 matmuls of the rest of the step (measured: ~5 s per step
        instead of ~15 ms for the char-shakespeare model). So on CUDA the step is torch's own; on
        any other device it is the same update in float32: Nesterov momentum ``buf <- lerp(buf, g,
        1 - momentum)``, ``u = lerp(g, buf, momentum)``, ``u <- newton_schulz(u)``, decoupled weight
        decay, then ``W <- W - lr * sqrt(max(1, rows / cols)) * u`` (torch's "original" lr rule).
        The state (``momentum_buffer``) is the same either way, so a checkpoint moves between the two.
        """

        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            if all(p.is_cuda for g in self.param_groups for p in g["params"]):
                return super().step(closure)
            from torch.optim._muon import _adjust_lr

            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for group in self.param_groups:
                params: list[torch.Tensor] = []
                grads: list[torch.Tensor] = []
                bufs: list[torch.Tensor] = []
                self._init_group(group, params, grads, bufs)
                lr, wd, momentum = float(group["lr"]), group["weight_decay"], group["momentum"]
                for p, grad, buf in zip(params, grads, bufs):
                    buf.lerp_(grad, 1 - momentum)
                    update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                    dtype = torch.bfloat16 if p.is_cuda else torch.float32
                    update = newton_schulz(
                        update, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype
                    )
                    p.mul_(1 - lr * wd)
                    p.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))
            return loss

    MuonAdamW.Muon = Muon
    return MuonAdamW


_MUON_ADAMW: type | None = None


def muon_adamw_class() -> type:
    """The :class:`MuonAdamW` class (a ``torch.optim.Optimizer``), defined on first use."""
    global _MUON_ADAMW
    if _MUON_ADAMW is None:
        _MUON_ADAMW = _new_optimizer_class()
    return _MUON_ADAMW


def fused_available(device_type: str) -> bool:
    """Whether this torch build has a fused AdamW kernel for ``device_type``."""
    import inspect

    import torch

    if "fused" not in inspect.signature(torch.optim.AdamW).parameters:
        return False
    return device_type in ("cuda", "cpu", "mps", "xpu")


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device_type: str) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` names, over the model's trainable parameters.

    AdamW is fused (one kernel per step) when available: the fused kernel updates every parameter
    in a single pass instead of a Python loop of small ops; on this project's CPU benchmark it is
    about 4 % faster per training step. ``"muon"`` gives a :class:`MuonAdamW`: Muon over
    :func:`muon_parameters` (``muon_lr``, ``muon_weight_decay``, ``muon_momentum``), AdamW over
    the rest (``lr``, ``weight_decay``, the betas).
    """
    import torch

    from scratchllm.errors import ScratchLLMError

    muon_params = muon_parameters(model) if cfg.optimizer == "muon" else []
    groups = param_groups(model, cfg.weight_decay, skip=frozenset(id(p) for p in muon_params))
    if not groups and not muon_params:
        raise ScratchLLMError("the model has no trainable parameters (every requires_grad is False)")
    fused = fused_available(device_type) if cfg.fused_adamw is None else cfg.fused_adamw
    kwargs = {"fused": True} if fused else {}
    if cfg.optimizer != "muon":
        return torch.optim.AdamW(groups, lr=lr_at(0, cfg), betas=(cfg.beta1, cfg.beta2), **kwargs)
    if not muon_params:
        raise ScratchLLMError(
            "optimizer=muon needs trainable hidden matrices (nn.Linear weights) and this model has none; "
            "use --set optimizer=adamw"
        )
    if not groups:  # AdamW needs at least one parameter: give it an empty-handed placeholder group
        groups = [{"params": [torch.zeros(0, requires_grad=True)], "weight_decay": 0.0}]
    scale = cfg.muon_lr / cfg.lr
    adamw = torch.optim.AdamW(groups, lr=lr_at(0, cfg), betas=(cfg.beta1, cfg.beta2), **kwargs)
    muon = muon_adamw_class().Muon(
        muon_params,
        lr=lr_at(0, cfg) * scale,
        weight_decay=cfg.muon_weight_decay,
        momentum=cfg.muon_momentum,
    )
    return muon_adamw_class()(adamw, muon, scale)


def _foreach_ok(params: list[torch.Tensor]) -> bool | None:
    """True when every gradient is a plain dense tensor (the fused foreach kernels apply); None
    (torch's own choice) otherwise — FSDP's DTensor gradients, sparse gradients."""
    import torch

    for p in params:
        g = p.grad
        if g is not None and (type(g) is not torch.Tensor or g.is_sparse):
            return None
    return True


def clip_gradients(params: list[torch.Tensor], clip: float) -> torch.Tensor:
    """Global L2 norm of all gradients (before clipping); scales them all in place so that the
    norm is at most ``clip`` when ``clip > 0`` (one factor for every gradient: the direction of the
    update is kept, only its length is capped).

    Under FSDP each rank holds a slice of every gradient; torch computes the norm over all the
    slices (a DTensor, summed across ranks) and ``full_tensor`` makes it an ordinary number, the
    same on every rank — as DDP's averaged gradients give."""
    import torch

    if clip > 0:
        # foreach: one fused call over all gradients (torch picks it by itself only on CUDA; on a
        # CPU the per-tensor loop costs a Python round trip per parameter, twice).
        norm = torch.nn.utils.clip_grad_norm_(params, clip, foreach=_foreach_ok(params))
    else:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return torch.zeros(())
        get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
        if get_total_norm is not None:
            norm = get_total_norm(grads)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    full = getattr(norm, "full_tensor", None)  # a DTensor (FSDP): the norm over every rank's slice
    return full() if callable(full) else norm


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate for this step: ``lr`` times the group's ``lr_scales`` entry
    (an optimizer without ``lr_scales`` uses ``lr`` everywhere)."""
    scales = getattr(optimizer, "lr_scales", None)
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = lr if scales is None else lr * scales[i]
