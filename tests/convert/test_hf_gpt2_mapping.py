"""Config and state-dict translation between Hugging Face GPT-2 and scratchllm (no files, no logits)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from scratchllm.convert.hf_gpt2 import (
    gpt_to_hf_config,
    hf_config_to_gpt,
    hf_state_dict_to_ours,
    ours_to_hf_state_dict,
)
from scratchllm.errors import ScratchLLMError
from scratchllm.model.config import PRESETS, GPTConfig
from scratchllm.model.gpt import GPTModel

TINY = GPTConfig(vocab_size=101, context_length=16, n_layer=2, n_head=2, n_embd=8)


def hf_dict(**overrides):
    return {"model_type": "gpt2", "vocab_size": 101, "n_positions": 16, "n_embd": 8, "n_layer": 2,
            "n_head": 2, **overrides}  # fmt: skip


# ------------------------------------------------------------------------------------------ configs
def test_hf_config_maps_every_field():
    cfg = hf_config_to_gpt(hf_dict(layer_norm_epsilon=1e-6, n_inner=20, tie_word_embeddings=False))
    assert (cfg.vocab_size, cfg.context_length, cfg.n_embd, cfg.n_layer, cfg.n_head) == (101, 16, 8, 2, 2)
    assert cfg.norm_eps == 1e-6 and cfg.ffn_hidden == 20 and cfg.tie_weights is False
    assert cfg.activation == "gelu" and cfg.pos_emb == "learned" and cfg.norm == "layernorm"
    assert cfg.bias and cfg.use_qkv_bias
    assert cfg.dropout == 0.0  # inference by default ...
    assert hf_config_to_gpt(hf_dict(resid_pdrop=0.1), keep_dropout=True).dropout == 0.1  # ... unless asked


def test_hf_defaults_are_gpt2_small():
    # transformers fills absent keys with GPT2Config's defaults; so must we.
    cfg = hf_config_to_gpt({"model_type": "gpt2"})
    for key, value in PRESETS["gpt2"]["model"].items():
        assert getattr(cfg, key) == value


def test_config_round_trip_and_transformers_accepts_it():
    from transformers import GPT2Config

    cfg = GPTConfig(vocab_size=101, context_length=16, n_layer=3, n_head=2, n_embd=8, ffn_hidden=24,
                    norm_eps=1e-6, tie_weights=False)  # fmt: skip
    hf = gpt_to_hf_config(cfg, bos_token_id=100, eos_token_id=100)
    back = hf_config_to_gpt(hf)
    assert dataclasses.replace(back, qkv_bias=None) == cfg
    hf_cfg = GPT2Config(**hf)
    assert (hf_cfg.n_inner, hf_cfg.n_positions, hf_cfg.tie_word_embeddings) == (24, 16, False)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"model_type": "llama"}, "model_type 'llama'"),
        ({"activation_function": "relu"}, "activation_function 'relu'"),
        ({"activation_function": "gelu"}, "activation_function 'gelu'"),  # exact erf GELU: not ours
        ({"add_cross_attention": True}, "add_cross_attention"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ],
)
def test_unsupported_hf_configs_are_clear_errors(overrides, needle):
    with pytest.raises(ScratchLLMError, match=needle):
        hf_config_to_gpt(hf_dict(**overrides))


@pytest.mark.parametrize(
    "switch, needle",
    [
        ({"pos_emb": "rope"}, "pos_emb='rope'"),
        ({"activation": "swiglu"}, "activation='swiglu'"),
        ({"norm": "rmsnorm"}, "norm='rmsnorm'"),
        ({"norm_position": "post"}, "norm_position='post'"),
        ({"n_kv_head": 1}, "n_kv_head=1"),
        ({"n_experts": 2}, "n_experts=2"),
        ({"activation": "relu2"}, "activation='relu2'"),
        ({"qk_norm": True}, "qk_norm=True"),
        ({"logit_softcap": 15.0}, "logit_softcap=15.0"),
    ],
)
def test_export_refuses_non_gpt2_switches(switch, needle):
    cfg = dataclasses.replace(TINY, **switch)
    with pytest.raises(ScratchLLMError, match=needle) as err:
        gpt_to_hf_config(cfg)
    assert "cannot export" in str(err.value)


def test_export_accepts_switches_gpt2_can_hold():
    """Zero-initialised projections change only the starting weights; an untied head is a GPT-2 option."""
    cfg = dataclasses.replace(TINY, zero_init_proj=True, tie_weights=False)
    assert gpt_to_hf_config(cfg)["tie_word_embeddings"] is False


def test_export_names_every_blocking_switch():
    cfg = dataclasses.replace(TINY, pos_emb="rope", activation="swiglu")
    with pytest.raises(ScratchLLMError, match="pos_emb='rope'.*activation='swiglu'"):
        gpt_to_hf_config(cfg)


# ------------------------------------------------------------------------------------- state dicts
def our_state(cfg: GPTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = GPTModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model.state_dict()


def test_round_trip_is_exact_and_transposes_conv1d():
    sd = our_state(TINY)
    hf = ours_to_hf_state_dict(sd, TINY)
    assert all(k.startswith("transformer.") for k in hf)
    assert "lm_head.weight" not in hf  # tied: transformers re-ties it
    assert "transformer.h.0.attn.bias" not in hf
    for ours, theirs in [("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                         ("ffn.fc", "mlp.c_fc"), ("ffn.proj", "mlp.c_proj")]:  # fmt: skip
        assert torch.equal(hf[f"transformer.h.1.{theirs}.weight"], sd[f"blocks.1.{ours}.weight"].t())
    back = hf_state_dict_to_ours(hf, TINY)
    assert back.keys() == sd.keys()
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    assert back["out_head.weight"] is back["tok_emb.weight"]


def test_prefix_optional_and_mask_buffers_ignored():
    hf = ours_to_hf_state_dict(our_state(TINY), TINY)
    # OpenAI's original upload: no "transformer." prefix, causal-mask buffers in every layer.
    bare = {k.removeprefix("transformer."): v for k, v in hf.items()}
    for i in range(TINY.n_layer):
        bare[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16))
        bare[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    a, b = hf_state_dict_to_ours(hf, TINY), hf_state_dict_to_ours(bare, TINY)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tied_head_equal_to_wte_is_accepted_different_is_an_error():
    hf = ours_to_hf_state_dict(our_state(TINY), TINY)
    hf["lm_head.weight"] = hf["transformer.wte.weight"].clone()
    hf_state_dict_to_ours(hf, TINY)
    hf["lm_head.weight"] = hf["lm_head.weight"] + 1
    with pytest.raises(ScratchLLMError, match="lm_head.weight differs from wte.weight"):
        hf_state_dict_to_ours(hf, TINY)


def test_untied_head_round_trip():
    cfg = dataclasses.replace(TINY, tie_weights=False)
    sd = our_state(cfg)
    hf = ours_to_hf_state_dict(sd, cfg)
    assert torch.equal(hf["lm_head.weight"], sd["out_head.weight"])
    del hf["lm_head.weight"]
    with pytest.raises(ScratchLLMError, match="no lm_head.weight"):
        hf_state_dict_to_ours(hf, cfg)


def test_missing_unexpected_and_misshaped_tensors_are_named():
    hf = ours_to_hf_state_dict(our_state(TINY), TINY)
    missing = {k: v for k, v in hf.items() if k != "transformer.h.1.mlp.c_fc.bias"}
    with pytest.raises(ScratchLLMError, match=r"lack 1 tensor.*h\.1\.mlp\.c_fc\.bias"):
        hf_state_dict_to_ours(missing, TINY)
    extra = {**hf, "transformer.h.2.ln_1.weight": torch.ones(8)}
    with pytest.raises(ScratchLLMError, match=r"h\.2\.ln_1\.weight"):
        hf_state_dict_to_ours(extra, TINY)
    longer = dataclasses.replace(TINY, context_length=32)  # config.json and weights disagree
    with pytest.raises(ScratchLLMError, match=r"wpe\.weight has shape \[16, 8\].*\[32, 8\]"):
        hf_state_dict_to_ours(hf, longer)
    # A transposed (nn.Linear-layout) c_fc weight is caught by its shape.
    wrong = {**hf, "transformer.h.0.mlp.c_fc.weight": hf["transformer.h.0.mlp.c_fc.weight"].t()}
    with pytest.raises(ScratchLLMError, match=r"h\.0\.mlp\.c_fc\.weight has shape \[32, 8\]"):
        hf_state_dict_to_ours(wrong, TINY)


def test_models_without_biases_export_zero_biases():
    # The book's GPT_CONFIG_124M has qkv_bias=False: a missing bias is a zero bias.
    cfg = dataclasses.replace(TINY, qkv_bias=False)
    sd = our_state(cfg)
    assert "blocks.0.attn.qkv.bias" not in sd
    hf = ours_to_hf_state_dict(sd, cfg)
    assert torch.count_nonzero(hf["transformer.h.0.attn.c_attn.bias"]) == 0
    back = hf_state_dict_to_ours(hf, cfg)
    assert back.keys() == sd.keys()
    hf["transformer.h.0.attn.c_attn.bias"][0] = 1.0
    with pytest.raises(ScratchLLMError, match="non-zero bias"):
        hf_state_dict_to_ours(hf, cfg)


def test_export_refuses_extra_parameters():
    sd = {**our_state(TINY), "blocks.0.attn.qkv.lora_a": torch.zeros(2, 8)}
    with pytest.raises(ScratchLLMError, match="lora_a"):
        ours_to_hf_state_dict(sd, TINY)
