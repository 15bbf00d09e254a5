"""GPTConfig: one dataclass that describes every GPT this project builds, plus named presets.

GPT-2 is the default. Later ideas — RoPE, ALiBi, RMSNorm, post-norm, SwiGLU, grouped-query
attention, Mixture-of-Experts — are *switches* on this config, not forks of the model code, so a
learner can change one thing at a time and compare (``scratchllm compare``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from scratchllm.errors import ScratchLLMError

PosEmb = Literal["learned", "sinusoidal", "rope", "alibi", "none"]
Norm = Literal["layernorm", "rmsnorm"]
NormPosition = Literal["pre", "post"]
#: "gelu" is GPT-2's tanh approximation; "gelu_erf" the exact erf form (BERT, Hugging Face "gelu");
#: "relu2" is the squared ReLU, ``relu(x) ** 2`` (So et al. 2021, "Primer"; the modded-nanoGPT speedruns).
Activation = Literal["gelu", "gelu_erf", "relu", "relu2", "swiglu"]


@dataclass
class BlockConfig:
    """Everything a transformer *block* reads: sizes, normalisation, activation, attention and FFN
    options. GPT, BERT and the encoder-decoder configs extend it (with their own defaults), so all
    three build their blocks from the same fields with the same meaning."""

    # --- size (the book's GPT_CONFIG_124M by default) ---
    context_length: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    #: key/value heads for grouped-query attention; None means n_head (plain multi-head).
    n_kv_head: int | None = None
    #: FFN hidden width; None means 4 * n_embd (GELU/ReLU) or the usual 8/3 * n_embd rounded (SwiGLU).
    ffn_hidden: int | None = None
    # --- regularisation and biases ---
    dropout: float = 0.0
    #: biases in the linear layers and LayerNorms (GPT-2: yes).
    bias: bool = True
    #: bias on the query/key/value projection; None means "same as bias".
    qkv_bias: bool | None = None
    # --- normalisation and activation ---
    norm: Norm = "layernorm"
    norm_position: NormPosition = "pre"
    norm_eps: float = 1e-5
    activation: Activation = "gelu"
    #: normalise every head's queries and keys (RMSNorm over the head width, with a learned gain)
    #: before RoPE and the dot product, so attention logits cannot blow up (Dehghani et al. 2023;
    #: OLMo 2, Qwen 3, the modded-nanoGPT speedruns). Off for GPT-2.
    qk_norm: bool = False
    # --- Mixture-of-Experts feed-forward (0 experts = the dense FFN) ---
    n_experts: int = 0
    moe_top_k: int = 2
    moe_aux_loss_coef: float = 0.01
    moe_z_loss_coef: float = 0.0
    # --- initialisation ---
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self.validate()

    # The effective values of the "None means ..." fields.
    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def use_qkv_bias(self) -> bool:
        return self.bias if self.qkv_bias is None else self.qkv_bias

    @property
    def hidden_dim(self) -> int:
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        if self.activation == "swiglu":
            # Same parameter count as a 4x GELU FFN: 3 matrices of 8/3 d instead of 2 of 4 d,
            # rounded up to a multiple of 64 for friendlier matmul shapes.
            return 64 * -(-int(8 * self.n_embd / 3) // 64)
        return 4 * self.n_embd

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise ScratchLLMError(f"invalid model config: {msg}")

        for name in ("context_length", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.n_embd % self.n_head:
            bad(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            bad(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.ffn_hidden is not None and self.ffn_hidden < 1:
            bad(f"ffn_hidden must be >= 1 (got {self.ffn_hidden})")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"dropout must be in [0, 1) (got {self.dropout})")
        if not self.norm_eps > 0:
            bad(f"norm_eps must be > 0 (got {self.norm_eps})")
        if not self.init_std > 0:
            bad(f"init_std must be > 0 (got {self.init_std})")
        if self.n_experts < 0 or (self.n_experts and not 1 <= self.moe_top_k <= self.n_experts):
            bad(f"moe_top_k ({self.moe_top_k}) must be between 1 and n_experts ({self.n_experts})")


@dataclass
class GPTConfig(BlockConfig):
    """A decoder-only language model: the block fields plus the vocabulary, positions and head."""

    vocab_size: int = 50257
    #: share the token embedding matrix with the output head (GPT-2: yes).
    tie_weights: bool = True
    pos_emb: PosEmb = "learned"
    rope_base: float = 10000.0
    #: logit soft-capping: ``cap * tanh(logits / cap)`` keeps every output logit within (-cap, cap)
    #: (Gemma 2, the modded-nanoGPT speedruns); 0 turns it off (GPT-2).
    logit_softcap: float = 0.0
    #: start every residual branch's output projection (``attn.proj``, ``ffn.proj``) — and an untied
    #: output head — at zero: each block begins as the identity and the first logits are uniform
    #: (the modded-nanoGPT speedruns). Only the initialisation changes, so GPT-2 can still hold it.
    zero_init_proj: bool = False

    def validate(self) -> None:
        super().validate()
        if not (self.logit_softcap >= 0 and self.logit_softcap < float("inf")):
            raise ScratchLLMError(
                f"invalid model config: logit_softcap must be >= 0 (0 = off; got {self.logit_softcap})"
            )
        if self.vocab_size < 1:
            raise ScratchLLMError(f"invalid model config: vocab_size must be >= 1 (got {self.vocab_size})")
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ScratchLLMError(
                f"invalid model config: RoPE needs an even head dimension (n_embd/n_head = {self.head_dim})"
            )


# name -> {"model": config overrides, "train": TrainConfig overrides, "description": str,
#          "arch": the architecture it is written for (default "gpt")}
# A GPT preset applied to another architecture lends only its sizes (PRESET_SIZE_KEYS in
# scratchllm.train.pretrain); a preset written for an architecture applies in full.
PRESETS: dict[str, dict[str, Any]] = {
    # The default of `scratchllm train` (GPT): minutes on a laptop CPU, GPT-2's architecture (so it
    # exports to Hugging Face), a size any tokenizer's data can use.
    "small": {
        "description": "a small GPT-2-style model for a laptop CPU (the default of 'train'; minutes)",
        "model": dict(context_length=128, n_layer=4, n_head=4, n_embd=128),
        "train": dict(
            batch_size=16, max_steps=1000, lr=1e-3, warmup_steps=50, eval_interval=250, eval_steps=20
        ),
    },
    "gpt2": {
        "description": "GPT-2 small, 124M parameters (Hugging Face 'gpt2')",
        "model": dict(vocab_size=50257, context_length=1024, n_layer=12, n_head=12, n_embd=768),
    },
    "gpt2-medium": {
        "description": "GPT-2 medium, 355M parameters",
        "model": dict(vocab_size=50257, context_length=1024, n_layer=24, n_head=16, n_embd=1024),
    },
    "gpt2-large": {
        "description": "GPT-2 large, 774M parameters",
        "model": dict(vocab_size=50257, context_length=1024, n_layer=36, n_head=20, n_embd=1280),
    },
    "gpt2-xl": {
        "description": "GPT-2 XL, 1.56B parameters",
        "model": dict(vocab_size=50257, context_length=1024, n_layer=48, n_head=25, n_embd=1600),
    },
    # Tuned for time to quality on 2 CPU cores: loss <= 1.88 over the *whole* tinyshakespeare val
    # split (char tokenizer, 10 % val) from 0.86M training tokens, where the textbook recipe
    # (batch 12, 2,000 steps, lr 1e-3, GPT-2 architecture) spends 1.54M. What buys it: RoPE +
    # RMSNorm + SwiGLU + no biases learn much faster per token; lr 6e-3 with a short warm-up suits
    # a model this small (with batch 32 to keep its steps steady); one evaluation, at the end.
    # Measurements: benchmarks/bench_quality.py, benchmarks/results/recipe-search.json.
    "char-shakespeare": {
        "description": "small character-level GPT for tinyshakespeare on a laptop CPU (~1 min)",
        "model": dict(
            context_length=64,
            n_layer=4,
            n_head=4,
            n_embd=128,
            dropout=0.0,
            pos_emb="rope",
            norm="rmsnorm",
            activation="swiglu",
            bias=False,
        ),
        "train": dict(
            batch_size=32,
            max_steps=420,
            lr=6e-3,
            warmup_steps=30,
            eval_interval=0,  # only at the end: a mid-run eval of the whole split costs ~5 % here
            # 55 batches x 32 windows x 64 tokens covers the whole val split (1,742 windows).
            eval_steps=55,
        ),
    },
    "tiny": {
        "description": "a very small GPT for tests and quick experiments",
        "model": dict(context_length=64, n_layer=2, n_head=2, n_embd=64),
        "train": dict(batch_size=8, max_steps=200, lr=1e-3, warmup_steps=10),
    },
    "bert-small": {
        "arch": "bert",
        "description": "a small BERT for a laptop CPU (the default of 'train --arch bert'; minutes)",
        "model": dict(context_length=128, n_layer=4, n_head=4, n_embd=128),
        "train": dict(
            batch_size=32, max_steps=1000, lr=5e-4, warmup_steps=100, eval_interval=250, eval_steps=10
        ),
    },
    "bert-base": {
        "arch": "bert",
        "description": "BERT-base, 110M parameters (Devlin et al. 2018): a GPU-sized model",
        "model": dict(context_length=512, n_layer=12, n_head=12, n_embd=768, dropout=0.1),
        "train": dict(
            batch_size=32,
            max_steps=100_000,
            lr=1e-4,
            warmup_steps=10_000,
            weight_decay=0.01,
        ),
    },
    "seq2seq-small": {
        "arch": "seq2seq",
        "description": "a small encoder-decoder (the default of 'train --arch seq2seq'; ~98% on dates)",
        "model": dict(n_layer=2),
        "train": dict(
            batch_size=64, max_steps=1000, lr=2e-3, warmup_steps=50, eval_interval=250, eval_steps=8
        ),
    },
}


# The speedrun recipe (issue 21): char-shakespeare plus the switches of the modded-nanoGPT speedruns
# that paid off here — Muon for the hidden matrices, QK-norm — for the fewest steps that still reach
# nanoGPT's 2,000-iteration val loss with a margin (180: val 1.84 against its 1.91, in ~0.4x its
# wall time; 300 steps reach 1.71). Each switch is measured alone in benchmarks/bench_speedrun.py
# (the ablation table in docs/guide/speedrun.md).
PRESETS["speedrun"] = {
    "description": "char-shakespeare with Muon and QK-norm: nanoGPT's loss in under half its time",
    "model": {**PRESETS["char-shakespeare"]["model"], "qk_norm": True},
    "train": {**PRESETS["char-shakespeare"]["train"], "max_steps": 180, "optimizer": "muon", "muon_lr": 0.02},
}

# The same recipe on BPE tokens (a tokenizer of ~2k ids trained on the corpus: ~2.9 characters per
# token on tinyshakespeare): 64 tokens of context see ~180 characters. The corpus is then only
# 0.35M training tokens, so 300 steps of batch 32 are ~1.8 epochs; an evaluation every 50 steps shows
# where the curve flattens. 20 batches x 32 x 64 cover the whole val split of tinyshakespeare at
# 2,048 ids (631 windows); a larger corpus needs --set eval_steps=... for a whole-split score.
PRESETS["bpe-shakespeare"] = {
    "description": "the speedrun recipe on BPE tokens (vocab ~2k) of tinyshakespeare (~2.5 min)",
    "model": dict(PRESETS["speedrun"]["model"]),
    "train": {**PRESETS["speedrun"]["train"], "max_steps": 300, "eval_interval": 50, "eval_steps": 20},
}


def get_preset(name: str) -> dict[str, Any]:
    """Return a preset's sections (``model``/``train``), or raise listing the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ScratchLLMError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
