"""The sampler: how one next token is chosen from a row of logits.

Greedy (``temperature=0``: always the most likely), or sampling after dividing the logits by a
*temperature* (< 1 sharper, > 1 flatter), optionally restricted to the *top-k* most likely tokens
and/or to the smallest set whose probability mass reaches *top-p* (nucleus sampling). The three
compose, in that order — the same pipeline the ``explain decoding`` topic and the playground show.

Before that pipeline, :func:`adjust_logits` applies the OpenAI API's adjustments (``logit_bias``,
presence and frequency penalties); :func:`token_logprobs` reports how likely the model found a
chosen token and its best alternatives (the API's ``logprobs``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from scratchllm.errors import ScratchLLMError


# ---------------------------------------------------------------------------------------------
def check_sampling_args(
    max_new_tokens: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> None:
    """Raise :class:`ScratchLLMError` for sampling settings that make no sense."""
    if max_new_tokens is not None and max_new_tokens <= 0:
        raise ScratchLLMError(f"max_new_tokens must be >= 1 (got {max_new_tokens})")
    if not temperature >= 0:  # also rejects NaN
        raise ScratchLLMError(f"temperature must be >= 0 (got {temperature}); use 0 for greedy decoding")
    if top_k is not None and top_k < 1:
        raise ScratchLLMError(f"top_k must be >= 1 (got {top_k})")
    if top_p is not None and not 0 < top_p <= 1:
        raise ScratchLLMError(f"top_p must be in (0, 1] (got {top_p})")


def filter_logits(logits: Tensor, *, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set the logits of tokens outside the top-k / the top-p nucleus to -inf (``[B, V]``)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach p: what remains is the
        # smallest set with mass >= p (the most likely token always survives).
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Choose one token per row from ``logits`` ``[B, V]`` -> ``[B]``.

    ``temperature == 0`` is greedy (argmax; top-k/top-p are irrelevant then). Otherwise:
    scale by 1/temperature, keep the top-k, keep the top-p nucleus, softmax, draw.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = next_token_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def adjust_logits(
    logits: Tensor,
    *,
    counts: Tensor | None = None,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    logit_bias: Tensor | None = None,
) -> Tensor:
    """The OpenAI API's logit adjustments, applied before temperature/top-k/top-p (``[B, V]``).

    * ``logit_bias`` (``[V]`` or ``[B, V]``) is added: +100 all but forces a token, -100 bans it;
    * ``counts`` (same shape) holds how often each token was generated so far: every token seen
      loses ``presence_penalty`` once and ``frequency_penalty`` per occurrence (positive values
      discourage repetition, negative ones encourage it).

    Returns a new tensor (the model's logits stay untouched for ``logprobs``).
    """
    out = logits.float()
    if logit_bias is not None:
        out = out + logit_bias
    if counts is not None and (presence_penalty or frequency_penalty):
        out = out - frequency_penalty * counts - presence_penalty * (counts > 0).to(out.dtype)
    return out


def token_logprobs(logits: Tensor, token: int, top: int = 0) -> tuple[float, list[tuple[int, float]]]:
    """Log-probability of ``token`` under one row of ``logits`` (``[V]``), and the ``top`` most
    likely tokens as ``(id, logprob)`` pairs, best first.

    These are the model's own probabilities (a log-softmax of the raw logits): what the model
    believes, before any bias, penalty, temperature or truncation changed how the token was drawn.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = float(logp[token])
    if top <= 0:
        return chosen, []
    values, ids = torch.topk(logp, min(top, logp.numel()))
    return chosen, list(zip(ids.tolist(), values.tolist()))
def next_token_probs(
    logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """The distribution :func:`sample_next` draws from (``[B, V]``, rows sum to 1): scale by
    1/temperature, keep the top-k, keep the top-p nucleus, softmax. ``temperature == 0`` (greedy)
    puts all the mass on the argmax."""
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.size(-1)).float()
    return torch.softmax(filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p), dim=-1)
