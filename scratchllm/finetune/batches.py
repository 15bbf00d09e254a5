"""Epoch-based batching over a list of examples, resumable exactly (the loop's ``BatchSource``).

Pretraining samples random windows from a long token stream; fine-tuning datasets are a list
of separate examples, which the book iterates in shuffled epochs with ``drop_last=True``. This
class does the same, and its whole position is two integers — the epoch and the offset inside
it — because each epoch's order is a pure function of ``(seed, epoch)``. Saving those two in a
checkpoint is enough for ``--resume`` to continue with exactly the next batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from scratchllm.errors import ScratchLLMError


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
