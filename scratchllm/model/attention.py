"""The attention the models run: one fused q/k/v projection and PyTorch's fused kernel.

:class:`Attention` is the multi-head attention of every model here (GPT, BERT, the
encoder-decoder): causal or bidirectional, self- or cross-attention, with grouped-query heads,
rotary positions, ALiBi biases, padding masks and a KV cache. The book's step-by-step classes
(``SelfAttention``, ``CausalAttention``, ``MultiHeadAttention``) live in
:mod:`scratchllm.model.teaching`; a test proves they compute the same thing.

Shapes: ``B`` batch, ``T`` query tokens, ``S`` key tokens (``S > T`` with a KV cache), ``C``
embedding width, ``H`` heads, ``D`` = C / H head width.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchllm.model.layers import RMSNorm, apply_rope

if TYPE_CHECKING:
    from scratchllm.model.config import BlockConfig
    from scratchllm.model.kv_cache import KVCache


# ---------------------------------------------------------------------------------------------
def causal_mask(T: int, S: int, device: torch.device | str | None = None) -> Tensor:
    """Boolean ``[T, S]`` mask, True where query t may attend key s.

    With a KV cache the T new queries are the *last* T of the S keys, so query t sits at key
    position ``S - T + t`` and may see every key up to and including that one.
    """
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


def alibi_bias(slopes: Tensor, T: int, S: int, query_pos: Tensor | None = None) -> Tensor:
    """ALiBi's additive score bias ``[H, T, S]``: ``-slope * (query position - key position)``.

    Only the lower triangle matters (the causal mask removes the rest), where the distance is >= 0.
    Queries are the last T of the S positions, as in :func:`causal_mask` — or, with ``query_pos``
    ``[B, T]``, at their own positions per row (the bias is then ``[B, H, T, S]``).
    """
    k_pos = torch.arange(S, device=slopes.device)
    if query_pos is not None:
        distance = (query_pos.to(slopes.device)[:, :, None] - k_pos).clamp(min=0)  # [B, T, S]
        return -slopes[None, :, None, None] * distance[:, None]
    q_pos = torch.arange(S - T, S, device=slopes.device)
    distance = (q_pos[:, None] - k_pos[None, :]).clamp(min=0)  # [T, S]
    return -slopes[:, None, None] * distance


def build_attn_mask(
    T: int,
    S: int,
    *,
    causal: bool,
    key_padding: Tensor | None = None,
    alibi_slopes: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    self_visible: bool = True,
    query_pos: Tensor | None = None,
) -> Tensor | None:
    """Combine causality, padding and ALiBi into one mask for ``scaled_dot_product_attention``.

    ``key_padding`` is ``[B, S]`` with True/1 for real tokens and False/0 for padding. Returns
    ``None`` when no mask is needed (then pass ``is_causal`` instead — the fastest kernel path), a
    boolean mask ``[B or 1, 1, T, S]`` (True = may attend), or, with ALiBi, an additive float mask
    ``[B or 1, H, T, S]`` (0 or a negative bias where allowed, -inf where not).

    A padding query would otherwise have *no* key to attend to (all -inf -> NaN after softmax), so
    in self-attention every query is always allowed to see itself; outputs at padding positions
    are never used. (Cross-attention passes ``self_visible=False``: there, key s is not query s.)

    ``query_pos`` ``[B, T]`` (a per-row KV cache, where every row has its own length): query t of
    row b sits at key position ``query_pos[b, t]`` and sees keys ``0 .. query_pos[b, t]`` — keys
    beyond belong to no one yet (or to a longer row) and are hidden. The mask is then additive
    ``[B, 1 or H, T, S]``.
    """
    if query_pos is not None:
        if not causal or key_padding is not None:
            raise ValueError("query_pos describes causal self-attention over unpadded rows")
        query_pos = query_pos.to(device)
        allowed = (torch.arange(S, device=device) <= query_pos[:, :, None])[:, None]  # [B, 1, T, S]
        if alibi_slopes is None:  # additive (0 / -inf): the CPU kernels take it faster than a bool mask
            return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))
        bias = alibi_bias(alibi_slopes.to(device), T, S, query_pos).to(dtype)  # [B, H, T, S]
        return bias.masked_fill(~allowed, float("-inf"))
    if key_padding is None and alibi_slopes is None:
        if not causal or T == 1:
            return None
        return causal_mask(T, S, device)
    allowed = causal_mask(T, S, device) if causal else torch.ones(T, S, dtype=torch.bool, device=device)
    allowed = allowed[None, None]  # [1, 1, T, S]
    if key_padding is not None:
        allowed = allowed & key_padding.to(device=device, dtype=torch.bool)[:, None, None, :]
        if self_visible:
            self_pos = torch.arange(T, device=device)
            allowed[:, :, self_pos, S - T + self_pos] = True
    if alibi_slopes is None:
        return allowed
    bias = alibi_bias(alibi_slopes.to(device), T, S).to(dtype)[None]  # [1, H, T, S]
    return bias.masked_fill(~allowed, float("-inf"))


class Attention(nn.Module):
    """Multi-head attention as the model runs it.

    * **one fused projection** ``qkv`` (rows: all queries, then keys, then values) instead of three
      matmuls, and the heads are split off with views — no copies;
    * **``scaled_dot_product_attention``**: PyTorch's fused kernel never materialises the ``[T, T]``
      weights when it can avoid it, and with ``is_causal=True`` it skips the masked half;
    * **grouped-query attention**: ``n_kv_head < n_head`` query heads share key/value heads, which
      shrinks the KV cache (Llama 2/3, Mistral);
    * **positional hooks**: ``rope=(cos, sin)`` rotates q and k; ALiBi arrives as a float
      ``attn_mask`` built by :func:`build_attn_mask`;
    * ``causal=False`` makes it bidirectional (BERT, the seq2seq encoder); ``key_padding_mask``
      hides padding; ``kv_cache`` makes generation incremental;
    * ``need_weights=True`` runs the explicit math path and also returns the ``[B, H, T, S]``
      attention weights (for plots);
    * ``qk_norm=True`` RMS-normalises every head's queries and keys (learned gains ``q_norm`` and
      ``k_norm`` of the head width) before RoPE: a query-key dot product is then at most
      ``|gain_q| |gain_k| sqrt(D)``, so no logit can run away early in training.

    The constructor takes plain numbers so other architectures can reuse it; ``from_config``
    reads them from any model config (:class:`~scratchllm.model.config.BlockConfig`).
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        *,
        n_kv_head: int | None = None,
        bias: bool = True,
        qkv_bias: bool | None = None,
        dropout: float = 0.0,
        causal: bool = True,
        layer_idx: int = 0,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.n_kv_head = n_kv_head or n_head
        if n_head % self.n_kv_head:
            raise ValueError(f"n_head ({n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        self.head_dim = n_embd // n_head
        self.causal = causal
        self.dropout = dropout
        #: which slot of a shared :class:`KVCache` this layer writes to.
        self.layer_idx = layer_idx
        #: when True, every forward takes the explicit path and stores ``last_weights`` (plots).
        self.keep_weights = False
        self.last_weights: Tensor | None = None
        qkv_out = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.qkv = nn.Linear(n_embd, qkv_out, bias=bias if qkv_bias is None else qkv_bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, eps=norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, eps=norm_eps) if qk_norm else None

    @classmethod
    def from_config(cls, config: BlockConfig, *, causal: bool = True, layer_idx: int = 0) -> Attention:
        return cls(
            config.n_embd,
            config.n_head,
            n_kv_head=config.kv_heads,
            bias=config.bias,
            qkv_bias=config.use_qkv_bias,
            dropout=config.dropout,
            causal=causal,
            layer_idx=layer_idx,
            qk_norm=config.qk_norm,
            norm_eps=config.norm_eps,
        )

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
        kv_cache: KVCache | None = None,
        need_weights: bool = False,
        context: Tensor | None = None,
        context_kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``x`` ``[B, T, C]`` -> ``[B, T, C]`` (and the weights when ``need_weights``).

        ``context`` ``[B, S, C]``: cross-attention (the encoder-decoder's decoder) — queries come
        from ``x``, keys and values from ``context``, using the query rows and the key/value rows
        of the same fused ``qkv`` weight. Build such a layer with ``causal=False``.
        ``context_kv``: the same, with the context's keys and values already computed by
        :meth:`context_kv` (incremental decoding computes them once per source, not once per step).

        Masks — give one or neither:

        * ``key_padding_mask`` ``[B, S]``: which *keys* are real (1) or padding (0); causality is
          added here (convenient for standalone use);
        * ``attn_mask``: a complete mask from :func:`build_attn_mask` (causality, padding and ALiBi
          already combined). A model builds it once per forward and shares it across layers.
        """
        B, T, _ = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        # [B, T, (H + 2 Hkv) * D] -> [B, H + 2 Hkv, T, D] -> q, k, v: views, no copy.
        cross = context is not None or context_kv is not None
        if not cross:
            q, k, v = self.qkv(x).view(B, T, H + 2 * Hkv, D).transpose(1, 2).split([H, Hkv, Hkv], dim=1)
        else:
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x, w[: H * D], None if b is None else b[: H * D])
            q = q.view(B, T, H, D).transpose(1, 2)
            k, v = context_kv if context_kv is not None else self.context_kv(context)
        if self.q_norm is not None:
            q = self.q_norm(q)
            if not cross:  # (cross-attention keys were normalised by context_kv)
                k = self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # all keys/values so far: [B, Hkv, S, D]
        S = k.shape[2]

        is_causal = False
        if attn_mask is None:
            if key_padding_mask is not None:
                attn_mask = build_attn_mask(
                    T,
                    S,
                    causal=self.causal,
                    key_padding=key_padding_mask,
                    device=x.device,
                    self_visible=not cross,
                )
            elif self.causal and T == S:
                is_causal = True  # the fast path: the kernel knows the mask is triangular
            elif self.causal and T > 1:
                attn_mask = causal_mask(T, S, x.device)
            # (causal, T == 1 with a cache: the one new query may see every cached key: no mask)

        if need_weights or self.keep_weights:
            y, weights = self._attention_with_weights(q, k, v, attn_mask, is_causal)
            if self.keep_weights:
                self.last_weights = weights
            return (y, weights) if need_weights else y
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
            enable_gqa=Hkv != H,
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, H * D))

    def context_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of ``context`` ``[B, S, C]``: ``[B, n_kv_head, S, D]`` each
        (the key/value rows of the fused ``qkv`` weight applied to the context)."""
        B, S, _ = context.shape
        Hq, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        w, b = self.qkv.weight, self.qkv.bias
        kv = F.linear(context, w[Hq * D :], None if b is None else b[Hq * D :])
        k, v = kv.view(B, S, 2 * Hkv, D).transpose(1, 2).split([Hkv, Hkv], dim=1)
        if self.k_norm is not None:
            k = self.k_norm(k)
        return k, v

    def _attention_with_weights(
        self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool
    ) -> tuple[Tensor, Tensor]:
        """The same computation written out, so the ``[B, H, T, S]`` weights can be returned."""
        B, H, T, D = q.shape
        S = k.shape[2]
        if self.n_kv_head != H:  # share each key/value head among its group of query heads
            k = k.repeat_interleave(H // self.n_kv_head, dim=1)
            v = v.repeat_interleave(H // self.n_kv_head, dim=1)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)
        if is_causal:
            attn_mask = causal_mask(T, S, q.device)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask
        weights = torch.softmax(scores, dim=-1)
        y = F.dropout(weights, self.dropout, self.training) @ v
        return self.proj(y.transpose(1, 2).reshape(B, T, H * D)), weights
