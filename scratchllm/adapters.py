"""LoRA adapter files: ``adapter.safetensors`` + ``adapter_config.json``, and loading them onto a base.

An adapter directory holds only what fine-tuning added — every ``lora_A``/``lora_B`` (and, for a
classifier, its new head) — plus the base model's fingerprint, so an adapter refuses to load onto
the wrong base. The LoRA layers themselves are :mod:`scratchllm.model.lora`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.model.lora import LoRAConfig, apply_lora, base_fingerprint, lora_layers

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FORMAT_VERSION = 1


def adapter_state_dict(model: nn.Module, extra: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """The tensors an adapter file holds: every ``lora_A``/``lora_B``, plus the named ``extra``
    parameters (e.g. a new classification head, which the base model does not have)."""
    state = model.state_dict()
    out = {k: v.detach().cpu().contiguous() for k, v in state.items() if ".lora_" in k}
    for prefix in extra:
        for k, v in state.items():
            if k == prefix or k.startswith(prefix + "."):
                out[k] = v.detach().cpu().contiguous()
    return out


@dataclass
class AdapterInfo:
    """What ``adapter_config.json`` records next to the adapter weights."""

    lora: LoRAConfig
    base_fingerprint: str
    base_model: str | None = None  # path of the base the adapter was trained on, when known
    architecture: str = "gpt"
    #: the fine-tuned model's config (e.g. a classifier's labels), to rebuild it on merge
    model: dict[str, Any] = field(default_factory=dict)
    extra_params: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()
    #: anything else the training run wants to travel with the adapter (e.g. its prompt template)
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": ADAPTER_FORMAT_VERSION,
            "kind": "lora",
            "r": self.lora.r,
            "alpha": self.lora.alpha,
            "dropout": self.lora.dropout,
            "targets": list(self.lora.targets),
            "layers": list(self.layers),
            "base_fingerprint": self.base_fingerprint,
            "base_model": self.base_model,
            "architecture": self.architecture,
            "model": self.model,
            "extra_params": list(self.extra_params),
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "adapter config") -> AdapterInfo:
        if d.get("kind") != "lora" or "base_fingerprint" not in d:
            raise ScratchLLMError(f"{where} is not a scratchllm LoRA adapter config")
        try:
            lora = LoRAConfig(
                r=int(d["r"]),
                alpha=float(d["alpha"]),
                dropout=float(d.get("dropout", 0.0)),
                targets=tuple(d["targets"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ScratchLLMError(f"{where} is malformed ({type(err).__name__}: {err})") from None
        return cls(
            lora=lora,
            base_fingerprint=str(d["base_fingerprint"]),
            base_model=d.get("base_model"),
            architecture=str(d.get("architecture", "gpt")),
            model=dict(d.get("model") or {}),
            extra_params=tuple(d.get("extra_params") or ()),
            layers=tuple(d.get("layers") or ()),
            notes=dict(d.get("notes") or {}),
        )


def save_adapter(
    model: nn.Module, out_dir: str | Path, info: AdapterInfo, *, reuse: Path | None = None
) -> Path:
    """Write ``adapter.safetensors`` + ``adapter_config.json`` (atomically) into ``out_dir``.

    ``reuse``: a weights file that already holds exactly these tensors (a LoRA run's own
    ``model.safetensors``, stored on top of its base) is hard-linked instead of written again.
    """
    from scratchllm.io import TMP_PREFIX, atomic_open, atomic_write_json, fsync_dir
    from scratchllm.weights import read_safetensors_header, write_safetensors

    out_dir = Path(out_dir)
    tensors = adapter_state_dict(model, info.extra_params)
    if not any(".lora_" in k for k in tensors):
        raise ScratchLLMError("this model has no LoRA layers to save")
    info.layers = tuple(lora_layers(model))
    target = out_dir / ADAPTER_WEIGHTS
    same = reuse is not None and set(read_safetensors_header(reuse)) - {"__metadata__"} == set(tensors)
    if same:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f"{TMP_PREFIX}{ADAPTER_WEIGHTS}"
        tmp.unlink(missing_ok=True)
        try:
            os.link(reuse, tmp)
        except OSError:
            same = False
        else:
            os.replace(tmp, target)
            fsync_dir(out_dir)
    if not same:
        with atomic_open(target, "wb") as f:
            write_safetensors(f, tensors, {"format": "pt"})
    atomic_write_json(out_dir / ADAPTER_CONFIG, info.to_dict())
    return out_dir


def is_adapter_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / ADAPTER_CONFIG).is_file() and (path / ADAPTER_WEIGHTS).is_file()


def read_adapter(path: str | Path) -> tuple[AdapterInfo, dict[str, torch.Tensor]]:
    """Read an adapter directory (or a run directory holding one under ``adapter/``)."""
    from scratchllm.io import read_json
    from scratchllm.weights import read_safetensors  # validates the file before loading

    path = Path(path)
    if not is_adapter_dir(path) and is_adapter_dir(path / "adapter"):
        path = path / "adapter"
    if not is_adapter_dir(path):
        raise ScratchLLMError(f"no LoRA adapter in {path} (expected {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    info = AdapterInfo.from_dict(read_json(path / ADAPTER_CONFIG, "adapter config"), where=str(path))
    tensors, _ = read_safetensors(path / ADAPTER_WEIGHTS)
    return info, tensors


def load_adapter(model: nn.Module, path: str | Path, *, exclude: Sequence[str] = ()) -> AdapterInfo:
    """Attach a saved adapter to a freshly loaded *base* ``model``, in place.

    The base's fingerprint must match the one recorded when the adapter was trained (names listed
    in ``exclude`` — a classification head that replaces the LM head — are left out of it);
    otherwise a clear error says the adapter belongs to another base model.
    """
    info, tensors = read_adapter(path)
    fp = base_fingerprint(model, exclude=exclude)
    if fp != info.base_fingerprint:
        trained_on = f" ({info.base_model})" if info.base_model else ""
        raise ScratchLLMError(
            f"this LoRA adapter was trained on a different base model{trained_on}: fingerprint "
            f"{info.base_fingerprint}, but the given base has {fp}; pass the base it was trained on"
        )
    apply_lora(model, info.lora)
    missing = [n for n in lora_layers(model) if f"{n}.lora_A" not in tensors]
    if missing:
        raise ScratchLLMError(f"adapter {path} has no weights for layer {missing[0]}; the file is incomplete")
    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise ScratchLLMError(
            f"adapter {path} holds weights this model has no place for: {result.unexpected_keys[0]}"
        )
    return info
