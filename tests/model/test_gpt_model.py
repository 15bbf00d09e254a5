"""GPTModel: shapes, causality for every variant, init statistics, parameter counts, save/load."""

from __future__ import annotations

import math

import pytest
import torch

from scratchllm.architectures import build_model
from scratchllm.errors import ScratchLLMError
from scratchllm.model.config import PRESETS, GPTConfig
from scratchllm.model.gpt import GPTModel, lm_loss


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=61, context_length=16, n_layer=2, n_head=4, n_embd=32)
    base.update(kw)
    return GPTConfig(**base)


VARIANTS = [
    dict(),
    dict(pos_emb="sinusoidal"),
    dict(pos_emb="rope"),
    dict(pos_emb="alibi"),
    dict(pos_emb="none"),
    dict(norm="rmsnorm"),
    dict(norm_position="post"),
    dict(norm_position="post", norm="rmsnorm", pos_emb="rope"),
    dict(activation="relu"),
    dict(activation="swiglu", norm="rmsnorm", pos_emb="rope", bias=False),
    dict(n_kv_head=2, pos_emb="rope"),
    dict(n_kv_head=1, pos_emb="alibi", activation="swiglu"),
    dict(tie_weights=False, qkv_bias=False, bias=False),
    dict(qk_norm=True),
    dict(qk_norm=True, pos_emb="rope", n_kv_head=2),
    dict(activation="relu2"),
    dict(logit_softcap=2.0),
    # the speedrun switches together (zero_init_proj is tested on its own: its outputs start equal)
    dict(pos_emb="rope", norm="rmsnorm", activation="relu2", qk_norm=True, logit_softcap=15.0, bias=False),
]

#: The switches added for the speedrun recipes (issue 21), each saved and loaded through a run directory.
SPEEDRUN_SWITCHES = [
    dict(qk_norm=True),
    dict(activation="relu2"),
    dict(logit_softcap=2.0),
    dict(zero_init_proj=True, tie_weights=False),
    dict(tie_weights=False, qk_norm=True, activation="relu2", logit_softcap=15.0, pos_emb="rope"),
]


def _ids(v: dict) -> str:
    return ",".join(f"{k}={x}" for k, x in v.items()) or "gpt2"


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_causality_and_shapes(variant):
    torch.manual_seed(0)
    model = GPTModel(tiny(**variant)).eval()
    idx = torch.randint(0, 61, (2, 12))
    logits = model(idx)
    assert logits.shape == (2, 12, 61)
    assert torch.isfinite(logits).all()
    t = 6
    changed = idx.clone()
    changed[:, t + 1 :] = torch.randint(0, 61, (2, 12 - t - 1))
    out2 = model(changed)
    assert torch.allclose(out2[:, : t + 1], logits[:, : t + 1], atol=1e-5)
    assert not torch.allclose(out2[:, t + 1 :], logits[:, t + 1 :])
    assert model.aux_loss().item() == 0.0


@pytest.mark.parametrize("variant", VARIANTS[:6], ids=_ids)
def test_save_load_round_trip_safetensors(variant, tmp_path):
    from safetensors.torch import load_file, load_model, save_model

    torch.manual_seed(0)
    model = GPTModel(tiny(**variant))
    path = tmp_path / "model.safetensors"
    save_model(model, str(path))
    stored = load_file(str(path))
    assert "out_head.weight" not in stored or "tok_emb.weight" not in stored  # tied stored once
    for name in stored:  # no fixed tables in the file
        assert not any(b in name for b in ("pos_table", "rope_cos", "alibi"))
    fresh = GPTModel(tiny(**variant))
    load_model(fresh, str(path))
    assert fresh.out_head.weight is fresh.tok_emb.weight
    idx = torch.randint(0, 61, (1, 9))
    assert torch.equal(model.eval()(idx), fresh.eval()(idx))


def test_parameter_names_follow_the_contract():
    names = dict(GPTModel(tiny()).named_parameters())
    for key in [
        "tok_emb.weight",
        "pos_emb.weight",
        "blocks.0.norm1.weight",
        "blocks.0.norm1.bias",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.qkv.bias",
        "blocks.0.attn.proj.weight",
        "blocks.1.norm2.bias",
        "blocks.1.ffn.fc.weight",
        "blocks.1.ffn.proj.bias",
        "final_norm.weight",
        "final_norm.bias",
    ]:
        assert key in names, key
    sd = GPTModel(tiny()).state_dict()
    assert sd["out_head.weight"].shape == (61, 32)
    gqa = dict(GPTModel(tiny(n_kv_head=2, activation="swiglu", ffn_hidden=48)).named_parameters())
    assert gqa["blocks.0.attn.qkv.weight"].shape == ((4 + 2 * 2) * 8, 32)
    assert gqa["blocks.0.ffn.fc.weight"].shape == (96, 32)
    assert gqa["blocks.0.ffn.proj.weight"].shape == (32, 48)


def test_gpt2_init_statistics():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=1000, context_length=64, n_layer=8, n_head=4, n_embd=256)
    model = GPTModel(cfg)
    p = dict(model.named_parameters())
    assert p["tok_emb.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert p["blocks.0.attn.qkv.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    resid = 0.02 / math.sqrt(2 * 8)
    assert p["blocks.3.attn.proj.weight"].std().item() == pytest.approx(resid, rel=0.05)
    assert p["blocks.3.ffn.proj.weight"].std().item() == pytest.approx(resid, rel=0.05)
    assert p["blocks.0.attn.qkv.bias"].abs().max().item() == 0.0
    assert torch.equal(p["blocks.0.norm1.weight"], torch.ones(256))


@pytest.mark.parametrize(
    "name,count",
    [
        ("gpt2", 124_439_808),
        ("gpt2-medium", 354_823_168),
        ("gpt2-large", 774_030_080),
        ("gpt2-xl", 1_557_611_200),
    ],
)
def test_preset_parameter_counts(name, count):
    with torch.device("meta"):
        model = GPTModel(GPTConfig(**PRESETS[name]["model"]))
    assert model.num_params() == count
    cfg = model.config
    untied = count + cfg.vocab_size * cfg.n_embd
    assert (
        model.num_params(exclude_embeddings=True) == count - cfg.vocab_size * cfg.n_embd - 1024 * cfg.n_embd
    )
    assert untied > count


def test_flops_estimate_matches_formula():
    model = GPTModel(tiny())
    cfg = model.config
    n = model.num_params() - 16 * 32  # tied head counts, position table does not
    assert model.estimate_flops_per_token() == pytest.approx(6 * n + 12 * 2 * 32 * 16)
    assert model.estimate_flops_per_token(training=False) == pytest.approx((6 * n + 12 * 2 * 32 * 16) / 3)
    assert cfg.context_length == 16


def test_lm_loss_ignores_minus_100_and_too_long_input_errors():
    torch.manual_seed(0)
    model = GPTModel(tiny())
    idx = torch.randint(0, 61, (2, 8))
    logits = model(idx)
    targets = idx.clone()
    loss = lm_loss(logits, targets)
    assert loss.item() == pytest.approx(math.log(61), rel=0.1)  # ~uniform at init
    targets[:, :4] = -100
    manual = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 61), idx[:, 4:].reshape(-1))
    assert lm_loss(logits, targets).item() == pytest.approx(manual.item(), rel=1e-5)
    with pytest.raises(ScratchLLMError, match="context_length"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_only_last_and_build_model_registry():
    torch.manual_seed(0)
    model = build_model(
        "gpt", {"vocab_size": 61, "context_length": 16, "n_layer": 1, "n_head": 2, "n_embd": 16}
    )
    assert isinstance(model, GPTModel)
    idx = torch.randint(0, 61, (2, 5))
    assert torch.allclose(model(idx, only_last=True)[:, 0], model(idx)[:, -1], atol=1e-6)


def test_attention_weights_for_plotting():
    model = GPTModel(tiny(pos_emb="alibi")).eval()
    maps = model.attention_weights(torch.randint(0, 61, (1, 6)))
    assert len(maps) == 2 and maps[0].shape == (1, 4, 6, 6)
    assert torch.allclose(maps[1].sum(-1), torch.ones(1, 4, 6), atol=1e-5)
    assert all(b.attn.last_weights is None for b in model.blocks)


def test_training_step_reduces_loss():
    torch.manual_seed(0)
    model = GPTModel(tiny(dropout=0.1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.randint(0, 61, (4, 16))
    losses = []
    for _ in range(15):
        loss = lm_loss(model(idx[:, :-1]), idx[:, 1:]) + model.aux_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


@pytest.mark.parametrize("variant", SPEEDRUN_SWITCHES, ids=_ids)
def test_speedrun_switches_round_trip_through_a_run_directory(variant, tmp_path):
    from scratchllm.load import load_model
    from scratchllm.runs import save_run_files

    torch.manual_seed(0)
    model = GPTModel(tiny(**variant))
    with torch.no_grad():  # move away from the initialisation (zero_init_proj starts at zeros)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_run_files(tmp_path / "run", model, arch="gpt", model_config=model.config)
    loaded = load_model(tmp_path / "run").model
    for key, value in variant.items():
        assert getattr(loaded.config, key) == value
    assert (loaded.out_head.weight is loaded.tok_emb.weight) == loaded.config.tie_weights
    assert model.state_dict().keys() == loaded.state_dict().keys()
    idx = torch.randint(0, 61, (2, 9))
    assert torch.equal(model.eval()(idx), loaded(idx))


def test_qk_norm_adds_one_gain_per_head_dimension():
    names = dict(GPTModel(tiny(qk_norm=True, n_kv_head=2)).named_parameters())
    assert names["blocks.0.attn.q_norm.weight"].shape == (8,)
    assert names["blocks.1.attn.k_norm.weight"].shape == (8,)
    assert not any("q_norm" in n for n in dict(GPTModel(tiny()).named_parameters()))
    # Scaling the qkv projection scales q and k; with QK-norm the attention does not change.
    torch.manual_seed(0)
    model = GPTModel(tiny(qk_norm=True)).eval()
    idx = torch.randint(0, 61, (2, 10))
    ref = model(idx)
    with torch.no_grad():
        for block in model.blocks:
            C = model.config.n_embd
            block.attn.qkv.weight[: 2 * C] *= 7.0  # q and k rows only
    assert torch.allclose(model(idx), ref, atol=1e-4)


def test_logit_softcap_bounds_the_logits():
    torch.manual_seed(0)
    model = GPTModel(tiny(logit_softcap=2.0, init_std=1.0)).eval()
    plain = GPTModel(tiny(init_std=1.0)).eval()
    plain.load_state_dict(model.state_dict())
    idx = torch.randint(0, 61, (2, 10))
    capped, raw = model(idx), plain(idx)
    assert raw.abs().max() > 4.0 and capped.abs().max() <= 2.0  # (tanh rounds to 1 in float32)
    assert torch.allclose(capped, 2.0 * torch.tanh(raw / 2.0), atol=1e-5)


def test_relu2_is_the_squared_relu():
    from scratchllm.model.layers import ReLU2

    x = torch.linspace(-3, 3, 13)
    assert torch.equal(ReLU2()(x), torch.relu(x) ** 2)


def test_zero_init_proj_starts_every_block_as_the_identity():
    torch.manual_seed(0)
    cfg = tiny(zero_init_proj=True, tie_weights=False)
    model = GPTModel(cfg)
    for name, p in model.named_parameters():
        if name.endswith(".proj.weight") or name == "out_head.weight":
            assert p.abs().max().item() == 0.0, name
    assert dict(model.named_parameters())["blocks.0.attn.qkv.weight"].std().item() == pytest.approx(
        0.02, rel=0.2
    )
    idx = torch.randint(0, 61, (2, 12))
    loss = lm_loss(model(idx), idx)
    assert loss.item() == pytest.approx(math.log(61), abs=1e-6)  # uniform first prediction
    # Tied: the head is the embedding, which keeps its normal init; only the projections are zero.
    tied = GPTModel(tiny(zero_init_proj=True))
    assert tied.out_head.weight.std().item() == pytest.approx(0.02, rel=0.2)
    # Training moves every weight away from zero within a few steps.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        lm_loss(model(idx), idx).backward()
        opt.step()
    for name, p in model.named_parameters():
        if name.endswith(".proj.weight"):
            assert p.abs().max().item() > 0, name


def test_bad_softcap_is_refused():
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ScratchLLMError, match="logit_softcap"):
            tiny(logit_softcap=bad)
