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
