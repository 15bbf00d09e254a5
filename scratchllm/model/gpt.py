"""The GPT: token embeddings -> a stack of transformer blocks -> next-token logits.

GPT-2 by default (learned absolute positions, pre-norm LayerNorm, GELU-tanh FFN of width 4C,
output head tied to the token embedding). Every later idea — sinusoidal/RoPE/ALiBi/no positions,
RMSNorm, post-norm, ReLU/ReLU²/SwiGLU, grouped-query attention, QK-norm, logit soft-capping,
zero-initialised projections, Mixture-of-Experts — is a switch on
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
from scratchllm.model.attention import Attention, build_attn_mask
from scratchllm.model.config import BlockConfig, GPTConfig
from scratchllm.model.kv_cache import KVCache
from scratchllm.model.layers import (
    FeedForward,
    alibi_slopes,
    init_transformer_weights,
    make_norm,
    rope_cache,
    sinusoidal_table,
    sum_aux_losses,
)
from scratchllm.model.moe import MoEFeedForward


def make_ffn(config: BlockConfig) -> nn.Module:
    """The block's feed-forward layer: the dense ``FeedForward``, or a Mixture-of-Experts layer
    (:class:`~scratchllm.model.moe.MoEFeedForward`) when ``config.n_experts > 0``."""
    return MoEFeedForward(config) if config.n_experts > 0 else FeedForward(config)


class TransformerBlock(nn.Module):
    """Attention (tokens talk to each other) then a feed-forward net (each token thinks alone),
    each wrapped in a residual connection and a normalisation.

    * **pre-norm** (GPT-2 and most modern LLMs): ``x + f(norm(x))`` — the residual stream is never
      normalised, so gradients flow straight through a deep stack; trains stably without warm-up
      tricks.
    * **post-norm** (the original transformer, BERT): ``norm(x + f(x))``.

    ``causal=False`` makes the attention bidirectional: the same block is BERT's and the
    encoder-decoder's encoder block.
    """

    #: One-token decoding step in one call, set by ``scratchllm.model.quantize.use_fused_decoding``
    #: (``decode_step(x, kv_cache) -> x``); None: always the module path below.
    decode_step = None

    def __init__(self, config: BlockConfig, layer_idx: int = 0, *, causal: bool = True) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.dropout = config.dropout
        self.norm1 = make_norm(config)
        self.attn = Attention.from_config(config, causal=causal, layer_idx=layer_idx)
        self.norm2 = make_norm(config)
        # A Mixture-of-Experts layer is stored as `moe` so its parameter names say what it is.
        if config.n_experts > 0:
            self.moe = make_ffn(config)
        else:
            self.ffn = make_ffn(config)

    @property
    def feed_forward(self) -> nn.Module:
        """The FFN sub-layer, dense (``ffn``) or Mixture-of-Experts (``moe``)."""
        return self.moe if hasattr(self, "moe") else self.ffn

    def forward(
        self,
        x: Tensor,
        *,
        attn_mask: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        if (
            self.decode_step is not None
            and kv_cache is not None
            and attn_mask is None
            and rope is None
            and x.shape[0] == 1
            and x.shape[1] == 1
            and not kv_cache.per_row
            and not torch.is_grad_enabled()
            and not self.attn.keep_weights
            and x.is_contiguous()
        ):
            return self.decode_step(x, kv_cache)  # one new token of one sequence: the fused block
        p = self.dropout if self.training else 0.0

        # (no dropout call at all when p == 0: decoding runs this ~24 times per token)
        def attn(h: Tensor) -> Tensor:
            y = self.attn(h, attn_mask=attn_mask, rope=rope, kv_cache=kv_cache)
            return F.dropout(y, p) if p else y

        def ffn(h: Tensor) -> Tensor:
            y = self.feed_forward(h)
            return F.dropout(y, p) if p else y

        if self.pre_norm:
            x = x + attn(self.norm1(x))
            x = x + ffn(self.norm2(x))
        else:  # post-norm: normalise the sum
            x = self.norm1(x + attn(x))
            x = self.norm2(x + ffn(x))
        return x


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

        With ``zero_init_proj`` those residual projections (and an untied output head) start at
        exactly zero instead: every block is the identity at step 0 and the first prediction is
        uniform (with an untied head); the first updates reach the head and projections, and from
        them the gradient flows on to every other weight within a step or two.
        """
        cfg = self.config
        std = cfg.init_std
        residual_std = 0.0 if cfg.zero_init_proj else std / math.sqrt(2 * cfg.n_layer)
        init_transformer_weights(self, std, residual_std)
        if cfg.zero_init_proj and not cfg.tie_weights:
            nn.init.zeros_(self.out_head.weight)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        idx: Tensor,
        *,
        kv_cache: KVCache | None = None,
        attention_mask: Tensor | None = None,
        only_last: bool = False,
        logits_at: Tensor | None = None,
    ) -> Tensor:
        """Token ids ``[B, T]`` -> logits ``[B, T, vocab]`` (``[B, 1, vocab]`` with ``only_last``).

        ``kv_cache``: tokens are appended after the ``kv_cache.length`` already cached ones. With
        a per-row cache (continuous batching, see :mod:`~scratchllm.model.kv_cache`) each row is
        appended after its own ``kv_cache.lengths[b]`` tokens instead, at its own positions.
        ``attention_mask``: ``[B, T]`` (or ``[B, cached + T]``) with 1 for real tokens and 0 for
        left padding. Positions count real tokens only, so a left-padded row sees the same
        positions as the same prompt unpadded.
        ``only_last``: compute the output head for the last position only (generation needs
        nothing else, and the head is the biggest matmul of a small model).
        ``logits_at``: ``[B]`` positions, one per row: the head only there (``[B, 1, vocab]``), for
        right-padded rows whose last real tokens sit in different columns.
        """
        T = idx.shape[1]
        if kv_cache is not None and kv_cache.per_row:
            x, rope, attn_mask = self._per_row_inputs(idx, kv_cache, attention_mask)
        else:
            start = self._start(idx, kv_cache)
            key_padding = self._key_padding(idx, kv_cache, attention_mask)
            x, rope = self._embed(idx, self._positions(idx, start, key_padding))
            attn_mask = self._attn_mask(T, start + T, key_padding, x.dtype)
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask, rope=rope, kv_cache=kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        if logits_at is not None:
            x = x[torch.arange(x.shape[0], device=x.device), logits_at.to(x.device)][:, None]
        elif only_last:
            x = x[:, -1:]
        logits = self.out_head(self.final_norm(x))
        cap = self.config.logit_softcap
        if cap > 0:  # soft-capping: smooth, monotonic, and every logit stays within (-cap, cap)
            logits = cap * torch.tanh(logits / cap)
        return logits

    # The bookkeeping of forward, one small step each.
    def _start(self, idx: Tensor, kv_cache: KVCache | None) -> int:
        """Position of the first new token (the number of cached ones); checks the room left."""
        start = 0 if kv_cache is None else kv_cache.length
        if start + idx.shape[1] > self.config.context_length:
            raise ScratchLLMError(
                f"sequence of {start + idx.shape[1]} tokens exceeds the model's context_length "
                f"({self.config.context_length}); crop the input to the last context_length tokens"
            )
        if kv_cache is not None:
            kv_cache.check_room(idx.shape[1])
        return start

    def _key_padding(
        self, idx: Tensor, kv_cache: KVCache | None, attention_mask: Tensor | None
    ) -> Tensor | None:
        """``[B, cached + T]`` real-token mask over every key, or None when nothing is padded."""
        if kv_cache is not None:
            if attention_mask is not None:
                kv_cache.set_padding(attention_mask, idx.shape[1])
            return kv_cache.key_padding(idx.shape[1])
        if attention_mask is not None and attention_mask.shape != idx.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != idx shape {tuple(idx.shape)}"
            )
        return attention_mask

    def _positions(self, idx: Tensor, start: int, key_padding: Tensor | None) -> Tensor:
        """0, 1, 2, ... (``[T]``, shared by all rows) — or, with padding, the number of real tokens
        before each one (``[B, T]``)."""
        if key_padding is None:
            return torch.arange(start, start + idx.shape[1], device=idx.device)
        return (key_padding.long().cumsum(dim=1) - 1).clamp(min=0)[:, start:]

    def _embed(self, idx: Tensor, pos: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Token embeddings plus position information; RoPE returns its (cos, sin) for attention."""
        cfg = self.config
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
        if self.training and cfg.dropout > 0:
            x = F.dropout(x, cfg.dropout)
        return x, rope

    def _per_row_inputs(
        self, idx: Tensor, kv_cache: KVCache, attention_mask: Tensor | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None, Tensor | None]:
        """Embeddings, RoPE tables and the mask when every row has its own length (a per-row cache).

        Row b's tokens sit at positions ``lengths[b] + t`` and see their own row's keys up to
        themselves — no padding, and nothing of the other rows.
        """
        if attention_mask is not None:
            raise ValueError("a per-row KV cache needs no attention_mask: every row has its own length")
        T = idx.shape[1]
        pos = kv_cache.row_positions(T)  # [B, T]; checks the room left in every row
        if kv_cache.max_len > self.config.context_length:
            raise ScratchLLMError(
                f"KV cache of {kv_cache.max_len} positions exceeds the model's context_length "
                f"({self.config.context_length})"
            )
        x, rope = self._embed(idx, pos)
        S = kv_cache.span
        alibi = self.config.pos_emb == "alibi"
        mask = build_attn_mask(
            T,
            S,
            causal=True,
            alibi_slopes=self.alibi_slopes if alibi else None,
            dtype=x.dtype,
            device=idx.device,
            query_pos=pos,
        )
        return x, rope, mask

    def _attn_mask(self, T: int, S: int, key_padding: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        """One mask for all layers. Without padding or ALiBi none is needed: attention then uses the
        kernel's built-in causal mask."""
        alibi = self.config.pos_emb == "alibi"
        if key_padding is None and not alibi:
            return None
        return build_attn_mask(
            T,
            S,
            causal=True,
            key_padding=key_padding,
            alibi_slopes=self.alibi_slopes if alibi else None,
            dtype=dtype,
            device=self.tok_emb.weight.device,
        )

    # ------------------------------------------------------------------ helpers
    def aux_loss(self) -> Tensor:
        """Sum of the auxiliary losses (MoE load balancing, z-loss) of the last forward pass;
        a zero scalar for dense models (see :func:`~scratchllm.model.layers.sum_aux_losses`)."""
        return sum_aux_losses(self)

    @property
    def ddp_find_unused_parameters(self) -> bool:
        """A Mixture-of-Experts step may route no token to some expert, leaving its weights without
        a gradient; DDP must then look for unused parameters (a little slower, so only then)."""
        return self.config.n_experts > 0

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

    def make_kv_cache(self, batch_size: int, max_len: int | None = None, *, per_row: bool = False) -> KVCache:
        """A preallocated cache for this model (``max_len`` defaults to the context length).

        ``per_row``: every row keeps its own length (slots for continuous batching)."""
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
            per_row=per_row,
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
