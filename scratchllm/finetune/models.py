"""The fine-tuned GPTs: a GPT with LoRA adapters, and a GPT with a classification head.

Both are small subclasses of :class:`~scratchllm.model.gpt.GPTModel` registered as architectures
(``gpt-lora`` and ``gpt-classifier`` in :data:`scratchllm.model.ARCHITECTURES`). Their configs
extend :class:`~scratchllm.model.config.GPTConfig` with what the surgery needs (LoRA rank, scale,
targets; number of classes and label names), so a fine-tuned run directory holds everything to
rebuild the model and :func:`scratchllm.train.checkpoint.load_model` — and therefore ``--resume``,
``generate``, ``eval`` — work on it unchanged.

Parameter names stay the GPT's names: LoRA adds ``*.lora_A``/``*.lora_B`` next to the weights it
adapts, and the classifier's head is still called ``out_head`` (now ``[num_classes, C]``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from scratchllm.errors import ScratchLLMError
from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel
from scratchllm.model.lora import DEFAULT_TARGETS, LoRAConfig, apply_lora, target_suffixes


@dataclass
class GPTLoRAConfig(GPTConfig):
    #: LoRA rank; 0 means no adapters (a classifier trained without LoRA).
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    #: which Linear layers get adapters: qkv, proj (attn.proj + ffn.proj), fc, head, or layer names.
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS

    def validate(self) -> None:
        super().validate()
        if self.lora_r < 0:
            raise ScratchLLMError(f"invalid model config: lora_r must be >= 0 (got {self.lora_r})")
        if self.lora_r:
            self.lora_config()  # checks alpha, dropout, targets

    def lora_config(self) -> LoRAConfig:
        return LoRAConfig(
            r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout, targets=self.lora_targets
        )


def base_config_dict(config: GPTConfig) -> dict[str, Any]:
    """Only the plain :class:`GPTConfig` fields of any (possibly extended) GPT config."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(GPTConfig)}


class GPTLoRAModel(GPTModel):
    """A GPT language model whose targeted Linear layers carry LoRA adapters."""

    def __init__(self, config: GPTLoRAConfig) -> None:
        if config.lora_r < 1:
            raise ScratchLLMError("a gpt-lora model needs lora_r >= 1")
        super().__init__(config)
        # Which parameters *train* is the fine-tuning code's decision, not the model's.
        apply_lora(self, config.lora_config(), freeze=False)


@dataclass
class GPTClassifierConfig(GPTLoRAConfig):
    lora_r: int = 0
    num_classes: int = 2
    #: class names, index i = class id i (saved so `scratchllm classify` can print them).
    labels: tuple[str, ...] = ()

    def validate(self) -> None:
        super().validate()
        if self.num_classes < 2:
            raise ScratchLLMError(f"invalid model config: num_classes must be >= 2 (got {self.num_classes})")
        if self.labels and len(self.labels) != self.num_classes:
            raise ScratchLLMError(
                f"invalid model config: {len(self.labels)} labels for num_classes={self.num_classes}"
            )
        if self.lora_r and "out_head" in target_suffixes(self.lora_targets):
            raise ScratchLLMError(
                "the classification head is new and trains in full; drop 'head' from --lora-targets"
            )

    @property
    def label_names(self) -> list[str]:
        return list(self.labels) or [str(i) for i in range(self.num_classes)]


class GPTClassifier(GPTModel):
    """A GPT whose output head scores ``num_classes`` classes instead of the vocabulary.

    The book's recipe: keep the pretrained body, swap the ``vocab``-wide head for a small new
    Linear layer, and read its output at the **last real token** of each text — under causal
    attention the only position that has attended to every token of the text.
    """

    def __init__(self, config: GPTClassifierConfig) -> None:
        super().__init__(config)
        # Replacing the module unties it from the token embedding (which stays as it was).
        self.out_head = nn.Linear(config.n_embd, config.num_classes)
        nn.init.normal_(self.out_head.weight, mean=0.0, std=config.init_std)
        nn.init.zeros_(self.out_head.bias)
        if config.lora_r:
            apply_lora(self, config.lora_config(), freeze=False)

    def forward(
        self,
        idx: Tensor,
        *,
        lengths: Tensor | None = None,
        attention_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Token ids ``[B, T]`` (right-padded) → class logits ``[B, num_classes]``.

        ``lengths[b]`` is the number of real tokens of row ``b``; without it every row is taken to
        fill all ``T`` positions.
        """
        logits = super().forward(idx, attention_mask=attention_mask, **kwargs)  # [B, T, K]
        if lengths is None:
            return logits[:, -1]
        last = (lengths.to(logits.device) - 1).clamp(min=0)
        return logits[torch.arange(idx.shape[0], device=logits.device), last]


# ----------------------------------------------------------------------------- building from a base


def _load_body(model: nn.Module, base: nn.Module, *, skip: tuple[str, ...] = ()) -> None:
    """Copy the base's weights into a freshly built fine-tuning model (same names)."""
    state = {k: v for k, v in base.state_dict().items() if not any(k.startswith(s) for s in skip)}
    result = model.load_state_dict(state, strict=False)
    bad = [k for k in result.missing_keys if ".lora_" not in k and not any(k.startswith(s) for s in skip)]
    if bad or result.unexpected_keys:
        raise ScratchLLMError(
            f"the base model does not fit the fine-tuning model ({(bad or result.unexpected_keys)[0]}); "
            "is it a GPT?"
        )


def lora_model_from_base(base: GPTModel, lora: LoRAConfig) -> GPTLoRAModel:
    """A ``gpt-lora`` model carrying ``base``'s weights and fresh adapters (B = 0: same outputs)."""
    cfg = GPTLoRAConfig(
        **base_config_dict(base.config),
        lora_r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        lora_targets=tuple(lora.targets),
    )
    model = GPTLoRAModel(cfg)
    _load_body(model, base)
    return model.to(base.tok_emb.weight.device)


def classifier_from_base(base: GPTModel, labels: list[str], lora: LoRAConfig | None = None) -> GPTClassifier:
    """A ``gpt-classifier`` with ``base``'s body, a new head for ``labels`` and optional LoRA."""
    cfg = GPTClassifierConfig(
        **base_config_dict(base.config),
        num_classes=len(labels),
        labels=tuple(labels),
        lora_r=lora.r if lora else 0,
        lora_alpha=lora.alpha if lora else 16.0,
        lora_dropout=lora.dropout if lora else 0.0,
        lora_targets=tuple(lora.targets) if lora else DEFAULT_TARGETS,
    )
    model = GPTClassifier(cfg)
    _load_body(model, base, skip=("out_head",))
    return model.to(base.tok_emb.weight.device)


def plain_config(model: GPTModel) -> GPTConfig | GPTClassifierConfig:
    """The config of ``model`` once its adapters are merged: LoRA fields reset, head untied if needed."""
    cfg = model.config
    if isinstance(cfg, GPTClassifierConfig):
        return dataclasses.replace(cfg, lora_r=0)
    return GPTConfig(**base_config_dict(cfg))
