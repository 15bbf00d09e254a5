"""The topics: name → one-line summary → the function that explains it.

Each :class:`Topic` names the module and function that build its :class:`~.result.Explanation`
(imported only when the topic runs, so ``scratchllm explain --list`` starts instantly) and says
what it needs of a ``--model``: nothing (it never uses one), or a capability of the model's
architecture record (:mod:`scratchllm.architectures` — asked, never compared by name).
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.explain.result import Explanation


@dataclass(frozen=True)
class ModelNeed:
    """What a topic needs of ``--model``: a description and a test on the architecture record."""

    what: str
    accepts: Callable[[Any, Any], bool]  # (Architecture record, LoadedModel) -> bool


def _lm(arch: Any, loaded: Any) -> bool:
    return bool(arch.generates_text)


def _cached_lm(arch: Any, loaded: Any) -> bool:
    return bool(arch.generates_text and arch.kv_cache)


def _moe(arch: Any, loaded: Any) -> bool:
    return bool(arch.generates_text) and getattr(loaded.model.config, "n_experts", 0) > 0


def _has_blocks(arch: Any, loaded: Any) -> bool:
    return arch.family in ("gpt", "bert") and hasattr(loaded.model, "blocks")


def _bert(arch: Any, loaded: Any) -> bool:
    return arch.family == "bert" and not arch.is_classifier


def _seq2seq(arch: Any, loaded: Any) -> bool:
    return arch.family == "seq2seq"


def _any_tokenizer(arch: Any, loaded: Any) -> bool:
    return loaded.tokenizer is not None


def _lora_base(arch: Any, loaded: Any) -> bool:
    return bool(arch.generates_text)


def _gpt_config(arch: Any, loaded: Any) -> bool:
    return arch.family == "gpt" and hasattr(loaded.model, "num_params")


LM = ModelNeed(
    "a GPT language model (a run of 'scratchllm train', a fine-tuned GPT or a GPT-2 directory)", _lm
)
TOPIC_NEEDS = {
    "lm": LM,
    "cached_lm": ModelNeed("a GPT language model with a KV cache", _cached_lm),
    "moe": ModelNeed("a GPT with Mixture-of-Experts layers (train one with --set n_experts=4)", _moe),
    "blocks": ModelNeed("a GPT or BERT model (transformer blocks with norms)", _has_blocks),
    "bert": ModelNeed("a BERT model (train one with 'scratchllm train --arch bert')", _bert),
    "seq2seq": ModelNeed(
        "an encoder-decoder model (train one with 'scratchllm train --arch seq2seq')", _seq2seq
    ),
    "tokenizer": ModelNeed("a model with a tokenizer.json", _any_tokenizer),
    "lora": ModelNeed("a GPT language model to attach LoRA adapters to", _lora_base),
    "gpt": ModelNeed("a GPT model", _gpt_config),
}


@dataclass(frozen=True)
class Topic:
    name: str
    summary: str
    #: "module:function" under scratchllm.explain; the function takes a Context, returns an Explanation.
    target: str
    #: what --model must be (a key of TOPIC_NEEDS), or None when the topic never uses a model.
    model: str | None = None
    #: the topic describes a configuration and accepts --preset instead of --model.
    takes_preset: bool = False

    def function(self) -> Callable[[Any], Explanation]:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(f"scratchllm.explain.{module}"), func)


TOPICS: dict[str, Topic] = {
    t.name: t
    for t in (
        Topic(
            "tokenization",
            "one text through char, word, BPE and GPT-2 tokenizers; sub-words, not <|unk|>",
            "tokens:tokenization",
            "tokenizer",
        ),
        Topic(
            "bpe",
            "a BPE training replay: the first merges with their pair counts, a word merged step by step",
            "tokens:bpe",
        ),
        Topic(
            "embeddings",
            "token ids -> vectors (lookup == one-hot @ matrix), + positions, similarity "
            "before/after training",
            "embeddings:embeddings",
            "lm",
        ),
        Topic(
            "positions",
            "learned, sinusoidal, RoPE and ALiBi positions; attention alone is permutation-blind",
            "embeddings:positions",
        ),
        Topic(
            "dataloader",
            "the sliding window: context length, stride, input -> target pairs",
            "embeddings:dataloader",
            "tokenizer",
        ),
        Topic(
            "attention",
            "scores, softmax weights, context vectors; Q/K/V, sqrt(d), causal mask, dropout, heads",
            "attention:attention",
            "lm",
        ),
        Topic(
            "layernorm",
            "mean 0 / variance 1 per token (LayerNorm, RMSNorm) vs batch norm across the batch",
            "blocks:layernorm",
            "blocks",
        ),
        Topic(
            "activations",
            "ReLU, GELU (exact and tanh), SiLU and SwiGLU, as numbers and curves",
            "blocks:activations",
        ),
        Topic(
            "residual",
            "gradient norm per layer of a deep stack with and without shortcut connections",
            "blocks:residual",
        ),
        Topic(
            "prenorm",
            "pre-norm vs post-norm blocks: what each computes, activation and gradient scale by depth",
            "blocks:prenorm",
        ),
        Topic(
            "weight-tying",
            "one matrix for the token embedding and the output head: parameters with and without",
            "blocks:weight_tying",
            "gpt",
            takes_preset=True,
        ),
        Topic(
            "gpt",
            "parameters and memory by component for any preset, FLOPs per token",
            "sizes:gpt",
            "gpt",
            takes_preset=True,
        ),
        Topic(
            "loss",
            "logits -> softmax -> -log p(target) by hand == cross_entropy; perplexity; uniform guess",
            "training:loss",
            "lm",
        ),
        Topic(
            "optimizer",
            "Adam vs AdamW weight decay, warm-up + cosine schedule, gradient clipping",
            "training:optimizer",
            "lm",
        ),
        Topic(
            "decoding",
            "greedy, temperature, top-k and top-p on a model's real next-token distribution",
            "decoding:decoding",
            "lm",
        ),
        Topic(
            "kv-cache",
            "the same logits with and without the KV cache; time per token with and without",
            "decoding:kv_cache",
            "cached_lm",
        ),
        Topic(
            "lora",
            "W + (alpha/r) B A: parameter counts for r = 1..64, B = 0 at init, merge equality",
            "lora:lora",
            "lora",
        ),
        Topic(
            "moe",
            "Mixture-of-Experts: router probabilities, top-k choice, expert load, the balance loss",
            "families:moe",
            "moe",
        ),
        Topic(
            "bert-masking",
            "BERT's 15 % masking (80/10/10) on a real sentence, next-sentence pairs",
            "families:bert_masking",
            "bert",
        ),
        Topic(
            "cross-attention",
            "encoder-decoder attention weights on the date-translation task",
            "families:cross_attention",
            "seq2seq",
        ),
        Topic(
            "scaling",
            "parameters and training tokens of the presets against the compute-optimal rule of thumb",
            "sizes:scaling",
            "gpt",
            takes_preset=True,
        ),
    )
}


def get_topic(name: str) -> Topic:
    """The topic called ``name``, or a one-line error listing them all."""
    try:
        return TOPICS[name]
    except KeyError:
        raise ScratchLLMError(f"unknown topic {name!r}; choose from {', '.join(TOPICS)}") from None


def check_model(topic: Topic, loaded: Any, model_path: str) -> None:
    """A one-line error when ``--model`` is not what the topic can use."""
    from scratchllm.architectures import get_architecture

    if topic.model is None:
        raise ScratchLLMError(
            f"topic {topic.name!r} does not use a model (it builds its own small examples); run it "
            "without --model"
        )
    need = TOPIC_NEEDS[topic.model]
    if not need.accepts(get_architecture(loaded.arch), loaded):
        raise ScratchLLMError(
            f"topic {topic.name!r} needs {need.what}; {model_path} is a {loaded.arch} model "
            "(run the topic without --model to use a tiny model built on the spot)"
        )


def run_topic(
    name: str,
    *,
    model: str | Path | None = None,
    loaded: Any = None,
    text: str | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    force: bool = False,
    preset: str | None = None,
    tokenizer: str | Path | None = None,
) -> Explanation:
    """Explain topic ``name``: on the model at ``model`` (any path :func:`scratchllm.load.load_model`
    accepts; or an already ``loaded`` one), or on tiny models built on the spot when neither is given.

    ``out_dir``: write the topic's pictures there (``TOPIC*.png``); without it no file is written.
    """
    from scratchllm.explain.context import Context

    topic = get_topic(name)
    if preset is not None and not topic.takes_preset:
        takers = ", ".join(t.name for t in TOPICS.values() if t.takes_preset)
        raise ScratchLLMError(f"--preset applies to the topics {takers}, not {name!r}")
    if preset is not None:
        from scratchllm.model.config import get_preset

        get_preset(preset)  # an unknown name is a one-line error listing the presets
    if tokenizer is not None and name != "tokenization":
        raise ScratchLLMError(f"--tokenizer applies to the tokenization topic, not {name!r}")
    if preset is not None and (model is not None or loaded is not None):
        raise ScratchLLMError("give either --model or --preset, not both")
    model_path = str(model) if model is not None else ("the given model" if loaded is not None else None)
    if model is not None and loaded is None:
        if topic.model is None:
            check_model(topic, None, model_path)
        from scratchllm.load import load_model

        loaded = load_model(model, device="cpu")
    if loaded is not None:
        check_model(topic, loaded, model_path)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise ScratchLLMError(f"--out {out} exists and is not a directory")
    if out is not None and out.is_dir() and not force:
        # Every picture of a topic is named TOPIC.png or TOPIC-*.png: refuse before any work is done.
        taken = sorted(p.name for p in (*out.glob(f"{name}.png"), *out.glob(f"{name}-*.png")))
        if taken:
            raise ScratchLLMError(
                f"{out / taken[0]} already exists; choose another --out or pass --force to overwrite"
            )
    ctx = Context(
        loaded=loaded,
        model_path=model_path,
        text=text,
        out_dir=out,
        seed=seed,
        force=force,
        preset=preset,
        tokenizer_path=str(tokenizer) if tokenizer is not None else None,
    )
    t0 = time.perf_counter()
    explainer = topic.function()  # imports the topic's module (and torch, when it needs it)
    if loaded is None and "torch" in sys.modules:
        from scratchllm.explain.context import one_thread

        with one_thread():  # tiny models: one thread is fastest, and much faster on a busy machine
            result = explainer(ctx)
    else:
        result = explainer(ctx)
    result.seconds = time.perf_counter() - t0
    if out is None and ctx.pictures:
        result.note(f"pictures: {', '.join(ctx.pictures)} — add --out DIR to write them")
    return result
