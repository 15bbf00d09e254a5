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
from scratchllm.train.optim import build_optimizer, fused_available, lr_at, param_groups


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
