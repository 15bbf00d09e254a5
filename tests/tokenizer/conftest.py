"""Tokenizers shared by the tokenizer tests (built once per session: GPT-2's takes ~0.2 s)."""

from __future__ import annotations

import pytest

from scratchllm.tokenizer.bpe import BPETokenizer, train_bpe
from scratchllm.tokenizer.gpt2 import load_gpt2_files


@pytest.fixture(scope="session")
def gpt2_tok(gpt2_files) -> BPETokenizer:
    return load_gpt2_files(gpt2_files / "encoder.json", gpt2_files / "vocab.bpe")


@pytest.fixture(scope="session")
def shakespeare(shared_data) -> str:
    return (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def verdict(shared_data) -> str:
    return (shared_data / "the-verdict.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def small_bpe(shakespeare) -> BPETokenizer:
    """A byte-level BPE trained here: 1,000 ids on 200 KB of Shakespeare."""
    return train_bpe(shakespeare[:200_000], 1000)


@pytest.fixture(scope="session")
def small_bpe_gpt4(shakespeare) -> BPETokenizer:
    return train_bpe(shakespeare[:200_000], 600, pattern="gpt4", special_tokens=["<|endoftext|>", "<|pad|>"])
