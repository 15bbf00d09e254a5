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
**Per-row mode** (``per_row=True``, for continuous batching — ``scratchllm serve``): every row is
a *slot* holding one sequence, and the rows fill independently. ``lengths[b]`` is row ``b``'s own
write position, so a request can join a running batch (its prompt prefilled into a free row while
the others wait) and leave it (its row reset and reused) at any step; nothing is padded. A forward
pass works on a contiguous range of rows through :meth:`rows`, a view that shares the buffers (no
copy): one decoding step feeds one token to every row of ``rows(0, n)``, a prefill feeds a whole
prompt chunk to ``rows(b, b + 1)``. Each new token sits at its row's position ``lengths[b] + t``
and sees exactly its row's keys ``0 .. lengths[b] + t`` (the model builds that mask), so a row's
result does not depend on which other rows share the batch. Rows that are in the range but should
not move (a free slot, a prompt half-prefilled) are left out of ``advancing``: their write lands
just past their valid keys, where the next real write overwrites it. ``advancing`` may also count
tokens per row: prompts of different lengths prefilled together, right-padded to one width, each
advance by their own length (the padding's keys land past it, like an idle row's).
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
        *,
        per_row: bool = False,
    ) -> None:
        shape = (n_layer, batch, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.batch, self.max_len = batch, max_len
        #: number of positions written so far (the position of the next token).
        self.length = 0
        #: ``[B, max_len]`` bool, True for real tokens — only allocated once padding is seen.
        self.mask: Tensor | None = None
        #: per-row mode: ``[B]`` positions written in each row (None: the rows share ``length``).
        self.lengths: Tensor | None = torch.zeros(batch, dtype=torch.long, device=device) if per_row else None
        #: per-row mode: ``[B]`` bool, the rows the next forward pass advances (None: all), or
        #: ``[B]`` integers, how many of the new tokens each row keeps (right-padded prompts).
        self.advancing: Tensor | None = None
        #: per-row mode: how many key positions the current forward pass sees, max(lengths) + T.
        self.span = 0
        self._write_pos: Tensor | None = None  # per-row mode: [B, T] positions of the new tokens

    @property
    def per_row(self) -> bool:
        """True when every row keeps its own length (continuous batching)."""
        return self.lengths is not None

    # --- what the model calls ------------------------------------------------------------------
    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new ``k``/``v`` (``[B, n_kv_head, T, head_dim]``) of ``layer`` at positions
        ``length .. length+T-1`` and return views of all keys/values so far (``S = length + T``).

        ``length`` itself only moves in :meth:`advance`, after every layer has written.
        In per-row mode row ``b`` writes at ``lengths[b] ..`` instead (:meth:`row_positions` must
        have been called for this forward) and the views cover ``max(lengths) + T`` positions.
        """
        if self.lengths is not None:
            pos = self._write_pos  # [B, T]
            rows = torch.arange(self.batch, device=pos.device)[:, None]
            # [B, Hkv, T, D] -> [B, T, Hkv, D]: the layout of the indexed slots k[layer][rows, :, pos]
            self.k[layer][rows, :, pos] = k.transpose(1, 2)
            self.v[layer][rows, :, pos] = v.transpose(1, 2)
            return self.k[layer, :, :, : self.span], self.v[layer, :, :, : self.span]
        # narrow() + copy_() is the same write as k[layer, :, :, start:end] = k in half the
        # dispatch time (this runs twice per layer per decoded token).
        start, n = self.length, k.shape[2]
        keys, values = self.k[layer], self.v[layer]
        keys.narrow(2, start, n).copy_(k)
        values.narrow(2, start, n).copy_(v)
        return keys.narrow(2, 0, start + n), values.narrow(2, 0, start + n)

    def check_room(self, n_new: int) -> None:
        if self.lengths is not None:
            longest = int(self.lengths.max()) if self.batch else 0
            if longest + n_new > self.max_len:
                raise ScratchLLMError(
                    f"KV cache row is full: {longest} + {n_new} tokens exceed its {self.max_len} positions; "
                    "finish that sequence or make a larger cache"
                )
            return
        if self.length + n_new > self.max_len:
            raise ScratchLLMError(
                f"KV cache is full: {self.length} + {n_new} tokens exceed its {self.max_len} positions; "
                "crop the sequence or make a larger cache"
            )

    def row_positions(self, n_new: int) -> Tensor:
        """Per-row mode: the ``[B, n_new]`` positions of the tokens about to be written.

        Row ``b``'s new tokens sit at ``lengths[b], lengths[b] + 1, ...``; called by the model once
        per forward pass (it also fixes how many keys the layers see: ``max(lengths) + n_new``).
        """
        if self.lengths is None:
            raise ValueError("row_positions is for per-row caches (make_kv_cache(..., per_row=True))")
        self.check_room(n_new)
        pos = self.lengths[:, None] + torch.arange(n_new, device=self.lengths.device)
        self._write_pos = pos
        self.span = (int(self.lengths.max()) if self.batch else 0) + n_new
        return pos

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
        """Move the write position after a forward pass has written ``n`` tokens in every layer
        (per-row mode: of the ``advancing`` rows only)."""
        if self.lengths is not None:
            if self.advancing is None:
                self.lengths += n
            elif self.advancing.dtype == torch.bool:
                self.lengths += n * self.advancing.to(self.lengths.dtype)
            else:
                self.lengths += self.advancing.to(self.lengths.dtype).clamp(0, n)
            return
        self.length += n

    # --- what a generator calls ----------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything (the buffers are reused, not freed)."""
        self.length = 0
        self.mask = None
        if self.lengths is not None:
            self.lengths.zero_()

    # --- per-row mode: slots that sequences join and leave ---------------------------------------
    def rows(self, start: int, end: int, advancing: Tensor | None = None) -> KVCache:
        """A view of rows ``start .. end - 1`` sharing this cache's buffers and lengths (no copy).

        A forward pass through the view writes into this cache; ``advancing`` (``[end - start]``
        bool) names the rows whose length moves afterwards (None: all of them), or (integers) how
        many tokens each row advances by.
        """
        if self.lengths is None:
            raise ValueError("rows() is for per-row caches (make_kv_cache(..., per_row=True))")
        if not 0 <= start < end <= self.batch:
            raise ValueError(f"rows {start}..{end - 1} are outside this cache's {self.batch} rows")
        view = KVCache.__new__(KVCache)
        view.k, view.v = self.k[:, start:end], self.v[:, start:end]
        view.batch, view.max_len, view.length, view.mask = end - start, self.max_len, 0, None
        view.lengths = self.lengths[start:end]  # a view: advancing it advances this cache
        view.advancing = advancing
        view.span, view._write_pos = 0, None
        return view

    def reset_row(self, row: int) -> None:
        """Per-row mode: empty one row (a finished sequence's slot) for the next sequence."""
        if self.lengths is None:
            raise ValueError("reset_row is for per-row caches")
        self.lengths[row] = 0

    def copy_row(self, src: int, dst: int) -> None:
        """Per-row mode: make row ``dst`` a copy of row ``src`` (e.g. n samples of one prompt share
        its prefill: compute it once, copy it to the other rows)."""
        if self.lengths is None:
            raise ValueError("copy_row is for per-row caches")
        n = int(self.lengths[src])
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n

    def crop(self, length: int) -> None:
        """Keep only the first ``length`` positions (e.g. to roll back rejected tokens)."""
        if self.lengths is not None:
            raise ValueError("crop is for shared-length caches; a per-row cache resets rows (reset_row)")
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
