"""The ``gpt2*`` presets are exactly OpenAI's four GPT-2 sizes as ``transformers`` builds them.

Models are built on the ``meta`` device (shapes only, no memory), so even GPT-2 XL costs nothing.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from scratchllm.convert.hf_gpt2 import gpt_to_hf_config, hf_config_to_gpt
from scratchllm.model.config import PRESETS, GPTConfig
from scratchllm.model.gpt import GPTModel

# The published sizes (config.json of the hub's gpt2, gpt2-medium, gpt2-large, gpt2-xl) and their
# parameter counts with the head tied to the token embedding.
HF_SIZES = {
    "gpt2": (dict(n_embd=768, n_layer=12, n_head=12), 124_439_808),
    "gpt2-medium": (dict(n_embd=1024, n_layer=24, n_head=16), 354_823_168),
    "gpt2-large": (dict(n_embd=1280, n_layer=36, n_head=20), 774_030_080),
    "gpt2-xl": (dict(n_embd=1600, n_layer=48, n_head=25), 1_557_611_200),
}


@pytest.mark.parametrize("name", list(HF_SIZES))
def test_preset_matches_hf_config_and_parameter_count(name):
    from transformers import GPT2Config, GPT2LMHeadModel

    sizes, n_params = HF_SIZES[name]
    hf_config = {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, **sizes}
    cfg = GPTConfig(**PRESETS[name]["model"])
    assert dataclasses.replace(cfg, qkv_bias=True) == hf_config_to_gpt(hf_config)
    with torch.device("meta"):
        ours = GPTModel(cfg)
        theirs = GPT2LMHeadModel(GPT2Config(**gpt_to_hf_config(cfg)))
    assert ours.num_params() == n_params
    assert sum(p.numel() for p in theirs.parameters()) == n_params
