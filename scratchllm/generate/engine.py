"""Text generation: turn next-token logits into tokens, one at a time, fast.

A language model only ever answers one question: "given these tokens, how likely is each possible
next token?" Generation asks it repeatedly, appending its choice each time. Two things decide the
result and the speed:

* **the sampler** — how a token is chosen from the logits (:mod:`scratchllm.generate.sampling`):
  greedy, temperature, top-k, top-p;
* **the engine** — a naive loop re-runs the whole sequence through the model for every new token.
  With a :class:`~scratchllm.model.kv_cache.KVCache` the prompt is processed once ("prefill") and
  each later step feeds only the newest token ("decode"), reusing the stored keys and values.

Batches of prompts of different lengths are **left-padded** (:func:`pad_left`) so they all end at
the same position and the next token of every row is appended in the same column.

When a sequence reaches the model's ``context_length`` the window **slides**: the cache is rebuilt
from the last ``context_length`` tokens, so every token is predicted from (at most)
``context_length`` tokens of context — the same result as cropping the input to the last
``context_length`` tokens at every step, as nanoGPT does. Pass ``on_full="stop"`` to stop instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from scratchllm.errors import ScratchLLMError
from scratchllm.generate.sampling import check_sampling_args, sample_next
from scratchllm.generate.streaming import StopFn, StopStrings, TextStreamer


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token lists to one ``[B, T]`` tensor; also return the ``[B, T]`` 0/1 attention mask.

    Left, not right: every prompt must *end* in the last column so the next token of every row
    goes into the same new column.
    """
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ScratchLLMError("every prompt must have at least one token")
    T = max(len(s) for s in sequences)
    idx = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), T), dtype=torch.long)
    for row, seq in enumerate(sequences):
        idx[row, T - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, T - len(seq) :] = 1
    return idx, mask


# ---------------------------------------------------------------------------------------------
def _as_batch(
    idx: Tensor | Sequence[int] | Sequence[Sequence[int]], device: torch.device
) -> tuple[Tensor, bool]:
    """Accept a ``[B, T]`` tensor, a 1-D tensor or a list of ids; say whether it was a single row."""
    if not isinstance(idx, Tensor):
        idx = torch.as_tensor(idx, dtype=torch.long)
    single = idx.dim() == 1
    if single:
        idx = idx[None]
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ScratchLLMError("the prompt must contain at least one token")
    return idx.to(device=device, dtype=torch.long), single


@torch.inference_mode()
def stream(
    model: torch.nn.Module,
    idx: Tensor | Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | Sequence[int] | None = None,
    stop: StopFn | None = None,
    generator: torch.Generator | None = None,
    attention_mask: Tensor | None = None,
    on_full: str = "slide",
    vocab_size: int | None = None,
) -> Iterator[Tensor | int]:
    """Yield new tokens as they are generated.

    ``idx`` is one prompt (a list of ids or a 1-D tensor: the iterator then yields ``int``) or a
    ``[B, T]`` batch (yields ``[B]`` tensors; ``attention_mask`` marks left padding, see
    :func:`pad_left`). A row ends after it produced ``eos_id`` (one id or several) or when
    ``stop(row_generated_ids)`` returns True; finished rows then repeat their last token, and the
    iterator ends when every row has finished or after ``max_new_tokens`` steps. ``vocab_size``
    limits the choice to ids the tokenizer can decode (a model's embedding table may be padded
    beyond its tokenizer, e.g. to a multiple of 64 for faster matmuls).
    """
    check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    if on_full not in ("slide", "stop"):
        raise ValueError(f"on_full must be 'slide' or 'stop', not {on_full!r}")
    device = next(model.parameters()).device
    idx, single = _as_batch(idx, device)
    B, T0 = idx.shape
    ctx = model.config.context_length
    eos = torch.as_tensor([eos_id] if isinstance(eos_id, int) else list(eos_id or []), device=device)

    # One buffer for the whole sequence (prompt + every new token): no torch.cat per step.
    seq = torch.empty(B, T0 + max_new_tokens, dtype=torch.long, device=device)
    seq[:, :T0] = idx
    mask = None
    if attention_mask is not None:
        if attention_mask.shape != idx.shape:
            raise ScratchLLMError(
                f"attention_mask shape {tuple(attention_mask.shape)} != prompt shape {tuple(idx.shape)}"
            )
        mask = torch.ones(B, T0 + max_new_tokens, dtype=torch.long, device=device)
        mask[:, :T0] = attention_mask.to(device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    generated: list[list[int]] = [[] for _ in range(B)] if stop is not None else []

    was_training = model.training
    model.eval()
    cache = model.make_kv_cache(B, min(ctx, T0 + max_new_tokens))  # never bigger than needed
    try:
        n = T0  # tokens in seq so far
        # Prefill: the (cropped) prompt in one forward pass.
        start = max(0, n - ctx)
        logits = model(
            seq[:, start:n],
            kv_cache=cache,
            attention_mask=None if mask is None else mask[:, start:n],
            only_last=True,
        )
        for _ in range(max_new_tokens):
            token = sample_next(
                logits[:, -1, :vocab_size],
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
            )
            if B > 1 or eos.numel():
                token = torch.where(done, seq[:, n - 1], token)  # finished rows stand still
            seq[:, n] = token
            n += 1
            yield int(token[0]) if single else token
            if eos.numel():
                done |= torch.isin(token, eos)
            if stop is not None:
                for row in range(B):
                    if not done[row]:
                        generated[row].append(int(token[row]))
                        if stop(generated[row]):
                            done[row] = True
            if bool(done.all()) or n == T0 + max_new_tokens:
                return
            if cache.length < cache.max_len:
                logits = model(seq[:, n - 1 : n], kv_cache=cache, only_last=True)
            elif on_full == "stop":
                return
            else:  # slide: re-prefill the last `ctx` tokens
                cache.reset()
                logits = model(
                    seq[:, n - ctx : n],
                    kv_cache=cache,
                    attention_mask=None if mask is None else mask[:, n - ctx : n],
                    only_last=True,
                )
    finally:
        model.train(was_training)


def generate(
    model: torch.nn.Module,
    idx: Tensor | Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | Sequence[int] | None = None,
    stop: StopFn | None = None,
    generator: torch.Generator | None = None,
    attention_mask: Tensor | None = None,
    on_full: str = "slide",
    vocab_size: int | None = None,
) -> Tensor:
    """Generate up to ``max_new_tokens`` tokens; return prompt + new tokens.

    ``[B, T0 + n]`` for a batch, 1-D for a single prompt (see :func:`stream` for the arguments).
    Greedy when ``temperature == 0``; pass a seeded ``torch.Generator`` for reproducible sampling.
    """
    device = next(model.parameters()).device
    batch, single = _as_batch(idx, device)
    steps = list(
        stream(
            model,
            batch,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_id=eos_id,
            stop=stop,
            generator=generator,
            attention_mask=attention_mask,
            on_full=on_full,
            vocab_size=vocab_size,
        )
    )
    new = torch.stack(steps, dim=1) if steps else batch[:, :0]
    out = torch.cat([batch, new], dim=1)
    return out[0] if single else out


@dataclass
class Completion:
    """One continuation made by :func:`generate_many`."""

    #: which prompt (0-based, in the order given) and which of its samples (0-based).
    prompt_index: int
    sample_index: int
    #: the new token ids: without the end-of-text token; through the token that completed a stop string.
    tokens: list[int]
    #: those tokens as text (decoded after the prompt, cut before a stop string).
    text: str
    #: why it ended: "eos", "stop" (a stop string), "max_new_tokens" or "context_length".
    stop_reason: str
    #: tokens the model produced for this row, the end-of-text token included.
    new_tokens: int


def _completion(
    tokenizer: Any,
    prompt: Sequence[int],
    new: Sequence[int],
    *,
    eos: set[int],
    stop: Sequence[str],
    max_new_tokens: int,
    index: tuple[int, int],
) -> Completion:
    """Read one generated row the way the streaming CLI reads tokens: until an end-of-text token
    or a stop string (a finished row repeats its last token after that), with the same text."""
    streamer = TextStreamer(tokenizer, prompt, stop)
    tokens: list[int] = []
    reason = None
    for token in new:
        if token in eos:
            reason = "eos"
            break
        tokens.append(token)
        streamer.push(token)
        if streamer.stopped:
            reason = "stop"
            break
    streamer.finish()
    if reason is None:
        if streamer.stopped:  # the stop string ended in bytes that only the final decode completed
            reason = "stop"
        else:
            reason = "max_new_tokens" if len(new) >= max_new_tokens else "context_length"
    used = len(tokens) + (reason == "eos")
    return Completion(index[0], index[1], tokens, streamer.text, reason, used)


@torch.no_grad()
def generate_many(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: Sequence[str] = (),
    eos_id: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    on_full: str = "slide",
    progress: Callable[[Any], Any] | None = None,
) -> list[Completion]:
    """``num_samples`` continuations of every prompt (token id lists), in batches.

    Every (prompt, sample) pair is one row; up to ``batch_size`` rows are left-padded
    (:func:`pad_left`) into one batch and decoded together by :func:`generate` — one forward pass
    per step for all of them, each row with its own random draws. Rows end at ``eos_id`` (default:
    the tokenizer's ``<|endoftext|>``, if any) or a ``stop`` string. Returns one
    :class:`Completion` per row, prompt by prompt, samples in order.
    """
    from scratchllm.data.batches import fixed_batches

    if num_samples < 1:
        raise ScratchLLMError(f"--num-samples must be >= 1 (got {num_samples})")
    if batch_size < 1:
        raise ScratchLLMError(f"--batch-size must be >= 1 (got {batch_size})")
    if eos_id is None:
        eos_id = tokenizer.special_tokens.get("<|endoftext|>")
    eos = set() if eos_id is None else {eos_id} if isinstance(eos_id, int) else set(eos_id)
    device = next(model.parameters()).device
    rows = [(p, k) for p in range(len(prompts)) for k in range(num_samples)]
    stop_fn = StopStrings(tokenizer, stop) if any(stop) else None
    out: list[Completion] = []
    batches = fixed_batches(rows, batch_size)
    for chunk in progress(batches) if progress else batches:
        ids = [list(prompts[p]) for p, _ in chunk]
        idx, mask = pad_left(ids, min(eos) if eos else 0)
        same_length = len({len(i) for i in ids}) == 1  # no padding: the mask-free fast path
        full = generate(
            model,
            idx.to(device),
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_id=sorted(eos),
            stop=stop_fn,
            generator=generator,
            attention_mask=None if same_length else mask.to(device),
            on_full=on_full,
            vocab_size=tokenizer.vocab_size,
        )
        for prompt, new, index in zip(ids, full[:, idx.shape[1] :].tolist(), chunk, strict=True):
            out.append(
                _completion(
                    tokenizer, prompt, new, eos=eos, stop=stop, max_new_tokens=max_new_tokens, index=index
                )
            )
    return out


@torch.no_grad()
def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[tuple[str, bool]]],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    temperature: float = 0.0,
    top_k: int | None = None,
    progress: Callable[[Any], Any] | None = None,
) -> list[str]:
    """Continue each prompt until ``<|endoftext|>`` (greedy by default); return only the new text.

    Prompts are batched with left padding (:func:`pad_left`); generation stops
    at the context length rather than sliding, so a response never loses sight of its prompt.
    A prompt is ordinary text, or ``(text, trusted)`` parts (``PromptTemplate.parts``: the
    template's special-token markers become ids, the record's text stays text).
    """
    from scratchllm.data.batches import fixed_batches
    from scratchllm.device import model_device

    ctx = model.config.context_length
    eot = tokenizer.eot_id
    out: list[str] = []
    device = model_device(model)
    batches = fixed_batches(list(prompts), batch_size)
    for chunk in progress(batches) if progress else batches:
        ids = [  # keep room for at least one token
            (tokenizer.encode(p) if isinstance(p, str) else tokenizer.encode_parts(p))[-(ctx - 1) :]
            for p in chunk
        ]
        idx, mask = pad_left(ids, eot)
        room = min(max_new_tokens, ctx - idx.shape[1])
        if room < 1:
            out.extend("" for _ in chunk)
            continue
        full = generate(
            model,
            idx.to(device),
            room,
            temperature=temperature,
            top_k=top_k,
            eos_id=eot,
            attention_mask=mask.to(device),
            on_full="stop",
            vocab_size=tokenizer.vocab_size,
        )
        for row in full[:, idx.shape[1] :].tolist():
            if eot in row:
                row = row[: row.index(eot)]
            out.append(tokenizer.decode(row).strip())
    return out
