"""Mixture-of-Experts feed-forward: routing, the auxiliary loss, dense equivalence, training, caching."""

from __future__ import annotations

import pytest
import torch

from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel, lm_loss
from scratchllm.model.layers import FeedForward
from scratchllm.model.moe import MoEFeedForward, expert_utilisation


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=50, context_length=32, n_layer=2, n_head=2, n_embd=16, n_experts=4, moe_top_k=2)
    base.update(kw)
    return GPTConfig(**base)


def test_routing_picks_top_k_and_renormalises() -> None:
    torch.manual_seed(0)
    moe = MoEFeedForward(tiny(n_experts=5, moe_top_k=2))
    x = torch.randn(7, 16)
    logits, weights, experts = moe.route(x)
    probs = torch.softmax(logits, dim=-1)
    expected = probs.argsort(dim=-1, descending=True)[:, :2]
    assert torch.equal(experts, expected)
    torch.testing.assert_close(weights.sum(-1), torch.ones(7))
    top = probs.gather(1, expected)
    torch.testing.assert_close(weights, top / top.sum(-1, keepdim=True))


def test_output_is_weighted_sum_of_chosen_experts() -> None:
    torch.manual_seed(1)
    moe = MoEFeedForward(tiny(n_experts=3, moe_top_k=2))
    x = torch.randn(2, 3, 16)
    out = moe(x)
    flat = x.reshape(-1, 16)
    _, weights, experts = moe.route(flat)
    rows = []
    for t in range(flat.shape[0]):
        rows.append(sum(weights[t, j] * moe.experts[int(experts[t, j])](flat[t]) for j in range(2)))
    torch.testing.assert_close(out.reshape(-1, 16), torch.stack(rows), rtol=1e-5, atol=1e-6)


def test_aux_loss_matches_formula_on_hand_example() -> None:
    moe = MoEFeedForward(tiny(n_experts=2, moe_top_k=1, moe_aux_loss_coef=0.5, moe_z_loss_coef=0.1))
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 1.0  # logit of expert 0 = x[0]; expert 1 always 0
    x = torch.zeros(4, 16)
    x[:, 0] = torch.tensor([2.0, 1.0, -1.0, 3.0])  # tokens 0, 1, 3 -> expert 0; token 2 -> expert 1
    moe(x)
    f = torch.tensor([3 / 4, 1 / 4])
    logits = torch.stack([x[:, 0], torch.zeros(4)], dim=1)
    P = torch.softmax(logits, -1).mean(0)
    z = torch.logsumexp(logits, -1)
    expected = 0.5 * 2 * (f * P).sum() + 0.1 * (z**2).mean()
    torch.testing.assert_close(moe.aux_loss(), expected)
    assert moe.expert_utilisation() == [0.75, 0.25]


def test_one_expert_equals_dense_ffn() -> None:
    torch.manual_seed(2)
    cfg = tiny(n_experts=1, moe_top_k=1, activation="swiglu")
    moe, dense = MoEFeedForward(cfg), FeedForward(cfg)
    dense.load_state_dict(moe.experts[0].state_dict())
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(moe(x), dense(x))


def test_moe_gpt_kv_cache_equals_uncached() -> None:
    torch.manual_seed(3)
    model = GPTModel(tiny(pos_emb="rope")).eval()
    idx = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        full = model(idx)
        cache = model.make_kv_cache(2)
        first = model(idx[:, :6], kv_cache=cache)
        steps = [model(idx[:, t : t + 1], kv_cache=cache) for t in range(6, 10)]
    torch.testing.assert_close(torch.cat([first, *steps], dim=1), full, rtol=1e-4, atol=1e-5)


def test_tiny_moe_gpt_trains_on_default_corpus() -> None:
    from scratchllm.data.corpus import default_corpus
    from scratchllm.tokenizer import CharTokenizer

    text = default_corpus()[:20000]
    tok = CharTokenizer.train(text)
    data = torch.tensor(tok.encode(text))
    torch.manual_seed(4)
    model = GPTModel(tiny(vocab_size=tok.vocab_size, n_embd=32, moe_aux_loss_coef=0.01))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        starts = torch.randint(0, len(data) - 33, (8,), generator=gen)
        x = torch.stack([data[s : s + 32] for s in starts])
        y = torch.stack([data[s + 1 : s + 33] for s in starts])
        loss = lm_loss(model(x), y) + model.aux_loss()
        assert model.aux_loss().item() > 0
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    util = expert_utilisation(model)
    assert set(util) == {"layer_0", "layer_1"}
    assert sum(util["layer_0"]) == pytest.approx(1.0, abs=1e-3)
    # The router got gradient from the balancing loss.
    assert model.blocks[0].moe.router.weight.grad is not None


def test_moe_under_bf16_autocast() -> None:
    """Experts may return bf16 under autocast while the residual stream stays fp32."""
    torch.manual_seed(5)
    model = GPTModel(tiny())
    idx = torch.randint(0, 50, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = lm_loss(model(idx), idx) + model.aux_loss()
    loss.backward()
    assert torch.isfinite(loss) and model.blocks[0].moe.router.weight.grad is not None
