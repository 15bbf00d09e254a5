"""Batch sources: everything the training loop draws batches from, in one module.

The loop asks a task for a :class:`BatchSource` — an endless, *resumable* stream of batches — and
saves its ``state_dict()`` in every checkpoint, so ``--resume`` continues with exactly the batches
an uninterrupted run would have seen. Each source's whole position is a few integers:

* :class:`RandomWindowSampler` (pretraining) — windows at random offsets of a long token array,
  as nanoGPT does; batch ``k`` is drawn from a generator seeded with ``(seed, k)``, so the state is
  one counter. :class:`LMBatches` turns its ``(x, y)`` into the ``{"input_ids", "targets"}`` dict
  the loop passes to a task. ``y`` is ``x`` shifted one token right: position ``t`` predicts ``t+1``.
* :class:`SequentialWindowSampler` (evaluation) — fixed, evenly spaced windows, so two
  checkpoints are scored on exactly the same tokens.
* :class:`EpochBatches` (fine-tuning) — shuffled epochs over a list of examples, as the book's
  ``DataLoader(shuffle=True, drop_last=True)``; the state is (epoch, offset).
* :class:`SeededBatches` (BERT, seq2seq) — batch ``n`` is made from a generator seeded by
  ``(seed, rank, n)``; the state is ``n``.

Under DDP every rank reads different data: the random windows of one draw are shared out (rank
``r`` takes slice ``r*B:(r+1)*B``), an epoch's order is strided, seeded batches include the rank.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from scratchllm.errors import ScratchLLMError

if TYPE_CHECKING:  # pragma: no cover
    import torch


@runtime_checkable
class BatchSource(Protocol):
    """What a task's ``train_batches`` returns (see :mod:`scratchllm.tasks`).

    ``load_state_dict(state, strict=True)`` restores a saved position. ``strict`` refuses a state
    saved for different data or settings (another seed, batch size, data size...); with
    ``strict=False`` only the position is restored — the loop uses that for a deliberate change of
    the number of processes, where exactness is given up anyway.
    """

    def next_batch(self) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], *, strict: bool = True) -> None: ...


# ----------------------------------------------------------------------------- shared helpers


def check_window(n: int, context_length: int, name: str) -> None:
    """The samplers' one clear error when ``n`` tokens cannot fill a window of ``context_length + 1``."""
    if n < context_length + 1:
        raise ScratchLLMError(
            f"{name} has {n} tokens but one training window needs context_length + 1 = "
            f"{context_length + 1}; use a smaller context_length or more text"
        )


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ScratchLLMError(f"{key} must be a positive integer, got {value!r}")


def _check_rank(rank: int, world_size: int) -> None:
    _check_positive(world_size=world_size)
    if not 0 <= rank < world_size:
        raise ScratchLLMError(f"rank must be in [0, world_size={world_size}), got {rank}")


class _WindowBatcher:
    """Common part of both samplers: cut windows out of ``tokens`` and move them to a device."""

    def __init__(
        self, tokens: Any, batch_size: int, context_length: int, device: Any, pin_memory: bool | None
    ):
        _check_positive(batch_size=batch_size, context_length=context_length)
        self.tokens = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
        if self.tokens.ndim != 1:
            raise ScratchLLMError(f"tokens must be a 1-D array of ids, got shape {self.tokens.shape}")
        self.batch_size = int(batch_size)
        self.context_length = int(context_length)
        self.device = device
        self.pin_memory = pin_memory

    def _to_tensors(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        T = self.context_length
        # Contiguous slices: each window is one sequential read from the memory map.
        windows = np.stack([self.tokens[s : s + T + 1] for s in starts.tolist()])
        x = torch.from_numpy(windows[:, :-1].astype(np.int64))
        y = torch.from_numpy(windows[:, 1:].astype(np.int64))
        if self.device is None:
            return x, y
        device = torch.device(self.device)
        pin = self.pin_memory if self.pin_memory is not None else device.type == "cuda"
        if pin:
            # Page-locked host memory lets the copy run asynchronously while the GPU keeps working.
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)


# ----------------------------------------------------------------------------- training: random windows


class RandomWindowSampler(_WindowBatcher):
    """Endless random ``(x, y)`` batches of shape ``[batch_size, context_length]`` (int64).

    Args:
        tokens: 1-D array of token ids (typically ``load_shards(d).train``).
        seed: the data seed; with ``rank``/``world_size`` it fixes every batch.
        rank, world_size: DDP position; each rank reads its own ``batch_size`` windows of a draw
            of ``world_size * batch_size`` windows.
        device: where batches go (None: CPU tensors). pin_memory: use page-locked memory and a
            non-blocking copy (default: when ``device`` is CUDA).
        name: how errors refer to ``tokens`` (e.g. ``"train.bin"``).
    """

    STATE_KIND = "random_windows"

    def __init__(
        self,
        tokens: Any,
        batch_size: int,
        context_length: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        device: Any = None,
        pin_memory: bool | None = None,
        name: str = "the token array",
    ) -> None:
        super().__init__(tokens, batch_size, context_length, device, pin_memory)
        _check_rank(rank, world_size)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ScratchLLMError(f"seed must be a non-negative integer, got {seed!r}")
        check_window(len(self.tokens), self.context_length, name)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.step = 0  # number of batches drawn so far: the sampler's whole position

    def window_starts(self, step: int) -> np.ndarray:
        """Start offsets of this rank's windows in batch number ``step`` (a pure function)."""
        n_starts = len(self.tokens) - self.context_length  # a window needs T + 1 tokens
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, n_starts, size=self.world_size * self.batch_size)
        return starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``(x, y)``; ``y[:, t] == x[:, t + 1]`` for every ``t`` but the last."""
        starts = self.window_starts(self.step)
        self.step += 1
        return self._to_tensors(starts)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position; the same for every rank."""
        return {
            "kind": self.STATE_KIND,
            "step": self.step,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "context_length": self.context_length,
            "world_size": self.world_size,
            "num_tokens": len(self.tokens),
        }

    def load_state_dict(self, state: dict[str, Any], *, strict: bool = True) -> None:
        """Continue where ``state`` left off.

        With ``strict`` (the default) the settings that decide which windows are drawn must match
        the saved ones, since otherwise resuming would silently read different data; pass
        ``strict=False`` to restore only the position (e.g. after a deliberate world-size change).
        """
        if not isinstance(state, dict) or state.get("kind") != self.STATE_KIND:
            raise ScratchLLMError(f"not a random-window sampler state: {state!r:.200}")
        if strict:
            for key, value in self.state_dict().items():
                if key != "step" and state.get(key) != value:
                    raise ScratchLLMError(
                        f"cannot resume the data sampler exactly: {key} was {state.get(key)!r} when saved "
                        f"and is {value!r} now; use the same setting (or the same data) to resume"
                    )
        step = state.get("step")
        if not isinstance(step, int) or step < 0:
            raise ScratchLLMError(f"sampler state has an invalid step {step!r}")
        self.step = step


# ----------------------------------------------------------------------------- evaluation: fixed windows


class SequentialWindowSampler(_WindowBatcher):
    """Deterministic ``(x, y)`` batches over evenly spaced windows, for evaluation.

    Windows start at ``0, stride, 2*stride, ...`` (``stride`` defaults to ``context_length``:
    non-overlapping windows, so each token is predicted at most once). With DDP, rank ``r`` takes
    windows ``r, r + world_size, ...``. ``drop_last`` drops a final batch smaller than
    ``batch_size``. Iterating gives the same batches every time; ``batches(max_batches)`` stops
    early (an evaluator's ``eval_steps``).
    """

    def __init__(
        self,
        tokens: Any,
        batch_size: int,
        context_length: int,
        *,
        stride: int | None = None,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        device: Any = None,
        pin_memory: bool | None = None,
        name: str = "the token array",
    ) -> None:
        super().__init__(tokens, batch_size, context_length, device, pin_memory)
        _check_rank(rank, world_size)
        self.stride = self.context_length if stride is None else stride
        _check_positive(stride=self.stride)
        n = len(self.tokens)
        check_window(n, self.context_length, name)
        self.starts = np.arange(0, n - self.context_length, self.stride, dtype=np.int64)[rank::world_size]
        self.drop_last = drop_last
        if len(self) == 0:
            raise ScratchLLMError(
                f"{name} holds only {len(self.starts)} windows of {self.context_length + 1} tokens for this "
                f"rank, fewer than batch_size {self.batch_size}; use a smaller batch or drop_last=False"
            )

    @property
    def num_windows(self) -> int:
        return len(self.starts)

    def _num_batches(self, n_windows: int) -> int:
        full, rest = divmod(n_windows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        return self._num_batches(len(self.starts))

    def batches(
        self, max_batches: int | None = None, *, max_windows: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches in order; ``max_windows`` keeps only the first windows (a number that, unlike
        ``max_batches``, means the same tokens whatever the batch size)."""
        starts = self.starts if max_windows is None else self.starts[:max_windows]
        count = self._num_batches(len(starts))
        if max_batches is not None:
            count = min(count, max_batches)
        for b in range(count):
            yield self._to_tensors(starts[b * self.batch_size : (b + 1) * self.batch_size])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()


# ----------------------------------------------------------------------------- language modelling


class LMBatches:
    """Adapts a :class:`RandomWindowSampler` to the ``BatchSource`` protocol:
    ``{"input_ids": x, "targets": y}`` with ``y`` the window shifted by one token."""

    def __init__(self, sampler: RandomWindowSampler) -> None:
        self.sampler = sampler

    def next_batch(self) -> dict[str, torch.Tensor]:
        x, y = self.sampler.next_batch()
        return {"input_ids": x, "targets": y}

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any], *, strict: bool = True) -> None:
        self.sampler.load_state_dict(state, strict=strict)


# ----------------------------------------------------------------------------- seeded batches


class SeededBatches:
    """A resumable ``BatchSource``: batch ``n`` is ``make(random.Random(f(seed, rank, n)))``."""

    def __init__(self, make: Callable[[random.Random], dict], *, seed: int, rank: int = 0) -> None:
        self.make, self.seed, self.rank, self.n = make, seed, rank, 0

    def next_batch(self) -> dict[str, torch.Tensor]:
        rng = random.Random(f"{self.seed}/{self.rank}/{self.n}")
        self.n += 1
        return self.make(rng)

    def state_dict(self) -> dict[str, Any]:
        return {"batches_drawn": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any], *, strict: bool = True) -> None:
        if strict and state.get("seed", self.seed) != self.seed:
            raise ScratchLLMError(
                f"cannot resume: the run drew its batches with seed {state['seed']}, this one with "
                f"{self.seed}; use the same --seed"
            )
        self.n = int(state["batches_drawn"])


# ----------------------------------------------------------------------------- epochs over examples


class EpochBatches:
    """Shuffled mini-batches of ``items``, epoch after epoch, collated by ``collate``.

    With several processes (DDP) every rank takes its own stride of each epoch's order. The last
    incomplete batch of an epoch is dropped (as the book's ``drop_last=True``), unless the dataset
    is smaller than one batch.
    """

    def __init__(
        self,
        items: Sequence[Any],
        batch_size: int,
        collate: Callable[[list[Any]], dict[str, torch.Tensor]],
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(items) < world_size:
            raise ScratchLLMError(f"only {len(items)} training examples for {world_size} processes")
        self.items = items
        self.batch_size = batch_size
        self.collate = collate
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.pos = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[int]:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.items), generator=g).tolist()
        return order[self.rank :: self.world_size]

    @property
    def batches_per_epoch(self) -> int:
        return max(1, len(self._order) // self.batch_size)

    def next_batch(self) -> dict[str, torch.Tensor]:
        size = min(self.batch_size, len(self._order))
        if self.pos + size > len(self._order):
            self.epoch += 1
            self.pos = 0
            self._order = self._epoch_order(self.epoch)
        chosen = self._order[self.pos : self.pos + size]
        self.pos += size
        return self.collate([self.items[i] for i in chosen])

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "n_items": len(self.items)}

    def load_state_dict(self, state: dict[str, Any], *, strict: bool = True) -> None:
        if strict and state.get("n_items", len(self.items)) != len(self.items):
            raise ScratchLLMError(
                f"cannot resume: the run was trained on {state['n_items']} examples but the data now has "
                f"{len(self.items)}; pass the same data files and options as the original run"
            )
        self.epoch = int(state["epoch"])
        self.pos = int(state["pos"])
        self._order = self._epoch_order(self.epoch)


def fixed_batches(items: Sequence[Any], batch_size: int, max_batches: int | None = None) -> list[list[Any]]:
    """Consecutive batches in file order, for evaluation (``max_batches`` of them at most)."""
    out = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    return out[:max_batches] if max_batches else out


def steps_for_epochs(n_items: int, epochs: float, batch_size: int, grad_accum_steps: int = 1) -> int:
    """Optimizer steps that make ``epochs`` passes over ``n_items`` examples (at least 1)."""
    if not epochs > 0:  # also catches NaN
        raise ScratchLLMError(f"--epochs must be > 0 (got {epochs}); e.g. --epochs 0.5 for half a pass")
    per_epoch = max(1, n_items // batch_size) / grad_accum_steps
    return max(1, round(per_epoch * epochs))
