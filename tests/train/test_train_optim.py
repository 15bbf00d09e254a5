"""The optimizer's parameter groups, the learning-rate schedule and TrainConfig checks."""

from __future__ import annotations

import math

import pytest
import torch

from scratchllm.config import resolve_configs
from scratchllm.errors import ScratchLLMError
from scratchllm.model.config import PRESETS, GPTConfig
from scratchllm.model.gpt import GPTModel
from scratchllm.train.config import TrainConfig
from scratchllm.train.optim import build_optimizer, fused_available, lr_at, param_groups, set_lr


def test_schedule_warmup_then_cosine_to_min_lr():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1)  # the first step already learns
    assert lr_at(4, cfg) == pytest.approx(0.5)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)  # the top of the cosine
    assert lr_at(60, cfg) == pytest.approx(0.55)  # half-way: the mean of lr and min_lr
    assert lr_at(35, cfg) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, cfg) == pytest.approx(0.1)
    assert lr_at(500, cfg) == pytest.approx(0.1)  # a run extended on resume stays at min_lr
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_min_lr_defaults_to_a_tenth_and_no_warmup_starts_at_lr():
    cfg = TrainConfig(lr=3e-4, warmup_steps=0, max_steps=100)
    assert cfg.effective_min_lr == pytest.approx(3e-5)
    assert lr_at(0, cfg) == pytest.approx(3e-4)
    assert lr_at(100, cfg) == pytest.approx(3e-5)


def _tiny(tie: bool = True) -> GPTModel:
    return GPTModel(
        GPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=2, n_embd=8, tie_weights=tie)
    )


def test_weight_decay_only_on_matrices_and_embeddings():
    model = _tiny()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    plain = {names[id(p)] for p in no_decay["params"]}
    assert "tok_emb.weight" in decayed and "pos_emb.weight" in decayed
    assert "blocks.0.attn.qkv.weight" in decayed and "blocks.0.ffn.fc.weight" in decayed
    assert all(n.endswith(".bias") or "norm" in n for n in plain)
    assert "blocks.0.norm1.weight" in plain and "blocks.0.attn.qkv.bias" in plain
    # the tied head is the embedding: it appears once
    n_params = sum(1 for _ in model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == n_params


def test_frozen_parameters_are_left_out():
    model = _tiny()
    for n, p in model.named_parameters():
        p.requires_grad = n.startswith("blocks.0.ffn")
    groups = param_groups(model, 0.1)
    assert sum(len(g["params"]) for g in groups) == 4  # fc/proj weight and bias
    opt = build_optimizer(model, TrainConfig(), "cpu")
    assert sum(len(g["params"]) for g in opt.param_groups) == 4
    for p in model.parameters():
        p.requires_grad = False
    with pytest.raises(ScratchLLMError, match="no trainable parameters"):
        build_optimizer(model, TrainConfig(), "cpu")


def test_fused_adamw_on_cpu_when_available():
    opt = build_optimizer(_tiny(), TrainConfig(), "cpu")
    assert opt.defaults.get("fused") == fused_available("cpu")
    opt = build_optimizer(_tiny(), TrainConfig(fused_adamw=False), "cpu")
    assert not opt.defaults.get("fused")
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_fused_and_unfused_adamw_agree():
    a, b = _tiny(), _tiny()
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 11, (2, 8))
    for model, fused in ((a, True), (b, False)):
        opt = build_optimizer(model, TrainConfig(fused_adamw=fused, lr=1e-2), "cpu")
        for _ in range(3):
            model(x).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


def test_train_config_validation_and_resolution():
    with pytest.raises(ScratchLLMError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ScratchLLMError, match="min_lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)
    sections = {"model": GPTConfig(), "train": TrainConfig()}
    preset = {k: PRESETS["char-shakespeare"][k] for k in ("model", "train")}
    out = resolve_configs(sections, preset=preset, overrides=["lr=3e-4", "grad_accum_steps=2", "n_layer=2"])
    assert out["train"].lr == 3e-4 and out["train"].grad_accum_steps == 2
    assert out["train"].batch_size == PRESETS["char-shakespeare"]["train"]["batch_size"]
    assert out["model"].n_layer == 2
    with pytest.raises(ScratchLLMError, match="valid keys: .*max_steps"):
        resolve_configs(sections, overrides=["max_stepz=3"])


def test_wsd_schedule_holds_then_decays_linearly():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110, lr_schedule="wsd", decay_frac=0.5)
    assert lr_at(4, cfg) == pytest.approx(0.5)  # the same warm-up
    assert lr_at(10, cfg) == lr_at(54, cfg) == 1.0  # stable until the last 55 steps
    assert lr_at(55, cfg) == pytest.approx(1.0)
    assert lr_at(82.5, cfg) == pytest.approx(0.55)  # half-way down the linear decay
    assert lr_at(110, cfg) == pytest.approx(0.1) and lr_at(300, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    with pytest.raises(ScratchLLMError, match="decay_frac"):
        TrainConfig(lr_schedule="wsd", decay_frac=0.0)


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    from scratchllm.train.optim import muon_parameters

    for tie in (True, False):
        model = _tiny(tie)
        names = {id(p): n for n, p in model.named_parameters()}
        muon = {names[id(p)] for p in muon_parameters(model)}
        assert muon == {
            "blocks.0.attn.qkv.weight",
            "blocks.0.attn.proj.weight",
            "blocks.0.ffn.fc.weight",
            "blocks.0.ffn.proj.weight",
        }
        opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=2e-3, muon_lr=0.02), "cpu")
        assert type(opt).__name__ == "MuonAdamW" and isinstance(opt, torch.optim.Optimizer)
        adam = [names[id(p)] for g in opt.adamw.param_groups for p in g["params"]]
        assert "tok_emb.weight" in adam and "blocks.0.norm1.weight" in adam and not set(adam) & muon
        assert ("out_head.weight" in adam) == (not tie)
        assert len(adam) + len(muon) == sum(1 for _ in model.parameters())  # every parameter, once
        assert opt.param_groups == opt.adamw.param_groups + opt.muon.param_groups
        set_lr(opt, 1e-3)  # the schedule scales Muon's rate by muon_lr / lr
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-3, 1e-2])
        assert opt.muon.param_groups[0]["weight_decay"] == 0.0


def test_muon_adamw_state_dict_round_trip_continues_identically():
    """Save after 3 steps, load into a fresh optimizer, take 2 more: identical to 5 straight."""
    from scratchllm.train.checkpoint import load_optimizer_from, optimizer_tensors

    x = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(optimizer="muon", lr=1e-2, muon_lr=0.05, muon_weight_decay=0.1)

    def steps(model, opt, n):
        for _ in range(n):
            set_lr(opt, 1e-2)
            model(x).logsumexp(-1).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    torch.manual_seed(0)
    a = _tiny()
    b = _tiny()
    b.load_state_dict(a.state_dict())
    opt_a = build_optimizer(a, cfg, "cpu")
    steps(a, opt_a, 5)
    opt_b = build_optimizer(b, cfg, "cpu")
    steps(b, opt_b, 3)
    tensors, meta = optimizer_tensors(opt_b, b)
    assert any(k.endswith(".momentum_buffer") for k in tensors) and any(
        k.endswith(".exp_avg") for k in tensors
    )
    opt_c = build_optimizer(b, cfg, "cpu")
    load_optimizer_from(opt_c, {k: v.clone() for k, v in tensors.items()}, meta, "test")
    assert opt_c.muon.state is opt_c.state and opt_c.adamw.param_groups[0] is opt_c.param_groups[0]
    steps(b, opt_c, 2)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n


def test_muon_config_checks():
    with pytest.raises(ScratchLLMError, match="muon_lr"):
        TrainConfig(muon_lr=0.0)
    with pytest.raises(ScratchLLMError, match="muon_momentum"):
        TrainConfig(muon_momentum=1.0)
    with pytest.raises(ScratchLLMError, match="optimizer"):
        resolve_configs({"train": TrainConfig()}, overrides=["optimizer=sgd"])
    model = _tiny()
    for n, p in model.named_parameters():
        p.requires_grad = "norm" in n
    with pytest.raises(ScratchLLMError, match="optimizer=muon needs"):
        build_optimizer(model, TrainConfig(optimizer="muon"), "cpu")


NS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's Newton-Schulz coefficients


def _ill_conditioned(rows: int, cols: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A matrix U diag(s) V^T with singular values spread over three decades, and its U, V."""
    g = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=g))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=g))
    s = torch.logspace(0, -3, k)
    return u @ torch.diag(s) @ v.T, u, v


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (32, 32)])
def test_newton_schulz_flattens_the_spectrum_and_keeps_the_directions(shape):
    from scratchllm.train.optim import newton_schulz

    m, u, v = _ill_conditioned(*shape)
    out = newton_schulz(m * 7.0, NS, 5, 1e-7, torch.float32)  # the scale of the input does not matter
    s = torch.linalg.svdvals(out)
    # The input's singular values span 1 .. 1e-3; five quintic steps bring all but the very smallest
    # into Muon's band (roughly 0.7 .. 1.2) — an orthogonal matrix "up to a flat spectrum".
    assert s.max() < 1.25 and (s > 0.6).float().mean() >= 0.8
    core = u.T @ out @ v  # the same singular vectors: this is diagonal
    off = core - torch.diag(torch.diagonal(core))
    assert off.abs().max() < 1e-4
    assert torch.all(torch.diagonal(core) > 0)  # the signs are kept (U S' V^T, not some other basis)
    # torch's own (bfloat16) iteration gives the same matrix, to bfloat16's precision (on a
    # gradient-like random matrix; bfloat16 rounding is amplified along tiny singular values)
    from torch.optim._muon import _zeropower_via_newtonschulz

    r = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    ref = _zeropower_via_newtonschulz(r, NS, 5, 1e-7).float()
    assert torch.allclose(newton_schulz(r, NS, 5, 1e-7, torch.float32), ref, atol=1e-2)


def _one_step(opt_name: str, **train):
    torch.manual_seed(0)
    model = _tiny(tie=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, TrainConfig(optimizer=opt_name, lr=1e-2, **train), "cpu")
    x = torch.randint(0, 11, (4, 8), generator=torch.Generator().manual_seed(1))
    model(x).logsumexp(-1).mean().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    deltas = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    return model, grads, deltas


def test_muon_update_is_the_orthogonalised_gradient_and_adamw_updates_the_rest():
    """Step 1 from zero momentum: a hidden matrix moves by -lr * sqrt(max(1, rows/cols)) * NS(grad)
    (float32 on the CPU, to float32 precision); the embedding, head and norms take AdamW's step."""
    from scratchllm.train.optim import newton_schulz

    model, grads, deltas = _one_step("muon", muon_lr=0.05)
    scale = 0.05 / 1e-2
    lr0 = lr_at(0, TrainConfig(lr=1e-2))
    for name in ("blocks.0.attn.qkv.weight", "blocks.0.ffn.proj.weight"):
        g = grads[name]
        rows, cols = g.shape
        expected = -lr0 * scale * max(1.0, rows / cols) ** 0.5 * newton_schulz(g, NS, 5, 1e-7, torch.float32)
        assert torch.allclose(deltas[name], expected, atol=1e-7, rtol=1e-5), name
        s_update, s_grad = torch.linalg.svdvals(deltas[name]), torch.linalg.svdvals(g)
        # the gradient is dominated by a few directions; the update moves along (nearly) all alike
        # (the spread is max / median: a LayerNorm'd input leaves the gradient one rank short)
        assert s_update.max() / s_update.median() < 2 < 4 < s_grad.max() / s_grad.median()
    # AdamW's first step is lr * sign(grad) per entry (m / sqrt(v) = g / |g|), decoupled decay aside
    for name in ("tok_emb.weight", "out_head.weight", "blocks.0.norm1.weight"):
        g, d = grads[name], deltas[name]
        moved = g.abs() > 1e-8
        assert torch.allclose(d[moved].abs(), torch.full_like(d[moved], lr0), rtol=0.05), name


def test_muon_step_on_cpu_matches_torch_optim_muon():
    """The float32 CPU step is torch.optim.Muon's math: same momentum, same lr rule, same decay."""
    from scratchllm.train.optim import muon_adamw_class

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(24, 8))
    w2 = torch.nn.Parameter(w.detach().clone())
    ours = muon_adamw_class().Muon([w], lr=0.03, weight_decay=0.1, momentum=0.9)
    ref = torch.optim.Muon([w2], lr=0.03, weight_decay=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        g = torch.randn(24, 8, generator=gen)
        w.grad, w2.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        assert torch.allclose(w, w2, atol=2e-3)  # bfloat16 vs float32 orthogonalisation
    assert torch.allclose(ours.state[w]["momentum_buffer"], ref.state[w2]["momentum_buffer"], atol=1e-6)
    assert set(ours.state_dict()["state"][0]) == set(ref.state_dict()["state"][0]) == {"momentum_buffer"}


def test_adamw_updates_every_parameter_alike_muon_does_not():
    """The switch changes the hidden matrices' step and nothing else's (same init, same batch)."""
    _, _, d_adam = _one_step("adamw")
    _, _, d_muon = _one_step("muon")
    for name in d_adam:
        same = torch.allclose(d_adam[name], d_muon[name], atol=1e-7)
        hidden = name.startswith("blocks.") and name.endswith("weight") and "norm" not in name
        assert same != hidden, name
