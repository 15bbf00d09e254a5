"""The embedded default corpus needs no download and fails clearly where Python lacks it."""

from __future__ import annotations

import sys

import pytest

from scratchllm.data import default_corpus, default_corpus_documents
from scratchllm.errors import ScratchLLMError


def test_default_corpus_is_substantial_english_prose():
    text = default_corpus()
    assert len(text.encode("utf-8")) > 400_000
    assert "statement" in text and "<|endoftext|>" not in text
    assert text == default_corpus()  # deterministic


def test_documents_are_the_sorted_topics():
    from pydoc_data.topics import topics

    docs = default_corpus_documents()
    assert len(docs) == len(topics) and all(docs)
    assert docs[0] == topics[sorted(topics)[0]].strip()
    assert default_corpus() == "\n\n".join(docs) + "\n"


def test_missing_pydoc_data_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydoc_data.topics", None)  # makes the import fail
    with pytest.raises(ScratchLLMError, match="no pydoc_data module.*--input"):
        default_corpus()
