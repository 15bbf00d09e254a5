"""Fixtures for the Hugging Face GPT-2 conversion tests (helpers: hf_gpt2_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hf_gpt2_helpers import copy_gpt2_tokenizer_files, hf_gpt2_config, randomize_


@pytest.fixture(scope="session")
def hf_tok_dir(tmp_path_factory, gpt2_files) -> Path:
    return copy_gpt2_tokenizer_files(gpt2_files, tmp_path_factory.mktemp("hf_tok"))


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory, gpt2_files):
    """(directory, model): a random tiny ``GPT2LMHeadModel`` saved with ``save_pretrained``."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    model = randomize_(GPT2LMHeadModel(hf_gpt2_config()), seed=1).eval()
    out = tmp_path_factory.mktemp("tiny_hf")
    model.save_pretrained(out)
    copy_gpt2_tokenizer_files(gpt2_files, out)
    return out, model
