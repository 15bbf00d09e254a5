"""What a loaded model computes, as plain JSON-able numbers: the data behind the playground.

Each function takes a model (and its tokenizer) and returns dicts and lists a web page or a
``--json`` printout can use directly. The playground's ``/scratchllm/...`` endpoints and the CLI's
``scratchllm inspect`` call these same functions, so a number on the page is a number the CLI
prints.

* :mod:`~scratchllm.inspect.model` — attention weights per layer and head, the logit lens, the
  sampling pipeline on the model's real next-token logits, the embedding map (PCA) and nearest
  neighbours;
* :mod:`~scratchllm.inspect.tokens` — a text split into tokens, and a replay of the BPE merges
  that build each word;
* :mod:`~scratchllm.inspect.training` — a run's metrics, its checkpoints, and the greedy
  continuation of one prompt at each checkpoint.

Every function caps its work (tokens, layers, checkpoints) and raises
:class:`~scratchllm.errors.ScratchLLMError` for input it cannot use, so a server can answer 400.
"""

from __future__ import annotations

from scratchllm.inspect.model import (
    attention,
    embedding_map,
    logit_lens,
    nearest_tokens,
    next_token_logits,
    sampling_pipeline,
)
from scratchllm.inspect.tokens import piece_label, tokenize
from scratchllm.inspect.training import checkpoint_continuations, training_summary

__all__ = [
    "attention",
    "checkpoint_continuations",
    "embedding_map",
    "logit_lens",
    "nearest_tokens",
    "next_token_logits",
    "piece_label",
    "sampling_pipeline",
    "tokenize",
    "training_summary",
]
