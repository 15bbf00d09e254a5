"""A static key/value cache for fast autoregressive generation.

Generating token t+1 needs the keys and values of tokens 0..t in every layer. Without a cache the
model recomputes all of them at every step (quadratic work); with one, each step computes q/k/v for
the **one new token** only, appends its k/v and attends over everything stored.

This cache is **preallocated once** (``[n_layer, B, n_kv_head, max_len, head_dim]`` for keys and
the same for values) and written in place at the current position: no ``torch.cat`` per step, no
reallocation, no memory growth. ``length`` is the number of positions filled so far; all rows of
the batch share it. Batches of prompts of different lengths are **left-padded** so they end at the
same position; ``mask`` remembers which cached positions are padding so attention can skip them.

With grouped-query attention (``n_kv_head < n_head``) the cache holds only the shared key/value
heads, which is exactly why GQA makes long-context inference cheaper.

The encoder-decoder uses the same class twice per decoding batch: one cache that grows by a token
per step for the decoder's self-attention, and one filled once (:meth:`KVCache.of_fixed`) with the
cross-attention keys/values of the encoder's output, which never change while the target is
written. Beam search keeps, drops and duplicates hypotheses between steps: :meth:`KVCache.reorder`
moves the cached rows along with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from scratchllm.errors import ScratchLLMError


class KVCache:
    """Preallocated keys/values for every layer of one generation batch."""

    def __init__(
        self,
        n_layer: int,
        batch: int,
        max_len: int,
        n_kv_head: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (n_layer, batch, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.batch, self.max_len = batch, max_len
        #: number of positions written so far (the position of the next token).
        self.length = 0
        #: ``[B, max_len]`` bool, True for real tokens — only allocated once padding is seen.
        self.mask: Tensor | None = None

    # --- what the model calls ------------------------------------------------------------------
    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new ``k``/``v`` (``[B, n_kv_head, T, head_dim]``) of ``layer`` at positions
        ``length .. length+T-1`` and return views of all keys/values so far (``S = length + T``).

        ``length`` itself only moves in :meth:`advance`, after every layer has written.
        """
        start, end = self.length, self.length + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def check_room(self, n_new: int) -> None:
        if self.length + n_new > self.max_len:
            raise ScratchLLMError(
                f"KV cache is full: {self.length} + {n_new} tokens exceed its {self.max_len} positions; "
                "crop the sequence or make a larger cache"
            )

    def set_padding(self, attention_mask: Tensor, n_new: int) -> None:
        """Record which of the ``n_new`` positions about to be written are real (1) or padding (0).

        ``attention_mask`` is ``[B, n_new]`` (just the new tokens) or ``[B, length + n_new]``
        (the whole history too, the Hugging Face convention).
        """
        if self.mask is None:
            self.mask = torch.ones(self.batch, self.max_len, dtype=torch.bool, device=self.k.device)
        end = self.length + n_new
        if attention_mask.shape[1] == n_new:
            start = self.length
        elif attention_mask.shape[1] == end:
            start = 0
        else:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[1]} positions; expected {n_new} (new tokens) "
                f"or {end} (cached + new)"
            )
        self.mask[:, start:end] = attention_mask.to(dtype=torch.bool, device=self.mask.device)

    def key_padding(self, n_new: int) -> Tensor | None:
        """``[B, length + n_new]`` real-token mask over all keys, or None if nothing is padded."""
        return None if self.mask is None else self.mask[:, : self.length + n_new]

    def advance(self, n: int) -> None:
        """Move the write position after a forward pass has written ``n`` tokens in every layer."""
        self.length += n

    # --- what a generator calls ----------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything (the buffers are reused, not freed)."""
        self.length = 0
        self.mask = None

    def crop(self, length: int) -> None:
        """Keep only the first ``length`` positions (e.g. to roll back rejected tokens)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of length {self.length} to {length}")
        self.length = length
        if self.mask is not None:  # positions written from now on are real unless told otherwise
            self.mask[:, length:] = True

    # --- beam search and encoder-decoders -----------------------------------------------------
    def reorder(self, rows: Tensor | Sequence[int]) -> None:
        """Row ``i`` becomes a copy of old row ``rows[i]``, for every layer (and the padding mask).

        Beam search calls this after each step with the beam each surviving hypothesis came from:
        rows may repeat (a beam split in two) or vanish (a beam dropped), so the batch may grow or
        shrink. The written positions and ``length`` stay as they are.
        """
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.k.device)
        self.k = self.k.index_select(1, rows)
        self.v = self.v.index_select(1, rows)
        if self.mask is not None:
            self.mask = self.mask.index_select(0, rows)
        self.batch = int(rows.numel())

    @classmethod
    def of_fixed(cls, keys: Sequence[Tensor], values: Sequence[Tensor]) -> KVCache:
        """A cache already holding keys/values that will not grow: one ``[B, n_kv_head, S, head_dim]``
        pair per layer (an encoder-decoder's cross-attention over the encoder's output, computed
        once per source). Read it with :meth:`layer_kv`; it is full (``length == max_len == S``)."""
        if not keys or len(keys) != len(values):
            raise ValueError("of_fixed needs one key and one value tensor per layer")
        B, n_kv_head, S, head_dim = keys[0].shape
        cache = cls(len(keys), B, S, n_kv_head, head_dim, dtype=keys[0].dtype, device=keys[0].device)
        for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
            cache.k[layer] = k
            cache.v[layer] = v
        cache.advance(S)
        return cache

    def layer_kv(self, layer: int) -> tuple[Tensor, Tensor]:
        """The keys and values of ``layer`` written so far, ``[B, n_kv_head, length, head_dim]``
        each (views: reading them writes nothing)."""
        return self.k[layer, :, :, : self.length], self.v[layer, :, :, : self.length]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
