"""Attention, built up the way a learner meets it, then the fast version the model uses.

1. ``simplified_self_attention`` — no weights at all: scores -> softmax weights -> context vectors.
2. ``SelfAttention`` — the same three steps with trainable query/key/value projections.
3. ``CausalAttention`` — a token may only look at itself and the past (mask), plus dropout.
4. ``MultiHeadAttention`` — several causal heads side by side, then an output projection.
5. ``FastMultiHeadAttention`` — what ``GPTModel`` actually runs: one fused ``qkv`` matmul,
   PyTorch's fused ``scaled_dot_product_attention`` kernel, grouped-query attention, rotary
   positions, ALiBi biases, padding masks, a KV cache, and a bidirectional mode for BERT.

Classes 2-4 are kept for reading and for tests: given the same weights, ``MultiHeadAttention`` and
``FastMultiHeadAttention`` compute the same thing (``tests/model/test_attention.py``).

Shapes: ``B`` batch, ``T`` query tokens, ``S`` key tokens (``S > T`` with a KV cache), ``C``
embedding width, ``H`` heads, ``D`` = C / H head width.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchllm.model.layers import apply_rope

if TYPE_CHECKING:
    from scratchllm.model.config import GPTConfig
    from scratchllm.model.kv_cache import KVCache


# ---------------------------------------------------------------------------------------------
# 1. Self-attention without weights
# ---------------------------------------------------------------------------------------------
def simplified_self_attention(x: Tensor) -> Tensor:
    """Each output row is a weighted average of all input rows, weighted by similarity.

    ``x`` is ``[T, C]`` (one sequence of token vectors). Three steps:

    1. attention scores: the dot product of every token with every other, ``[T, T]``;
    2. attention weights: a softmax over each row, so a token's weights are positive and sum to 1;
    3. context vectors: each token's weighted sum of all token vectors.
    """
    scores = x @ x.T
    weights = torch.softmax(scores, dim=-1)
    return weights @ x


# ---------------------------------------------------------------------------------------------
# 2. Self-attention with trainable weights
# ---------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    """Scaled dot-product attention with learned projections.

    Each token is mapped three ways: a *query* (what am I looking for?), a *key* (what do I
    contain?) and a *value* (what do I pass on if chosen?). Scores compare queries with keys and are
    divided by sqrt(d_out): without it, dot products of wide vectors get large, softmax saturates
    into a near one-hot and its gradients vanish.
    """

    def __init__(self, d_in: int, d_out: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x: Tensor) -> Tensor:
        queries, keys, values = self.W_query(x), self.W_key(x), self.W_value(x)
        scores = queries @ keys.transpose(-2, -1)
        weights = torch.softmax(scores / keys.shape[-1] ** 0.5, dim=-1)
        return weights @ values


# ---------------------------------------------------------------------------------------------
# 3. Causal attention
# ---------------------------------------------------------------------------------------------
class CausalAttention(nn.Module):
    """Self-attention for a language model: token t must not see tokens after t.

    Scores above the diagonal are set to -inf *before* the softmax, so their weights become exactly
    0 and each row still sums to 1. Dropout on the weights randomly silences some links during
    training (a regulariser; it is a no-op in ``eval()`` mode). Works on batches ``[B, T, d_in]``.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, qkv_bias: bool = False):
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        # A buffer moves with the module (.to(device)) but is not a trained parameter.
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x: Tensor) -> Tensor:
        T = x.shape[1]
        queries, keys, values = self.W_query(x), self.W_key(x), self.W_value(x)
        scores = queries @ keys.transpose(1, 2)
        scores = scores.masked_fill(self.mask.bool()[:T, :T], float("-inf"))
        weights = self.dropout(torch.softmax(scores / keys.shape[-1] ** 0.5, dim=-1))
        return weights @ values


# ---------------------------------------------------------------------------------------------
# 4. Multi-head attention (the book's version)
# ---------------------------------------------------------------------------------------------
class MultiHeadAttention(nn.Module):
    """``num_heads`` causal attention heads computed together, then mixed by ``out_proj``.

    Rather than looping over ``CausalAttention`` objects, one big projection computes all heads and
    the result is split into ``[B, num_heads, T, head_dim]``: the same maths, one matmul per
    projection. Each head can learn a different notion of relevance (syntax, coreference, ...).
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        assert d_out % num_heads == 0, "d_out must be divisible by num_heads"
        self.d_out, self.num_heads, self.head_dim = d_out, num_heads, d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape

        def heads(t: Tensor) -> Tensor:  # [B, T, d_out] -> [B, num_heads, T, head_dim]
            return t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

        queries, keys, values = heads(self.W_query(x)), heads(self.W_key(x)), heads(self.W_value(x))
        scores = queries @ keys.transpose(2, 3)
        scores = scores.masked_fill(self.mask.bool()[:T, :T], float("-inf"))
        weights = self.dropout(torch.softmax(scores / self.head_dim**0.5, dim=-1))
        context = (weights @ values).transpose(1, 2).reshape(B, T, self.d_out)
        return self.out_proj(context)


# ---------------------------------------------------------------------------------------------
# 5. The fast attention the model uses
# ---------------------------------------------------------------------------------------------
def causal_mask(T: int, S: int, device: torch.device | str | None = None) -> Tensor:
    """Boolean ``[T, S]`` mask, True where query t may attend key s.

    With a KV cache the T new queries are the *last* T of the S keys, so query t sits at key
    position ``S - T + t`` and may see every key up to and including that one.
    """
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


def alibi_bias(slopes: Tensor, T: int, S: int) -> Tensor:
    """ALiBi's additive score bias ``[H, T, S]``: ``-slope * (query position - key position)``.

    Only the lower triangle matters (the causal mask removes the rest), where the distance is >= 0.
    Queries are the last T of the S positions, as in :func:`causal_mask`.
    """
    q_pos = torch.arange(S - T, S, device=slopes.device)
    k_pos = torch.arange(S, device=slopes.device)
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
) -> Tensor | None:
    """Combine causality, padding and ALiBi into one mask for ``scaled_dot_product_attention``.

    ``key_padding`` is ``[B, S]`` with True/1 for real tokens and False/0 for padding. Returns
    ``None`` when no mask is needed (then pass ``is_causal`` instead — the fastest kernel path), a
    boolean mask ``[B or 1, 1, T, S]`` (True = may attend), or, with ALiBi, an additive float mask
    ``[B or 1, H, T, S]`` (0 or a negative bias where allowed, -inf where not).

    A padding query would otherwise have *no* key to attend to (all -inf -> NaN after softmax), so
    in self-attention every query is always allowed to see itself; outputs at padding positions
    are never used. (Cross-attention passes ``self_visible=False``: there, key s is not query s.)
    """
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


class FastMultiHeadAttention(nn.Module):
    """Multi-head attention as the model runs it.

    * **one fused projection** ``qkv`` (rows: all queries, then keys, then values) instead of three
      matmuls, and the heads are split off with views — no copies;
    * **``scaled_dot_product_attention``**: PyTorch's fused kernel never materialises the ``[T, T]``
      weights when it can avoid it, and with ``is_causal=True`` it skips the masked half;
    * **grouped-query attention**: ``n_kv_head < n_head`` query heads share key/value heads, which
      shrinks the KV cache (Llama 2/3, Mistral);
    * **positional hooks**: ``rope=(cos, sin)`` rotates q and k; ALiBi arrives as a float
      ``attn_mask`` built by :func:`build_attn_mask`;
    * ``causal=False`` makes it bidirectional (BERT, the seq2seq encoder); ``attention_mask``
      handles padding; ``kv_cache`` makes generation incremental;
    * ``need_weights=True`` runs the explicit math path and also returns the ``[B, H, T, S]``
      attention weights (for plots).

    The constructor takes plain numbers so other architectures can reuse it; ``from_config``
    reads them from a :class:`GPTConfig`.
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

    @classmethod
    def from_config(
        cls, config: GPTConfig, *, causal: bool = True, layer_idx: int = 0
    ) -> FastMultiHeadAttention:
        return cls(
            config.n_embd,
            config.n_head,
            n_kv_head=config.kv_heads,
            bias=config.bias,
            qkv_bias=config.use_qkv_bias,
            dropout=config.dropout,
            causal=causal,
            layer_idx=layer_idx,
        )

    def forward(
        self,
        x: Tensor,
        attention_mask: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
        kv_cache: KVCache | None = None,
        need_weights: bool = False,
        context: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``x`` ``[B, T, C]`` -> ``[B, T, C]`` (and the weights when ``need_weights``).

        ``context`` ``[B, S, C]``: cross-attention (the encoder-decoder's decoder) — queries come
        from ``x``, keys and values from ``context``, using the query rows and the key/value rows
        of the same fused ``qkv`` weight. Build such a layer with ``causal=False``.

        ``attention_mask`` ``[B, S]``: 1 for real tokens, 0 for padding (convenient standalone use).
        ``attn_mask``: a ready mask from :func:`build_attn_mask` that already includes causality
        (``GPTModel`` builds it once per forward and shares it across layers). Give one or neither.
        """
        B, T, _ = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        # [B, T, (H + 2 Hkv) * D] -> [B, H + 2 Hkv, T, D] -> q, k, v: views, no copy.
        if context is None:
            q, k, v = self.qkv(x).view(B, T, H + 2 * Hkv, D).transpose(1, 2).split([H, Hkv, Hkv], dim=1)
        else:
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x, w[: H * D], None if b is None else b[: H * D])
            q = q.view(B, T, H, D).transpose(1, 2)
            kv = F.linear(context, w[H * D :], None if b is None else b[H * D :])
            k, v = kv.view(B, context.shape[1], 2 * Hkv, D).transpose(1, 2).split([Hkv, Hkv], dim=1)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # all keys/values so far: [B, Hkv, S, D]
        S = k.shape[2]

        is_causal = False
        if attn_mask is None:
            if attention_mask is not None:
                attn_mask = build_attn_mask(
                    T,
                    S,
                    causal=self.causal,
                    key_padding=attention_mask,
                    device=x.device,
                    self_visible=context is None,
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


#: The name the GPT literature uses for the decoder's attention (same class; ``causal=True``).
CausalSelfAttention = FastMultiHeadAttention
