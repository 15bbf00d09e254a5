"""LoRA: fine-tune a big model by training two thin matrices per layer instead of the layer itself.

Fine-tuning changes a pretrained weight ``W`` (``out x in``) by some ``ΔW``. Hu et al. (2021)
observed that for adapting to a task ``ΔW`` can be taken to be of *low rank*: write it as
``B @ A`` with ``A`` of shape ``r x in`` and ``B`` of shape ``out x r`` for a small rank ``r``
(4, 8, 16). The layer then computes::

    y = x W^T + b  +  (alpha / r) * x A^T B^T

and only ``A`` and ``B`` train. For GPT-2 small with ``r = 8`` on every attention and FFN matrix
that is about 1.2M trainable numbers instead of 124M — the optimizer state shrinks to match, and
the adapter saved to disk is a few megabytes.

Two details make it behave:

* ``A`` starts random (Kaiming-uniform, like an ``nn.Linear``) and ``B`` starts at **zero**, so
  ``B @ A = 0`` and the wrapped model at step 0 computes exactly what the base model computes.
* The update is scaled by ``alpha / r``: changing ``r`` then needs less re-tuning of the learning
  rate, because the update's size no longer grows with the rank.

After training, ``W + (alpha / r) * B @ A`` is an ordinary weight matrix: :func:`merge_lora` folds
the adapter in and the model is a plain model again, with no extra cost at inference.

:class:`LoRALinear` keeps the wrapped layer's ``weight`` and ``bias`` under their own names, so a
LoRA model's state dict is the base model's state dict plus ``*.lora_A`` / ``*.lora_B`` entries —
checkpoints, resume and the Hugging Face names keep working unchanged.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ScratchLLMError

#: Short target names → the module-name suffixes they select in a GPT (see docs/ARCHITECTURE.md).
#: ``proj`` selects both the attention output projection and the FFN's down projection; use
#: ``attn.proj`` or ``ffn.proj`` to pick one. Any other name is matched as a module-name suffix.
TARGET_ALIASES: dict[str, tuple[str, ...]] = {
    "qkv": ("attn.qkv",),
    "proj": ("attn.proj", "ffn.proj"),
    "fc": ("ffn.fc",),
    "head": ("out_head",),
}
DEFAULT_TARGETS: tuple[str, ...] = ("qkv", "proj", "fc")


@dataclass
class LoRAConfig:
    """How to attach LoRA: rank, scale, dropout on the adapter's input, which layers."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = tuple(t.strip() for t in self.targets.split(",") if t.strip())
        self.targets = tuple(self.targets)
        if self.r < 1:
            raise ScratchLLMError(f"LoRA rank r must be >= 1 (got {self.r})")
        if self.alpha <= 0:
            raise ScratchLLMError(f"LoRA alpha must be > 0 (got {self.alpha})")
        if not 0.0 <= self.dropout < 1.0:
            raise ScratchLLMError(f"LoRA dropout must be in [0, 1) (got {self.dropout})")
        if not self.targets:
            raise ScratchLLMError("LoRA needs at least one target (e.g. --lora-targets qkv,proj,fc)")

    @property
    def scale(self) -> float:
        return self.alpha / self.r


class LoRALinear(nn.Module):
    """An ``nn.Linear`` plus a trainable low-rank update ``(alpha / r) * B @ A``.

    The wrapped layer's ``weight`` and ``bias`` Parameters are re-used (not copied), so tied
    weights stay tied and memory is not doubled; they are frozen by :func:`apply_lora`.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.r = r
        self.alpha = alpha
        self.scale = alpha / r
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=dev, dtype=dt))
        # The same initialisation nn.Linear gives its weight; B = 0 keeps step 0 == base model.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(x, self.weight, self.bias)
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return base + self.scale * update

    def delta_weight(self) -> torch.Tensor:
        """The dense update ``(alpha / r) * B @ A`` that :meth:`merged` adds to the weight."""
        return self.scale * (self.lora_B @ self.lora_A)

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function (up to float rounding)."""
        lin = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            lin.weight.copy_(self.weight + self.delta_weight().to(self.weight.dtype))
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha}"


# ----------------------------------------------------------------------------- attaching


def target_suffixes(targets: Iterable[str]) -> list[str]:
    suffixes: list[str] = []
    for t in targets:
        suffixes.extend(TARGET_ALIASES.get(t, (t,)))
    return suffixes


def _matches(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def find_targets(model: nn.Module, targets: Iterable[str]) -> list[str]:
    """Qualified names of the ``nn.Linear`` modules the target names select, in model order.

    A target that selects nothing is an error naming the Linear layers that do exist, so a typo
    in ``--lora-targets`` is caught before training starts.
    """
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen: set[str] = set()
    for t in targets:
        hits = [n for n in linears if any(_matches(n, s) for s in target_suffixes([t]))]
        if not hits:
            examples = sorted({n.split(".")[-1] if "blocks." in n else n for n in linears})
            raise ScratchLLMError(
                f"LoRA target {t!r} matches no linear layer; choose from qkv, proj, fc, head "
                f"or a layer name such as {', '.join(examples[:8])}"
            )
        chosen.update(hits)
    return [n for n in linears if n in chosen]  # in model order


def apply_lora(model: nn.Module, cfg: LoRAConfig, *, freeze: bool = True) -> list[str]:
    """Swap the targeted ``nn.Linear`` layers of ``model`` for :class:`LoRALinear`, in place.

    With ``freeze`` (the default) every existing parameter stops training, so only the new
    ``lora_A``/``lora_B`` do; unfreeze anything else (a new classification head) afterwards.
    Returns the names of the wrapped layers.
    """
    names = find_targets(model, cfg.targets)
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), cfg.r, cfg.alpha, cfg.dropout))
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module, *, untie: bool = False) -> list[str]:
    """Fold every adapter into its weight and put plain ``nn.Linear`` layers back, in place.

    A weight shared with another module (GPT-2's output head *is* the token embedding) cannot
    take the update without changing that other module too. With ``untie`` the merged layer
    gets its own copy (the other module keeps the original, so the model must then be saved as
    untied); without it, merging such a layer is refused. Returns the names of untied layers.
    """
    shared = _shared_weight_ids(model)
    untied = []
    for name, layer in lora_layers(model).items():
        if id(layer.weight) in shared:
            if not untie:
                raise ScratchLLMError(
                    f"cannot merge the LoRA adapter on {name}: its weight is shared with another layer "
                    "(tied embeddings); train without the 'head' target or untie the weights"
                )
            untied.append(name)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.merged())
    return untied


def _shared_weight_ids(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, v in seen.items() if v > 1}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, shared Parameters counted once."""
    params = list(model.parameters())  # .parameters() already de-duplicates tied weights
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ----------------------------------------------------------------------------- base fingerprint


def base_fingerprint(model: nn.Module | dict[str, torch.Tensor], *, exclude: Sequence[str] = ()) -> str:
    """A short id of a base model's weights, so an adapter refuses to load onto the wrong base.

    It hashes every (name, shape) pair — catching a different architecture or size — plus the
    first values of a few tensors spread over the model, which catches a different checkpoint of
    the same shape without reading every weight. LoRA parameters are never part of it, nor are
    names under ``exclude`` (a replaced classification head).
    """
    state = model if isinstance(model, dict) else model.state_dict()
    items = sorted(
        (k, v)
        for k, v in state.items()
        if ".lora_" not in k and not any(k == e or k.startswith(e + ".") for e in exclude)
    )
    if not items:
        raise ScratchLLMError("cannot fingerprint a model without weights")
    h = hashlib.sha256()
    for k, v in items:
        h.update(f"{k}:{tuple(v.shape)};".encode())
    picks = sorted({0, len(items) // 3, (2 * len(items)) // 3, len(items) - 1})
    for i in picks:
        sample = items[i][1].detach().reshape(-1)[:4096].to("cpu", torch.float32).contiguous()
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]
