"""Text generation: turn next-token logits into tokens, one at a time, fast.

A language model only ever answers one question: "given these tokens, how likely is each possible
next token?" Generation asks it repeatedly, appending its choice each time. Two things decide the
result and the speed:

* **the sampler** — how a token is chosen from the logits: greedy (``temperature=0``: always the
  most likely), or sampling after dividing the logits by a *temperature* (< 1 sharper, > 1
  flatter), optionally restricted to the *top-k* most likely tokens and/or to the smallest set
  whose probability mass reaches *top-p* (nucleus sampling). The three compose, in that order.
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
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from scratchllm.errors import ScratchLLMError

if TYPE_CHECKING:
    from scratchllm.tokenizer.base import Tokenizer

#: ``stop(generated_ids_of_one_row) -> True`` to end that row (see :class:`StopStrings`).
StopFn = Callable[[list[int]], bool]


# ---------------------------------------------------------------------------------------------
# Arguments
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


# ---------------------------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------------------------
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
    logits = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
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


def settled(text: str) -> str:
    """``text`` without a trailing run of U+FFFD: bytes the next tokens may still complete.

    A byte-level tokenizer can end a decode in the middle of a multi-byte character, which decodes
    as the replacement character until its last byte arrives. While more tokens may come, only the
    text before such a run is certain; once generation has ended, the whole decode counts.
    """
    return text.rstrip("\ufffd")


def truncate_at_stop(text: str, strings: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the first occurrence of any stop string; say whether one was found."""
    cut = min((i for i in (text.find(s) for s in strings if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class StopStrings:
    """A ``stop`` callback that ends a row once its generated text contains one of ``strings``.

    It follows the same rule as :class:`TextStreamer`: the row's generated ids are decoded whole
    and the :func:`settled` text is searched. (Decoding only a tail of the ids would start in the
    middle of a character and see a U+FFFD that is not in the text.) A decode per step is cheap next
    to the forward pass that produced the token.
    """

    def __init__(self, tokenizer: Tokenizer, strings: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.strings = [s for s in strings if s]

    def __call__(self, generated: list[int]) -> bool:
        if not self.strings:
            return False
        return truncate_at_stop(settled(self.tokenizer.decode(generated)), self.strings)[1]


class TextStreamer:
    """Turn generated token ids into text pieces that are safe to print as they arrive.

    * A character may span several tokens (byte-level BPE splits UTF-8 bytes): text is released
      only once it decodes without a trailing replacement character.
    * Tokenizers may join tokens in context-dependent ways (a word tokenizer glues punctuation), so
      the whole generation is decoded together with the prompt each time and only the new suffix
      is released.
    * With stop strings, the last ``len(longest stop) - 1`` characters are held back until it is
      certain they do not begin a stop string; once one appears, the text before it is released and
      ``stopped`` becomes True.
    """

    def __init__(
        self, tokenizer: Tokenizer, prompt_ids: Sequence[int] = (), stop: Sequence[str] = ()
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt = list(prompt_ids)
        self.prefix = tokenizer.decode(self.prompt) if self.prompt else ""
        self.stop = [s for s in stop if s]
        self.holdback = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""  # everything generated so far (decoded), cut at a stop string
        self.shown = 0  # characters of `text` already released
        self.stopped = False

    def _decode(self) -> str:
        full = self.tokenizer.decode(self.prompt + self.ids)
        return full[len(self.prefix) :] if full.startswith(self.prefix) else self.tokenizer.decode(self.ids)

    def push(self, token: int) -> str:
        """Add one generated token; return the text that can be shown now (maybe empty)."""
        if self.stopped:
            return ""
        self.ids.append(int(token))
        # A character still being spelled out byte by byte is not shown, nor searched, yet.
        text, self.stopped = truncate_at_stop(settled(self._decode()), self.stop)
        self.text = text
        safe = len(text) if self.stopped else max(self.shown, len(text) - self.holdback)
        return self._release(safe)

    def finish(self) -> str:
        """The text still held back (call once generation has ended).

        Bytes that never completed a character now count as text (U+FFFD), so a stop string may be
        found only here: check ``stopped`` after calling it.
        """
        if not self.stopped and self.ids:
            self.text, self.stopped = truncate_at_stop(self._decode(), self.stop)
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        piece = self.text[self.shown : upto]
        self.shown = max(self.shown, upto)
        return piece


# ---------------------------------------------------------------------------------------------
# The engine
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
) -> Iterator[Tensor | int]:
    """Yield new tokens as they are generated.

    ``idx`` is one prompt (a list of ids or a 1-D tensor: the iterator then yields ``int``) or a
    ``[B, T]`` batch (yields ``[B]`` tensors; ``attention_mask`` marks left padding, see
    :func:`pad_left`). A row ends after it produced ``eos_id`` (one id or several) or when
    ``stop(row_generated_ids)`` returns True; finished rows then repeat their last token, and the
    iterator ends when every row has finished or after ``max_new_tokens`` steps.
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
                logits[:, -1], temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
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
        )
    )
    new = torch.stack(steps, dim=1) if steps else batch[:, :0]
    out = torch.cat([batch, new], dim=1)
    return out[0] if single else out
