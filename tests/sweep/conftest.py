"""Tiny char-level shards for the sweep tests (a slice of the embedded corpus: no fixture needed)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from scratchllm.data.corpus import default_corpus
    from scratchllm.data.prepare import prepare
    from scratchllm.tokenizer import CharTokenizer

    root = tmp_path_factory.mktemp("sweep-data")
    text = default_corpus()[:40_000]
    src = root / "docs.txt"
    src.write_text(text, encoding="utf-8")
    prepare(CharTokenizer.train(text), [src], root / "data", progress=False, workers=1)
    return root / "data"
