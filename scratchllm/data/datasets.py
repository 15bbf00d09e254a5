"""The book's sliding-window dataset: the simplest way to feed text to a GPT.

Pretraining is next-token prediction. Slide a window of ``context_length`` token ids over the
text; the input is the window and the target is the same window shifted one token to the right::

    ids:     [40, 367, 2885, 1464, 1807, 3619, 402, 271, ...]
    input:   [40, 367, 2885, 1464]          (context_length = 4)
    target:      [367, 2885, 1464, 1807]    (what comes next, at every position)

``stride`` is how far the window moves between samples: ``stride == context_length`` gives
non-overlapping windows (every token is a target once), a smaller stride gives overlapping ones
(more samples, more risk of overfitting a small text).

This dataset keeps the whole text in memory and is meant for learning and for small texts. For a
corpus on disk use ``scratchllm prepare`` and :class:`scratchllm.data.shards.RandomWindowSampler`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from scratchllm.errors import ScratchLLMError


class SlidingWindowDataset(Dataset):
    """``(input_ids, target_ids)`` pairs of length ``context_length`` from one list of token ids.

    The book calls it ``GPTDatasetV1``. Windows are cut on the fly from a single tensor, so memory
    is one copy of the ids however small the stride.
    """

    def __init__(self, token_ids: Sequence[int] | torch.Tensor, context_length: int, stride: int) -> None:
        if context_length < 1 or stride < 1:
            raise ScratchLLMError(
                "context_length and stride must be positive, "
                f"got context_length={context_length}, stride={stride}"
            )
        self.ids = torch.as_tensor(token_ids, dtype=torch.long)
        self.context_length = context_length
        self.stride = stride
        n = len(self.ids)
        if n < context_length + 1:
            raise ScratchLLMError(
                f"the text has {n} tokens but one window needs context_length + 1 = {context_length + 1}; "
                "use a smaller context_length or a longer text"
            )
        # Window i starts at i * stride and needs context_length + 1 tokens (inputs + one more target).
        self.num_windows = (n - context_length - 1) // stride + 1

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.num_windows <= i < self.num_windows:
            raise IndexError(f"window {i} out of range for {self.num_windows} windows")
        start = (i % self.num_windows) * self.stride
        chunk = self.ids[start : start + self.context_length + 1]
        return chunk[:-1], chunk[1:]


def create_dataloader(
    text: str,
    tokenizer: Any,
    *,
    batch_size: int = 4,
    context_length: int = 256,
    stride: int = 128,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    seed: int | None = None,
) -> DataLoader:
    """Tokenise ``text`` and wrap a :class:`SlidingWindowDataset` in a ``DataLoader``.

    ``tokenizer`` is anything with ``encode(text) -> list[int]`` (a scratchllm tokenizer, or a
    ``tiktoken`` encoding). ``seed`` makes the shuffle order reproducible. ``drop_last`` drops a
    final, smaller batch (a very small last batch makes a noisy training step).
    """
    ids = tokenizer.encode(text)
    dataset = SlidingWindowDataset(ids, context_length, stride)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=generator,
    )
