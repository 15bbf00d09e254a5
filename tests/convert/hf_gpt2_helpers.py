"""Helpers shared by the Hugging Face GPT-2 conversion tests (fixtures are in conftest.py).

Every model is created in the test with random weights; nothing is downloaded
(``HF_HUB_OFFLINE`` makes ``transformers`` fail instead of reaching for the network).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from scratchllm.generate import generate

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


#: Largest |logit difference| accepted between us and transformers (fp32).
TOL = 1e-4


def random_ids(vocab: int, shape=(2, 24), seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def max_logit_diff(ours: torch.nn.Module, theirs: torch.nn.Module, ids: torch.Tensor) -> float:
    return (ours(ids) - theirs(ids).logits).abs().max().item()


@torch.no_grad()
def assert_same_greedy_generation(ours: torch.nn.Module, theirs: torch.nn.Module, n: int = 50) -> None:
    """Greedy decoding: ours (KV cache, temperature 0) vs ``transformers``' ``generate``."""
    prompt = random_ids(50257, shape=(1, 8), seed=9)
    expected = theirs.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=n,
        pad_token_id=50256,
        eos_token_id=50256,
    )[0]
    got = generate(ours, prompt[0], n, temperature=0.0, eos_id=50256)
    assert got.tolist() == expected.tolist()
    assert len(got) > 8 + n // 2  # it really generated (an early end-of-text would be a weak test)
