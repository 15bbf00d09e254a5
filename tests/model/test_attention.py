"""The book's readable attention classes and the fast one the model uses agree."""

from __future__ import annotations

import pytest
import torch

from scratchllm.model.attention import Attention, build_attn_mask
from scratchllm.model.layers import alibi_slopes, apply_rope, rope_cache
from scratchllm.model.teaching import (
    CausalAttention,
    MultiHeadAttention,
    SelfAttention,
    simplified_self_attention,
)


def test_simplified_self_attention_is_weighted_average():
    x = torch.tensor([[0.43, 0.15, 0.89], [0.55, 0.87, 0.66], [0.57, 0.85, 0.64]])
    out = simplified_self_attention(x)
    weights = torch.softmax(x @ x.T, dim=-1)
    assert torch.allclose(weights.sum(-1), torch.ones(3))
    assert torch.allclose(out, weights @ x)
    assert torch.allclose(out[1], sum(weights[1, j] * x[j] for j in range(3)))


def test_causal_attention_matches_single_head_mha():
    torch.manual_seed(0)
    ca = CausalAttention(8, 8, context_length=6, dropout=0.0)
    mha = MultiHeadAttention(8, 8, context_length=6, dropout=0.0, num_heads=1)
    mha.load_state_dict({**ca.state_dict(), "out_proj.weight": torch.eye(8), "out_proj.bias": torch.zeros(8)})
    x = torch.randn(2, 6, 8)
    assert torch.allclose(ca(x), mha(x), atol=1e-6)
    # SelfAttention is CausalAttention without the mask: the last row sees everything in both.
    sa = SelfAttention(8, 8)
    sa.load_state_dict({k: v for k, v in ca.state_dict().items() if k != "mask"})
    assert torch.allclose(sa(x[0])[-1], ca(x)[0, -1], atol=1e-6)


def _copy_book_to_fast(book: MultiHeadAttention, fast: Attention) -> None:
    with torch.no_grad():
        fast.qkv.weight.copy_(torch.cat([book.W_query.weight, book.W_key.weight, book.W_value.weight]))
        fast.qkv.bias.copy_(torch.cat([book.W_query.bias, book.W_key.bias, book.W_value.bias]))
        fast.proj.weight.copy_(book.out_proj.weight)
        fast.proj.bias.copy_(book.out_proj.bias)


@pytest.mark.parametrize("need_weights", [False, True])
def test_readable_and_fast_multihead_agree(need_weights):
    torch.manual_seed(1)
    book = MultiHeadAttention(32, 32, context_length=10, dropout=0.0, num_heads=4, qkv_bias=True)
    fast = Attention(32, 4, bias=True)
    _copy_book_to_fast(book, fast)
    x = torch.randn(3, 10, 32)
    out = fast(x, need_weights=need_weights)
    if need_weights:
        out, w = out
        assert w.shape == (3, 4, 10, 10)
        assert torch.allclose(w.sum(-1), torch.ones(3, 4, 10))
        assert (w.triu(1) == 0).all()
    assert torch.allclose(book(x), out, atol=1e-5)


def test_bidirectional_mode_and_padding_mask():
    torch.manual_seed(2)
    attn = Attention(16, 2, causal=False)
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    y = attn(x, mask)
    # Changing a padded token changes nothing for the real tokens of that row.
    x2 = x.clone()
    x2[0, 3:] = torch.randn(2, 16)
    assert torch.allclose(attn(x2, mask)[0, :3], y[0, :3], atol=1e-6)
    # Bidirectional: the first token does see the last one.
    x3 = x.clone()
    x3[1, 4] += 1.0
    assert not torch.allclose(attn(x3, mask)[1, 0], y[1, 0])
    assert torch.isfinite(y).all()


def test_grouped_query_attention_equals_repeated_heads():
    torch.manual_seed(3)
    gqa = Attention(32, 4, n_kv_head=2, bias=False)
    mha = Attention(32, 4, bias=False)
    q, k, v = gqa.qkv.weight.split([32, 16, 16])
    D = 8
    # Each kv head serves 2 consecutive query heads: repeat its rows.
    k_rep = k.view(2, D, 32).repeat_interleave(2, dim=0).reshape(32, 32)
    v_rep = v.view(2, D, 32).repeat_interleave(2, dim=0).reshape(32, 32)
    with torch.no_grad():
        mha.qkv.weight.copy_(torch.cat([q, k_rep, v_rep]))
        mha.proj.weight.copy_(gqa.proj.weight)
    x = torch.randn(2, 7, 32)
    assert torch.allclose(gqa(x), mha(x), atol=1e-5)
    assert torch.allclose(gqa(x, need_weights=True)[0], mha(x), atol=1e-5)
    assert gqa.qkv.weight.shape == (64, 32)


def test_rope_rotation_preserves_norm_and_is_relative():
    cos, sin = rope_cache(16, 8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    rq = apply_rope(q.expand(1, 1, 16, 8), cos, sin)
    rk = apply_rope(k.expand(1, 1, 16, 8), cos, sin)
    assert torch.allclose(rq.norm(dim=-1), q.norm(dim=-1).expand(1, 1, 16), atol=1e-5)
    dots = rq[0, 0] @ rk[0, 0].T  # [16, 16]: score of query at m with key at n
    # depends only on m - n
    assert torch.allclose(dots[5, 2], dots[9, 6], atol=1e-4)
    assert torch.allclose(dots[3, 3], dots[12, 12], atol=1e-4)


def test_alibi_slopes_and_mask():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** (-i) for i in range(1, 9)]))
    assert alibi_slopes(6).shape == (6,)
    m = build_attn_mask(3, 3, causal=True, alibi_slopes=alibi_slopes(2))
    assert m.shape == (1, 2, 3, 3)
    assert m[0, 0, 0, 1] == float("-inf")
    assert m[0, 0, 2, 0] == pytest.approx(-2 * 0.0625)
    assert m[0, 1, 2, 2] == 0


def test_cross_attention_uses_context_for_keys_and_values():
    torch.manual_seed(4)
    attn = Attention(16, 2, causal=False)
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    y, w = attn(x, context=ctx, need_weights=True)
    assert y.shape == (2, 3, 16) and w.shape == (2, 2, 3, 5)
    assert torch.allclose(attn(x, context=ctx), y, atol=1e-6)
    # Self-attention is cross-attention to itself.
    assert torch.allclose(attn(x, context=x), attn(x), atol=1e-6)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ctx2 = ctx.clone()
    ctx2[0, 3:] = 0
    assert torch.allclose(attn(x, mask, context=ctx2)[0], attn(x, mask, context=ctx)[0], atol=1e-6)
