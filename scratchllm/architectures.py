"""The architecture registry: every kind of model scratchllm builds, and what each can do, in one table.

A run directory's ``config.json`` names its ``architecture``; this table turns that name back into
a config class and a model class (:func:`build_model`), tells ``scratchllm train --arch NAME``
which task trains it, names the verb that runs it, and lists its capabilities — so the CLI, the
server, the evaluator and the explainers ask the record instead of comparing names.

Adding an architecture is one :class:`Architecture` entry in :data:`ARCHITECTURES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.model.bert import BertConfig, BertModel
from scratchllm.model.config import GPTConfig
from scratchllm.model.finetuned import (
    BertClassifier,
    BertClassifierConfig,
    GPTClassifier,
    GPTClassifierConfig,
    GPTLoRAConfig,
    GPTLoRAModel,
)
from scratchllm.model.gpt import GPTModel
from scratchllm.model.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from scratchllm.tasks.base import TaskFactory
from scratchllm.tasks.bert import bert_task
from scratchllm.tasks.lm import language_modeling_task
from scratchllm.tasks.seq2seq import seq2seq_task


@dataclass(frozen=True)
class Architecture:
    """One kind of model, as ``config.json`` names it."""

    name: str
    config: type
    model: type
    #: the ``scratchllm`` verb that uses a trained model of this kind.
    verb: str
    description: str
    #: the task factory of ``scratchllm train --arch NAME`` (None: made by fine-tuning instead).
    task: TaskFactory | None = None
    #: family: "gpt" (decoder-only), "bert" (encoder-only) or "seq2seq" (encoder-decoder).
    family: str = "gpt"
    #: a next-token language model: generate, chat, serve, perplexity.
    generates_text: bool = False
    #: generation can reuse keys/values (:class:`~scratchllm.model.kv_cache.KVCache`).
    kv_cache: bool = False
    #: ``scratchllm convert --to-hf`` writes it as a Hugging Face GPT-2 directory.
    exports_to_hf: bool = False
    #: ``finetune classify`` can start from it.
    classifier_base: bool = False
    #: ``finetune instruct`` can start from it.
    instruct_base: bool = False
    #: it is a classifier (``scratchllm classify``; accuracy/F1 metrics).
    is_classifier: bool = False
    #: it carries LoRA adapters that ``scratchllm lora merge`` can fold in.
    has_lora: bool = False
    #: pretrained by masked-token prediction (+ next-sentence prediction): ``fill-mask``; ``eval``
    #: reports masked-token and NSP accuracy.
    masked_lm: bool = False
    #: maps a source text to a target text (encoder-decoder): ``translate``; ``eval`` decodes and
    #: reports exact match, character error rate and BLEU.
    translates: bool = False
    #: the preset ``scratchllm train --arch NAME`` uses without ``--preset`` (laptop-sized).
    default_preset: str | None = None


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "gpt",
            GPTConfig,
            GPTModel,
            verb="generate",
            description="decoder-only language model (GPT-2 and its variants)",
            task=language_modeling_task,
            default_preset="small",
            generates_text=True,
            kv_cache=True,
            exports_to_hf=True,
            classifier_base=True,
            instruct_base=True,
        ),
        Architecture(
            "bert",
            BertConfig,
            BertModel,
            verb="fill-mask",
            description="encoder-only model pretrained by masked LM + next-sentence prediction",
            task=bert_task,
            default_preset="bert-small",
            family="bert",
            classifier_base=True,
            masked_lm=True,
        ),
        Architecture(
            "seq2seq",
            Seq2SeqConfig,
            Seq2SeqTransformer,
            verb="translate",
            description="encoder-decoder transformer (Attention Is All You Need)",
            task=seq2seq_task,
            default_preset="seq2seq-small",
            family="seq2seq",
            translates=True,
        ),
        Architecture(
            "gpt-lora",
            GPTLoRAConfig,
            GPTLoRAModel,
            verb="generate",
            description="GPT language model with LoRA adapters (finetune instruct --lora-r)",
            generates_text=True,
            kv_cache=True,
            classifier_base=True,
            instruct_base=True,
            has_lora=True,
        ),
        Architecture(
            "gpt-classifier",
            GPTClassifierConfig,
            GPTClassifier,
            verb="classify",
            description="GPT with a classification head read at the last real token",
            is_classifier=True,
            has_lora=True,
        ),
        Architecture(
            "bert-classifier",
            BertClassifierConfig,
            BertClassifier,
            verb="classify",
            description="BERT with a classification head on the pooled [CLS] vector",
            family="bert",
            is_classifier=True,
        ),
    )
}


def get_architecture(name: str) -> Architecture:
    """The record for ``name``, or a one-line error listing the known names."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ScratchLLMError(
            f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}"
        ) from None


def names_where(**capabilities: bool) -> tuple[str, ...]:
    """The architectures whose records have every given capability value, e.g.
    ``names_where(generates_text=True)``."""
    return tuple(
        a.name for a in ARCHITECTURES.values() if all(getattr(a, k) == v for k, v in capabilities.items())
    )


def trainable_names() -> tuple[str, ...]:
    """What ``scratchllm train --arch`` accepts."""
    return tuple(a.name for a in ARCHITECTURES.values() if a.task is not None)


def config_from_dict(arch: str, data: Mapping[str, Any]) -> Any:
    """Rebuild an architecture's config dataclass from a dict (unknown keys are errors)."""
    from scratchllm.config import from_dict

    return from_dict(get_architecture(arch).config, data, what=f"{arch} model config")


def build_model(arch: str, config: Any) -> Any:
    """Instantiate a freshly initialised model of architecture ``arch`` from a config (or dict)."""
    if isinstance(config, Mapping):
        config = config_from_dict(arch, config)
    return get_architecture(arch).model(config)
