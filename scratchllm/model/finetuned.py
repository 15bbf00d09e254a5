"""The fine-tuned models: a GPT with LoRA adapters, and a GPT or a BERT with a classification head.

Both are small subclasses of :class:`~scratchllm.model.gpt.GPTModel` registered as architectures
(``gpt-lora`` and ``gpt-classifier`` in :data:`scratchllm.architectures.ARCHITECTURES`). Their configs
extend :class:`~scratchllm.model.config.GPTConfig` with what the surgery needs (LoRA rank, scale,
targets; number of classes and label names), so a fine-tuned run directory holds everything to
rebuild the model and :func:`scratchllm.load.load_model` — and therefore ``--resume``,
``generate``, ``eval`` — work on it unchanged.

Parameter names stay the GPT's names: LoRA adds ``*.lora_A``/``*.lora_B`` next to the weights it
adapts, and the classifier's head is still called ``out_head`` (now ``[num_classes, C]``).

The BERT classifier (``bert-classifier``) follows the BERT paper instead: the text is wrapped as
``[CLS] text [SEP]`` and the head reads the pooled ``[CLS]`` vector. Both classifiers tell the
classification task how their input looks (:class:`TextFormat`), so the task itself never asks
which kind of model it trains.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from scratchllm.errors import ScratchLLMError
from scratchllm.model.bert import BertConfig, BertModel
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


def check_classes(num_classes: int, labels: tuple[str, ...]) -> None:
    """The checks every classifier config shares: at least 2 classes, one name per class."""
    if num_classes < 2:
        raise ScratchLLMError(f"invalid model config: num_classes must be >= 2 (got {num_classes})")
    if labels and len(labels) != num_classes:
        raise ScratchLLMError(f"invalid model config: {len(labels)} labels for num_classes={num_classes}")


@dataclass
class GPTClassifierConfig(GPTLoRAConfig):
    lora_r: int = 0
    num_classes: int = 2
    #: class names, index i = class id i (saved so `scratchllm classify` can print them).
    labels: tuple[str, ...] = ()

    def validate(self) -> None:
        super().validate()
        check_classes(self.num_classes, self.labels)
        if self.lora_r and "out_head" in target_suffixes(self.lora_targets):
            raise ScratchLLMError(
                "the classification head is new and trains in full; drop 'head' from --lora-targets"
            )

    @property
    def label_names(self) -> list[str]:
        return list(self.labels) or [str(i) for i in range(self.num_classes)]


@dataclass(frozen=True)
class TextFormat:
    """How a classifier wants its texts: ``prefix + ids + suffix``, right-padded with ``pad_id``."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    pad_id: int

    def wrap(self, ids: list[int]) -> list[int]:
        return [*self.prefix, *ids, *self.suffix]

    @property
    def extra(self) -> int:
        """Positions the wrapping takes from the context window."""
        return len(self.prefix) + len(self.suffix)


class GPTClassifier(GPTModel):
    """A GPT whose output head scores ``num_classes`` classes instead of the vocabulary.

    The book's recipe: keep the pretrained body, swap the ``vocab``-wide head for a small new
    Linear layer, and read its output at the **last real token** of each text — under causal
    attention the only position that has attended to every token of the text.
    """

    arch = "gpt-classifier"
    #: what trains with ``--trainable last`` besides the last blocks and the head.
    top_modules = ("final_norm",)

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

    def text_format(self, tokenizer: Any) -> TextFormat:
        """The bare text; padding is invisible to the last real token under causal attention."""
        return TextFormat((), (), tokenizer.eot_id)


@dataclass
class BertClassifierConfig(BertConfig):
    num_classes: int = 2
    #: class names, index i = class id i (saved so `scratchllm classify` can print them).
    labels: tuple[str, ...] = ()

    def validate(self) -> None:
        super().validate()
        check_classes(self.num_classes, self.labels)

    @property
    def label_names(self) -> list[str]:
        return list(self.labels) or [str(i) for i in range(self.num_classes)]


class BertClassifier(BertModel):
    """A BERT encoder whose pooled ``[CLS]`` vector feeds a ``num_classes``-wide Linear head.

    The BERT paper's recipe: the ``[CLS]`` token attends to the whole text in both directions, and
    pretraining (NSP) already taught the pooler to summarise the sequence there. The pretraining
    heads (MLM, NSP) are dropped; the new head keeps the GPT classifier's name ``out_head``.
    """

    arch = "bert-classifier"
    #: the pooler sits between the last block and the head, so it trains with them.
    top_modules = ("final_norm", "pooler")

    def __init__(self, config: BertClassifierConfig) -> None:
        super().__init__(config)
        del self.mlm_dense, self.mlm_act, self.mlm_norm, self.mlm_bias, self.nsp_head
        self.out_head = nn.Linear(config.n_embd, config.num_classes)
        nn.init.normal_(self.out_head.weight, mean=0.0, std=config.init_std)
        nn.init.zeros_(self.out_head.bias)

    def forward(  # type: ignore[override]
        self,
        input_ids: Tensor,
        *,
        lengths: Tensor | None = None,
        segment_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Token ids ``[B, T]`` (``[CLS] text [SEP]``, right-padded) → class logits ``[B, num_classes]``.

        Unlike under causal attention, padding here *would* be seen by every token, so ``lengths``
        (real tokens per row) becomes the attention mask that hides it.
        """
        if attention_mask is None and lengths is not None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            attention_mask = (positions[None, :] < lengths.to(input_ids.device)[:, None]).long()
        hidden = self.encode(input_ids, segment_ids, attention_mask)
        return self.out_head(self.pooled(hidden))

    def text_format(self, tokenizer: Any) -> TextFormat:
        """``[CLS] text [SEP]`` padded with ``[PAD]``, as BERT saw its sentences in pretraining."""
        from scratchllm.tokenizer.specials import BertSpecialIds

        special = BertSpecialIds.of(tokenizer)
        return TextFormat((special.cls,), (special.sep,), special.pad)


# ----------------------------------------------------------------------------- building from a base


def _load_body(model: nn.Module, base: nn.Module, *, skip: tuple[str, ...] = ()) -> None:
    """Copy the base's weights into a freshly built fine-tuning model (same names)."""
    state = {k: v for k, v in base.state_dict().items() if not any(k.startswith(s) for s in skip)}
    result = model.load_state_dict(state, strict=False)
    bad = [k for k in result.missing_keys if ".lora_" not in k and not any(k.startswith(s) for s in skip)]
    if bad or result.unexpected_keys:
        raise ScratchLLMError(
            f"the base model does not fit the fine-tuning model ({(bad or result.unexpected_keys)[0]}); "
            "is it the kind of model this fine-tuning expects?"
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


def classifier_from_base(
    base: GPTModel | BertModel, labels: list[str], lora: LoRAConfig | None = None
) -> GPTClassifier | BertClassifier:
    """A classifier with ``base``'s body, a new head for ``labels`` and optional LoRA (GPT only).

    A GPT base gives a ``gpt-classifier``, a BERT base a ``bert-classifier``.
    """
    if isinstance(base, BertModel):
        return bert_classifier_from_base(base, labels, lora)
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


def bert_classifier_from_base(
    base: BertModel, labels: list[str], lora: LoRAConfig | None = None
) -> BertClassifier:
    """A ``bert-classifier``: ``base``'s encoder and pooler, a new head, no MLM/NSP heads."""
    if lora is not None:
        raise ScratchLLMError(
            "LoRA fine-tuning is for GPT models; for a BERT model drop --lora-r "
            "and use --trainable last or all"
        )
    fields = {f.name: getattr(base.config, f.name) for f in dataclasses.fields(BertConfig)}
    model = BertClassifier(BertClassifierConfig(**fields, num_classes=len(labels), labels=tuple(labels)))
    heads = ("mlm_dense", "mlm_norm", "mlm_bias", "nsp_head", "out_head")
    _load_body(model, base, skip=heads)
    return model.to(base.tok_emb.weight.device)


def plain_config(model: GPTModel) -> GPTConfig | GPTClassifierConfig:
    """The config of ``model`` once its adapters are merged: LoRA fields reset, head untied if needed."""
    cfg = model.config
    if isinstance(cfg, GPTClassifierConfig):
        return dataclasses.replace(cfg, lora_r=0)
    return GPTConfig(**base_config_dict(cfg))
