"""Scoring an instruction-following model: response loss on the references, then its own answers.

Two views of the same records:

* **response loss** — teacher-forced cross-entropy of the reference *outputs* (prompt tokens
  masked, :func:`scratchllm.evaluate.lm.response_loss`), and its exp, the response perplexity:
  how surprised the model is by the answer we wanted;
* **its answers** — greedy generation after each prompt (stopping at ``<|endoftext|>``), compared
  with the reference by exact match and ROUGE-L (:func:`scratchllm.evaluate.metrics.text_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from scratchllm.data.instruction import PromptTemplate, encode_instructions
from scratchllm.evaluate.lm import response_loss
from scratchllm.evaluate.metrics import text_metrics


def evaluate_instructions(
    model: Any,
    tokenizer: Any,
    records: Sequence[dict[str, str]],
    template: PromptTemplate,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    encoded: Sequence[Any] | None = None,
    progress: Callable[[str], Callable[[Any], Any] | None] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """``response_loss``, ``perplexity``, ``exact_match``, ``rouge_l`` and ``n`` over ``records``,
    plus the generated responses (one per record, in order).

    ``encoded`` passes records already encoded with the template (as fine-tuning has them);
    otherwise they are encoded here with the model's context length. A record whose prompt alone
    fills the context has no response token to score: it is left out of the loss (``dropped``)
    but still answered. ``progress(desc)`` may return a wrapper for the batch loops (a bar).
    """
    from scratchllm.generate.engine import generate_responses

    bar = progress or (lambda desc: None)
    metrics: dict[str, Any] = {}
    if encoded is None:
        encoded, stats = encode_instructions(
            records, tokenizer, template, max_length=model.config.context_length
        )
        metrics.update(truncated=stats.truncated, dropped=stats.dropped)
    if encoded:
        loss = response_loss(
            model, encoded, pad_id=tokenizer.eot_id, batch_size=batch_size, progress=bar("loss")
        )
        metrics.update(response_loss=loss, perplexity=math.exp(min(loss, 50.0)))
    # template markers as ids, the records' text as text: exactly how training encoded them
    prompts = [template.parts(r["instruction"], r["input"]) for r in records]
    replies = generate_responses(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=bar("generate"),
    )
    metrics.update(text_metrics(replies, [r["output"] for r in records]))
    return metrics, replies
