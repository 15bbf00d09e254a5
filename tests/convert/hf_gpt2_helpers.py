"""Helpers shared by the Hugging Face GPT-2 conversion tests (fixtures are in conftest.py).

Every model is created in the test with random weights; nothing is downloaded
(``HF_HUB_OFFLINE`` makes ``transformers`` fail instead of reaching for the network).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# A GPT-2 small enough for fast tests, with GPT-2's real vocabulary so the real tokenizer fits.
TINY_HF = dict(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=2)


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int, *, std: float = 0.1) -> torch.nn.Module:
    """Give *every* parameter random values, biases and LayerNorm gains included.

    Fresh models start with zero biases and unit gains; a mapping that mixed up two biases (or
    two gains) would go unnoticed with those, so the parity tests never use them.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
        if p.dim() == 1 and name.endswith("weight"):  # LayerNorm gain
            p.copy_(1.0 + 0.1 * noise)
        else:
            p.copy_(std * noise)
    return model


def hf_gpt2_config(**overrides):
    from transformers import GPT2Config

    return GPT2Config(**{**TINY_HF, **overrides})


def copy_gpt2_tokenizer_files(gpt2_files: Path, out_dir: Path) -> Path:
    """OpenAI's encoder.json / vocab.bpe are, byte for byte, Hugging Face's vocab.json / merges.txt."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(gpt2_files / "encoder.json", out_dir / "vocab.json")
    shutil.copyfile(gpt2_files / "vocab.bpe", out_dir / "merges.txt")
    return out_dir
