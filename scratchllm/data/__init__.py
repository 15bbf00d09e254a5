"""Data: the embedded corpus, token shards on disk, and the batches a model trains on.

* :func:`default_corpus` / :func:`default_corpus_documents` — text that needs no download.
* :func:`prepare` — tokenise text files into ``train.bin`` / ``val.bin`` / ``meta.json``.
* :func:`load_shards`, :class:`RandomWindowSampler`, :class:`SequentialWindowSampler` — read the
  shards back as memory maps and cut ``(x, y)`` batches out of them.
* :class:`SlidingWindowDataset`, :func:`create_dataloader` — the book's in-memory dataset.

Importing this package stays light (no numpy, no torch): the tokenizer commands use the default
corpus, and everything heavier is imported the first time it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from scratchllm.data.corpus import default_corpus, default_corpus_documents
from scratchllm.data.prepare import prepare  # light at import time; also shadows the submodule name

# name -> module that defines it, imported on first access (PEP 562).
_LAZY = {
    "token_dtype": "scratchllm.data.prepare",
    "Shards": "scratchllm.data.shards",
    "load_shards": "scratchllm.data.shards",
    "tokenizer_fingerprint": "scratchllm.data.shards",
    "RandomWindowSampler": "scratchllm.data.batches",
    "SequentialWindowSampler": "scratchllm.data.batches",
    "SlidingWindowDataset": "scratchllm.data.datasets",
    "create_dataloader": "scratchllm.data.datasets",
}

__all__ = ["default_corpus", "default_corpus_documents", "prepare", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'scratchllm.data' has no attribute {name!r}")
