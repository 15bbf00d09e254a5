"""The GPT: token embeddings -> a stack of transformer blocks -> next-token logits.

GPT-2 by default (learned absolute positions, pre-norm LayerNorm, GELU-tanh FFN of width 4C,
output head tied to the token embedding). Every later idea — sinusoidal/RoPE/ALiBi/no positions,
RMSNorm, post-norm, ReLU/SwiGLU, grouped-query attention, Mixture-of-Experts — is a switch on
:class:`~scratchllm.model.config.GPTConfig`, so two variants differ only where their configs do.

Parameter names are part of the project's contract (Hugging Face conversion and LoRA rely on them;
see docs/ARCHITECTURE.md)::

    tok_emb.weight, pos_emb.weight, blocks.{i}.norm1, blocks.{i}.attn.qkv, blocks.{i}.attn.proj,
    blocks.{i}.norm2, blocks.{i}.ffn.fc, blocks.{i}.ffn.proj (or blocks.{i}.moe...), final_norm,
    out_head.weight (the same Parameter as tok_emb.weight when tied)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchllm.errors import ScratchLLMError
from scratchllm.model.attention import FastMultiHeadAttention, build_attn_mask
from scratchllm.model.config import GPTConfig
from scratchllm.model.kv_cache import KVCache
from scratchllm.model.layers import (
    alibi_slopes,
    init_transformer_weights,
    make_ffn,
    make_norm,
    residual,
    rope_cache,
    sinusoidal_table,
)


class TransformerBlock(nn.Module):
    """Attention (tokens talk to each other) then a feed-forward net (each token thinks alone),
    each wrapped in a residual connection and a normalisation.

    * **pre-norm** (GPT-2 and most modern LLMs): ``x + f(norm(x))`` — the residual stream is never
      normalised, so gradients flow straight through a deep stack; trains stably without warm-up
      tricks.
    * **post-norm** (the original transformer, BERT): ``norm(x + f(x))``.

    Both are :func:`~scratchllm.model.layers.residual`, shared with the seq2seq decoder block.
    """

    def __init__(self, config: GPTConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.dropout = config.dropout
        self.norm1 = make_norm(config)
        self.attn = FastMultiHeadAttention.from_config(config, causal=True, layer_idx=layer_idx)
        self.norm2 = make_norm(config)
        # A Mixture-of-Experts layer is stored as `moe` so its parameter names say what it is.
        self.is_moe = config.n_experts > 0
        if self.is_moe:
            self.moe = make_ffn(config)
        else:
            self.ffn = make_ffn(config)

    def forward(
        self,
        x: Tensor,
        *,
        attn_mask: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        p = self.dropout if self.training else 0.0

        def attend(h: Tensor) -> Tensor:
            return self.attn(h, attn_mask=attn_mask, rope=rope, kv_cache=kv_cache)

        x = residual(x, attend, self.norm1, pre_norm=self.pre_norm, p=p)
        return residual(x, self.moe if self.is_moe else self.ffn, self.norm2, pre_norm=self.pre_norm, p=p)


class GPTModel(nn.Module):
    """A decoder-only transformer language model."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        C, ctx = config.n_embd, config.context_length
        self.tok_emb = nn.Embedding(config.vocab_size, C)
        # Position information: a trained table, a fixed table, or inside attention (rope/alibi).
        # Fixed tables are non-persistent buffers: rebuilt from the config, never saved.
        if config.pos_emb == "learned":
            self.pos_emb = nn.Embedding(ctx, C)
        elif config.pos_emb == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(ctx, C), persistent=False)
        elif config.pos_emb == "rope":
            cos, sin = rope_cache(ctx, config.head_dim, config.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        elif config.pos_emb == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(config.n_head), persistent=False)
        self.blocks = nn.ModuleList(TransformerBlock(config, i) for i in range(config.n_layer))
        self.final_norm = make_norm(config)
        self.out_head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_weights:
            # One matrix both reads tokens in and scores tokens out (Press & Wolf 2017): saves
            # vocab x C parameters (38M for GPT-2 small) and usually helps small models.
            self.out_head.weight = self.tok_emb.weight
        self.init_weights()

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 initialisation.

        Linear and embedding weights ~ N(0, init_std), biases 0, norms 1. Every residual branch
        ends in a ``proj`` Linear whose output is *added* to the stream; with 2 additions per layer
        the stream's variance would grow with depth, so those weights get std / sqrt(2 n_layer).
        A submodule (e.g. a Mixture-of-Experts layer) that keeps its weights in raw Parameters can
        define ``init_weights(std, residual_std)`` to take part (see :func:`init_transformer_weights`).
        """
        std = self.config.init_std
        init_transformer_weights(self, std, std / math.sqrt(2 * self.config.n_layer))

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        idx: Tensor,
        *,
        kv_cache: KVCache | None = None,
        attention_mask: Tensor | None = None,
        only_last: bool = False,
    ) -> Tensor:
        """Token ids ``[B, T]`` -> logits ``[B, T, vocab]`` (``[B, 1, vocab]`` with ``only_last``).

        ``kv_cache``: tokens are appended after the ``kv_cache.length`` already cached ones.
        ``attention_mask``: ``[B, T]`` (or ``[B, cached + T]``) with 1 for real tokens and 0 for
        left padding. Positions count real tokens only, so a left-padded row sees the same
        positions as the same prompt unpadded.
        ``only_last``: compute the output head for the last position only (generation needs
        nothing else, and the head is the biggest matmul of a small model).
        """
        cfg = self.config
        B, T = idx.shape
        start = 0 if kv_cache is None else kv_cache.length
        if start + T > cfg.context_length:
            raise ScratchLLMError(
                f"sequence of {start + T} tokens exceeds the model's context_length ({cfg.context_length}); "
                "crop the input to the last context_length tokens"
            )
        key_padding = attention_mask
        if kv_cache is not None:
            kv_cache.check_room(T)
            if attention_mask is not None:
                kv_cache.set_padding(attention_mask, T)
            key_padding = kv_cache.key_padding(T)
        elif attention_mask is not None and attention_mask.shape != idx.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != idx shape {tuple(idx.shape)}"
            )

        # Positions: 0, 1, 2, ... — or, with padding, the number of real tokens before each one.
        if key_padding is None:
            pos = torch.arange(start, start + T, device=idx.device)  # [T], shared by all rows
        else:
            pos = (key_padding.long().cumsum(dim=1) - 1).clamp(min=0)[:, start:]  # [B, T]

        x = self.tok_emb(idx)
        rope = None
        if cfg.pos_emb == "learned":
            x = x + self.pos_emb(pos)
        elif cfg.pos_emb == "sinusoidal":
            # As in "Attention Is All You Need": scale the embeddings up so the fixed table (values
            # in [-1, 1]) does not drown the small initial token vectors.
            x = x * math.sqrt(cfg.n_embd) + self.pos_table[pos]
        elif cfg.pos_emb == "rope":
            cos, sin = self.rope_cos[pos], self.rope_sin[pos]
            if pos.dim() == 2:  # per-row positions: [B, T, D] -> [B, 1, T, D] to broadcast over heads
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
            rope = (cos, sin)

        # One mask for all layers. Without padding or ALiBi none is needed: attention uses the
        # kernel's built-in causal mask.
        attn_mask = None
        if key_padding is not None or cfg.pos_emb == "alibi":
            attn_mask = build_attn_mask(
                T,
                start + T,
                causal=True,
                key_padding=key_padding,
                alibi_slopes=self.alibi_slopes if cfg.pos_emb == "alibi" else None,
                dtype=x.dtype,
                device=idx.device,
            )

        if self.training and cfg.dropout > 0:
            x = F.dropout(x, cfg.dropout)
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask, rope=rope, kv_cache=kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        if only_last:
            x = x[:, -1:]
        return self.out_head(self.final_norm(x))

    # ------------------------------------------------------------------ helpers
    def aux_loss(self) -> Tensor:
        """Sum of the auxiliary losses (MoE load balancing, z-loss) of the last forward pass.

        Any submodule may expose ``aux_loss`` (a tensor, or a method returning one, or None).
        Dense models return a zero scalar, so training code can always add it.
        """
        total = torch.zeros((), device=self.tok_emb.weight.device)
        for module in self.modules():
            if module is self:
                continue
            value = getattr(module, "aux_loss", None)
            if callable(value):
                value = value()
            if isinstance(value, Tensor):
                total = total + value
        return total

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters, a tied matrix counted once.

        ``exclude_embeddings`` drops the token and learned position tables (the "non-embedding"
        count used by scaling laws); an untied output head still counts.
        """
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel()
            if self.config.pos_emb == "learned":
                n -= self.pos_emb.weight.numel()
        return n

    def estimate_flops_per_token(self, seq_len: int | None = None, *, training: bool = True) -> float:
        """FLOPs per token: ``6N + 12 L C T`` for a training step, a third of that for a forward.

        N counts the parameters that take part in a matmul for each token (the output head yes,
        embedding lookups no; for MoE only the top_k of n_experts experts). The second term is
        attention's two ``T x T x D`` matmuls per head at sequence length T, which no parameter
        count sees (the PaLM paper's appendix B; nanoGPT's MFU estimate). Causal masking would
        halve it; like PaLM, we do not subtract that.
        """
        cfg = self.config
        T = cfg.context_length if seq_len is None else seq_len
        n = self.num_params(exclude_embeddings=True) + cfg.vocab_size * cfg.n_embd
        if cfg.n_experts > 0:
            expert = sum(p.numel() for name, p in self.named_parameters() if ".moe.experts" in name)
            n -= expert * (1 - cfg.moe_top_k / cfg.n_experts)
        forward = 2 * n + 4 * cfg.n_layer * cfg.n_embd * T
        return float(3 * forward if training else forward)

    def make_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """A preallocated cache for this model (``max_len`` defaults to the context length)."""
        cfg = self.config
        w = self.tok_emb.weight
        return KVCache(
            cfg.n_layer,
            batch_size,
            min(max_len or cfg.context_length, cfg.context_length),
            cfg.kv_heads,
            cfg.head_dim,
            dtype=w.dtype if w.is_floating_point() else torch.float32,
            device=w.device,
        )

    @torch.no_grad()
    def attention_weights(self, idx: Tensor) -> list[Tensor]:
        """The ``[B, n_head, T, T]`` attention weights of every layer for ``idx`` (for plotting).

        Asks each attention layer to take its explicit (slower) path for one forward pass and keep
        its weights.
        """
        attns = [block.attn for block in self.blocks]
        for attn in attns:
            attn.keep_weights = True
        try:
            self(idx)
            return [attn.last_weights for attn in attns]
        finally:
            for attn in attns:
                attn.keep_weights = False
                attn.last_weights = None


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy; positions whose target is -100 are ignored (padding, prompts)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
