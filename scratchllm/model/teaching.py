"""Attention as the book builds it up, one idea at a time — for reading, not for running.

1. ``simplified_self_attention`` — no weights at all: scores -> softmax weights -> context vectors.
2. ``SelfAttention`` — the same three steps with trainable query/key/value projections.
3. ``CausalAttention`` — a token may only look at itself and the past (mask), plus dropout.
4. ``MultiHeadAttention`` — several causal heads side by side, then an output projection.

:func:`multihead_from_attention` loads a model's attention weights into the book's class.

The model runs :class:`scratchllm.model.attention.Attention` instead (one fused projection,
PyTorch's fused kernel, a KV cache...). Given the same weights the two compute the same thing:
``tests/model/test_attention.py`` checks it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from scratchllm.model.attention import Attention


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


def multihead_from_attention(attn: Attention, context_length: int) -> MultiHeadAttention:
    """The book's :class:`MultiHeadAttention` holding the weights of a model's fused
    :class:`~scratchllm.model.attention.Attention` layer, so the two can be compared on one input.

    The fused ``qkv`` rows are split back into ``W_query``/``W_key``/``W_value``; with grouped-query
    attention each key/value head is repeated for every query head that shares it; a LoRA layer
    contributes its merged weight ``W + (alpha/r) B A``. Rotary or ALiBi
    positions live outside this class (the model passes them to attention at call time).
    """
    H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
    C = attn.qkv.in_features
    has_bias = attn.qkv.bias is not None
    qkv_w, proj_w = _effective_weight(attn.qkv), _effective_weight(attn.proj)
    book = MultiHeadAttention(C, H * D, context_length, attn.dropout, H, qkv_bias=has_bias)
    book = book.to(device=attn.qkv.weight.device, dtype=attn.qkv.weight.dtype)

    def rows(t: Tensor, start: int, heads: int) -> Tensor:  # [heads * D, ...] rows, repeated to H heads
        part = t[start * D : (start + heads) * D]
        return (
            part.view(heads, D, *part.shape[1:])
            .repeat_interleave(H // heads, dim=0)
            .reshape(H * D, *part.shape[1:])
        )

    with torch.no_grad():
        for name, start, heads in (("W_query", 0, H), ("W_key", H, Hkv), ("W_value", H + Hkv, Hkv)):
            layer = getattr(book, name)
            layer.weight.copy_(rows(qkv_w, start, heads))
            if has_bias:
                layer.bias.copy_(rows(attn.qkv.bias, start, heads))
        book.out_proj.weight.copy_(proj_w)
        if attn.proj.bias is not None:
            book.out_proj.bias.copy_(attn.proj.bias)
        else:
            book.out_proj.bias.zero_()
    return book


def _effective_weight(layer: nn.Module) -> Tensor:
    """A linear layer's weight as it acts (LoRA layers add their low-rank update)."""
    delta = getattr(layer, "delta_weight", None)
    return layer.weight + delta() if callable(delta) else layer.weight
