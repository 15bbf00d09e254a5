"""Generation: from a trained model's logits to text.

* :mod:`~scratchllm.generate.sampling` — the sampler (greedy, temperature, top-k, top-p);
* :mod:`~scratchllm.generate.engine` — the GPT's KV-cache engine: prefill + decode, batches of
  left-padded prompts (:func:`generate_many`: several prompts, several samples each), streaming,
  the sliding window;
* :mod:`~scratchllm.generate.streaming` — ids to text safely while it is being written (stop
  strings, half characters);
* :mod:`~scratchllm.generate.chat` — the interactive loop of ``scratchllm chat``;
* :mod:`~scratchllm.generate.seq2seq` — greedy and beam-search decoding of the encoder-decoder;
* :mod:`~scratchllm.generate.fill_mask` — what a BERT puts where ``[MASK]`` stands.
"""

from __future__ import annotations

from scratchllm.generate.engine import (
    Completion,
    generate,
    generate_many,
    generate_responses,
    pad_left,
    stream,
)
from scratchllm.generate.sampling import check_sampling_args, filter_logits, next_token_probs, sample_next
from scratchllm.generate.streaming import StopFn, StopStrings, TextStreamer, settled, truncate_at_stop

__all__ = [
    "Completion",
    "StopFn",
    "StopStrings",
    "TextStreamer",
    "check_sampling_args",
    "filter_logits",
    "generate",
    "generate_many",
    "generate_responses",
    "next_token_probs",
    "pad_left",
    "sample_next",
    "settled",
    "stream",
    "truncate_at_stop",
]
