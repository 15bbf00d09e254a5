"""Measuring a language model: loss and perplexity (of a whole text, or of responses only), speed, memory.

**Loss and perplexity.** The validation loss is the mean cross-entropy of next-token predictions
on text the model never trained on. Perplexity is ``exp(loss)``: the number of tokens the model
is, on average, "as unsure as a uniform choice among". A model that knows nothing about a
65-character vocabulary scores ``exp(ln 65) = 65``; tinyshakespeare char models reach about 4-5.
Losses are only comparable between models that share a tokenizer (a BPE token carries more text
than a character, so its loss is naturally higher).

The windows are fixed (:class:`~scratchllm.data.batches.SequentialWindowSampler`), so two
checkpoints evaluated with the same settings are measured on exactly the same tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from scratchllm.data.instruction import EncodedInstruction


def memory_stats(device: Any = "cpu") -> dict[str, float]:
    """Peak memory so far: resident set size of the process, and CUDA allocations when on a GPU."""
    from scratchllm.device import peak_rss_mb

    out = {"peak_rss_mb": peak_rss_mb()}
    if str(device).startswith("cuda"):
        import torch

        out["cuda_max_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def evaluate_lm(
    model: torch.nn.Module,
    tokens: Any,
    *,
    context_length: int,
    batch_size: int,
    max_batches: int | None = None,
    max_windows: int | None = None,
    device: Any = "cpu",
    name: str = "the validation tokens",
    progress: Callable[[Any], Any] | None = None,
) -> dict[str, float]:
    """Mean next-token loss of ``model`` over fixed windows of ``tokens`` (a 1-D id array).

    Returns ``val_loss``, ``perplexity``, ``tokens_per_s`` (forward-pass throughput), ``tokens``
    (how many predictions were scored), ``windows``, ``batches`` and peak memory (``peak_rss_mb``,
    plus ``cuda_max_memory_mb`` on a GPU). The model is put in eval mode for the measurement and
    restored to its previous mode afterwards.

    What is scored is the first ``max_windows`` non-overlapping windows (None: all of them), the
    last batch being smaller when they do not fill it: the batch size changes only the speed,
    never the score. ``max_batches`` caps the work in batches instead (the training loop's
    ``eval_steps``); that number of windows does depend on the batch size.
    """
    import torch

    from scratchllm.data.batches import SequentialWindowSampler
    from scratchllm.model.gpt import lm_loss

    sampler = SequentialWindowSampler(
        tokens, batch_size, context_length, device=device, drop_last=False, name=name
    )
    was_training = model.training
    model.eval()
    total, count, windows, batches = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            # Sum on the device; one sync at the end instead of one per batch.
            acc = torch.zeros((), dtype=torch.float64, device=device)
            stream = sampler.batches(max_batches, max_windows=max_windows)
            for x, y in progress(stream) if progress else stream:
                logits = model(x)
                acc += lm_loss(logits.float(), y).double() * y.numel()
                count += y.numel()
                windows += len(y)
                batches += 1
            total = float(acc.item())
    finally:
        model.train(was_training)
    seconds = max(time.perf_counter() - t0, 1e-9)
    loss = total / max(count, 1)
    return {
        "val_loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "tokens_per_s": count / seconds,
        "tokens": count,
        "windows": windows,
        "batches": batches,
        **memory_stats(device),
    }


@torch.no_grad()
def response_loss(
    model: Any,
    examples: Sequence[EncodedInstruction],
    *,
    pad_id: int,
    batch_size: int = 8,
    max_batches: int | None = None,
    progress: Callable[[Any], Any] | None = None,
) -> float:
    """Mean cross-entropy per *response* token (prompts masked) — exp of it is the perplexity."""
    import torch.nn.functional as F

    from scratchllm.data.batches import fixed_batches
    from scratchllm.data.instruction import collate_instruction
    from scratchllm.device import model_device

    was_training = model.training
    model.eval()
    device = model_device(model)
    total, count = 0.0, 0
    batches = fixed_batches(examples, batch_size, max_batches)
    for chunk in progress(batches) if progress else batches:
        b = collate_instruction(chunk, pad_id, mask_prompt=True)
        logits = model(b["input_ids"].to(device)).float()
        targets = b["targets"].to(device)
        total += F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
        ).item()
        count += int((targets != -100).sum())
    model.train(was_training)
    return total / max(count, 1)


# ------------------------------------------------------------------------- log-likelihood of continuations


@dataclass(frozen=True)
class ContinuationScore:
    """How likely a language model finds ``continuation`` right after ``context``.

    ``logprob`` is ``sum_i log p(cont_i | context, cont_<i)`` in nats, over ``tokens`` tokens;
    ``greedy`` says whether greedy decoding would have produced exactly this continuation (every
    token was the arg-max); ``dropped`` counts context tokens cut from the left to fit the window,
    ``read`` the tokens the model read for it.
    """

    logprob: float
    tokens: int
    greedy: bool
    dropped: int = 0
    read: int = 0


@torch.no_grad()
def continuation_logprobs(
    model: Any,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 16,
    progress: Callable[[Any], Any] | None = None,
) -> list[ContinuationScore]:
    """Score ``(context_ids, continuation_ids)`` pairs with a next-token language model.

    This is the one primitive behind zero-/few-shot classification and multiple choice (and what
    lm-evaluation-harness calls ``loglikelihood``): run ``context + continuation`` through the
    model once and add up the log-probabilities it gave each continuation token at the position
    before it. A row longer than the context window keeps its *last* ``context_length + 1`` tokens
    (the continuation always survives; the start of the context goes). Rows are right-padded —
    harmless under causal attention, where no real position can see the padding after it — and the
    log-softmax is taken only at the continuation positions, so a large vocabulary costs little.
    """
    from scratchllm.data.batches import fixed_batches
    from scratchllm.device import model_device
    from scratchllm.errors import ScratchLLMError

    ctx = model.config.context_length
    rows: list[tuple[list[int], int, int]] = []  # (ids, continuation length, dropped)
    for n, (context, cont) in enumerate(requests, start=1):
        if not context or not cont:
            raise ScratchLLMError(f"request {n}: both the context and the continuation need a token")
        if len(cont) > ctx:
            raise ScratchLLMError(
                f"request {n}: the continuation has {len(cont)} tokens, more than the model's "
                f"context_length {ctx}"
            )
        ids = [*context, *cont]
        dropped = max(0, len(ids) - (ctx + 1))
        rows.append((ids[dropped:], len(cont), dropped))
    was_training = model.training
    model.eval()
    device = model_device(model)
    out: list[ContinuationScore] = []
    try:
        batches = fixed_batches(rows, batch_size)
        for chunk in progress(batches) if progress else batches:
            T = max(len(ids) for ids, _, _ in chunk) - 1
            x = torch.zeros((len(chunk), T), dtype=torch.long)
            r_idx, c_idx, targets = [], [], []
            for b, (ids, k, _) in enumerate(chunk):
                n = len(ids) - 1  # inputs ids[:-1]; position t predicts ids[t + 1]
                x[b, :n] = torch.tensor(ids[:-1], dtype=torch.long)
                r_idx += [b] * k
                c_idx += range(n - k, n)
                targets += ids[-k:]
            logits = model(x.to(device))
            picked = logits[torch.tensor(r_idx, device=device), torch.tensor(c_idx, device=device)]
            logp = picked.float().log_softmax(-1)
            tgt = torch.tensor(targets, device=device)
            token_lp = logp.gather(1, tgt[:, None])[:, 0].double().tolist()
            hits = (logp.argmax(-1) == tgt).tolist()
            pos = 0
            for ids, k, dropped in chunk:
                lp, greedy = sum(token_lp[pos : pos + k]), all(hits[pos : pos + k])
                out.append(ContinuationScore(lp, k, greedy, dropped, len(ids) - 1))
                pos += k
    finally:
        model.train(was_training)
    return out
