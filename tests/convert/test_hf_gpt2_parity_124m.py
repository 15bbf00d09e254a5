"""Exactness at the real GPT-2 small shape (``GPT2Config()`` defaults, 124,439,808 parameters).

Random weights, one forward pass per model (plus a short greedy generation) to stay affordable on
a CPU; the tiny-model tests in test_hf_gpt2_parity.py cover the rest.
"""

from __future__ import annotations

import pytest
import torch
from hf_gpt2_helpers import TOL, assert_same_greedy_generation, max_logit_diff, random_ids, randomize_

from scratchllm.convert.hf_gpt2 import export_hf_gpt2, load_hf_gpt2
from scratchllm.model.config import PRESETS, GPTConfig
from scratchllm.model.gpt import GPTModel
from scratchllm.tokenizer.gpt2 import load_gpt2_dir


@pytest.mark.slow
def test_import_gpt2_124m_shape_matches_transformers(tmp_path, hf_tok_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf_model = GPT2LMHeadModel(GPT2Config()).eval()
    randomize_(hf_model, seed=5, std=0.02)
    hf_model.save_pretrained(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((hf_tok_dir / name).read_bytes())
    loaded = load_hf_gpt2(tmp_path)
    assert loaded.model.num_params() == 124_439_808
    assert max_logit_diff(loaded.model, hf_model, random_ids(50257, shape=(1, 32))) < TOL


@pytest.mark.slow
def test_export_gpt2_124m_preset_loads_in_transformers(tmp_path, hf_tok_dir):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    ours = GPTModel(GPTConfig(**PRESETS["gpt2"]["model"])).eval()
    export_hf_gpt2(ours, load_gpt2_dir(hf_tok_dir), tmp_path)
    hf_model = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert sum(p.numel() for p in hf_model.parameters()) == 124_439_808
    assert max_logit_diff(ours, hf_model, random_ids(50257, shape=(1, 32))) < TOL
    # 16 tokens, not 50: each 124M step costs a full forward of both models on a shared CPU; the
    # tiny tests above compare the full 50.
    assert_same_greedy_generation(ours, hf_model, n=16)
