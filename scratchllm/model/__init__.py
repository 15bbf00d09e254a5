"""Models: the GPT (with its variants as config switches), and later BERT and seq2seq.

``ARCHITECTURES`` maps the architecture name stored in a run directory's ``config.json`` to the
config dataclass and the model class, as import strings so that importing this package stays
cheap. :func:`build_model` turns a saved config back into a model.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from scratchllm.errors import ScratchLLMError

# name -> ("module:ConfigClass", "module:ModelClass")
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "gpt": ("scratchllm.model.config:GPTConfig", "scratchllm.model.gpt:GPTModel"),
    "bert": ("scratchllm.model.bert:BertConfig", "scratchllm.model.bert:BertModel"),
    "seq2seq": ("scratchllm.model.seq2seq:Seq2SeqConfig", "scratchllm.model.seq2seq:Seq2SeqTransformer"),
    # Fine-tuned GPTs (scratchllm finetune): LoRA adapters, and a classification head.
    "gpt-lora": ("scratchllm.finetune.models:GPTLoRAConfig", "scratchllm.finetune.models:GPTLoRAModel"),
    "gpt-classifier": (
        "scratchllm.finetune.models:GPTClassifierConfig",
        "scratchllm.finetune.models:GPTClassifier",
    ),
    # A BERT with a classification head on its pooled [CLS] vector (scratchllm finetune classify).
    "bert-classifier": (
        "scratchllm.finetune.models:BertClassifierConfig",
        "scratchllm.finetune.models:BertClassifier",
    ),
}


def _resolve(spec: str) -> Any:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def architecture(name: str) -> tuple[type, type]:
    """(config class, model class) for an architecture name."""
    if name not in ARCHITECTURES:
        raise ScratchLLMError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    cfg_spec, model_spec = ARCHITECTURES[name]
    try:
        return _resolve(cfg_spec), _resolve(model_spec)
    except (ImportError, AttributeError) as err:  # pragma: no cover - only while a module is missing
        raise ScratchLLMError(f"architecture {name!r} is not available in this build ({err})") from None


def config_from_dict(arch: str, data: Mapping[str, Any]) -> Any:
    """Rebuild an architecture's config dataclass from a dict (unknown keys are errors)."""
    from scratchllm.config import from_dict

    cfg_cls, _ = architecture(arch)
    return from_dict(cfg_cls, data, what=f"{arch} model config")


def build_model(arch: str, config: Any) -> Any:
    """Instantiate a freshly initialised model of architecture ``arch`` from a config (or dict)."""
    _, model_cls = architecture(arch)
    if isinstance(config, Mapping):
        config = config_from_dict(arch, config)
    return model_cls(config)
