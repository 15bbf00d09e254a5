"""Fixtures for the data tests: a char tokenizer covering every text the tests feed it."""

from __future__ import annotations

import string
from pathlib import Path

import pytest

from scratchllm.data import default_corpus
from scratchllm.tokenizer import CharTokenizer


@pytest.fixture(scope="session")
def char_tok() -> CharTokenizer:
    # The embedded corpus plus printable ASCII covers tinyshakespeare and the-verdict too (checked
    # when they are there), so the tests that do not read ../shared need nothing from it.
    return CharTokenizer.train(default_corpus() + string.printable)


@pytest.fixture(scope="session")
def char_tok_file(char_tok: CharTokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "char.json"
    char_tok.save(path)
    return path
