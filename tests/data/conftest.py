"""Fixtures for the data tests: a char tokenizer covering every text the tests feed it."""

from __future__ import annotations

from pathlib import Path

import pytest

from scratchllm.data import default_corpus
from scratchllm.tokenizer import CharTokenizer


@pytest.fixture(scope="session")
def char_tok(shared_data: Path) -> CharTokenizer:
    text = default_corpus()
    for name in ("tinyshakespeare.txt", "the-verdict.txt"):
        text += (shared_data / name).read_text(encoding="utf-8")
    return CharTokenizer.train(text + "\r\t")


@pytest.fixture(scope="session")
def char_tok_file(char_tok: CharTokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "char.json"
    char_tok.save(path)
    return path
