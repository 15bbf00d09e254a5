"""The book's sliding-window dataset and create_dataloader."""

from __future__ import annotations

import pytest
import torch

from scratchllm.data import SlidingWindowDataset, create_dataloader
from scratchllm.errors import ScratchLLMError


def test_windows_shapes_shift_and_count():
    ids = list(range(100, 120))  # 20 tokens
    ds = SlidingWindowDataset(ids, context_length=4, stride=4)
    assert len(ds) == 4  # starts 0, 4, 8, 12 (a window needs 5 tokens; 16 + 5 > 20)
    x, y = ds[1]
    assert x.tolist() == [104, 105, 106, 107] and y.tolist() == [105, 106, 107, 108]
    assert x.dtype == torch.long
    overlapping = SlidingWindowDataset(ids, context_length=4, stride=1)
    assert len(overlapping) == 16 and overlapping[-1][1].tolist() == [116, 117, 118, 119]
    with pytest.raises(IndexError):
        ds[4]


def test_too_short_text_says_both_numbers():
    with pytest.raises(ScratchLLMError, match=r"has 4 tokens .* context_length \+ 1 = 5"):
        SlidingWindowDataset([1, 2, 3, 4], context_length=4, stride=1)
    with pytest.raises(ScratchLLMError, match="positive"):
        SlidingWindowDataset([1, 2, 3, 4], context_length=2, stride=0)


def test_dataloader_matches_the_book_on_the_verdict(gpt2_files, shared_data):
    gpt2 = pytest.importorskip("scratchllm.tokenizer.gpt2")
    tok = gpt2.load_gpt2_dir(gpt2_files)
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    loader = create_dataloader(text, tok, batch_size=1, context_length=4, stride=1, shuffle=False)
    x, y = next(iter(loader))
    # The book's chapter 2 prints exactly these first two batches.
    assert x.tolist() == [[40, 367, 2885, 1464]] and y.tolist() == [[367, 2885, 1464, 1807]]
    assert len(loader.dataset) == 5145 - 4


def test_dataloader_shuffle_is_seeded(char_tok, shared_data):
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    kw = {"batch_size": 8, "context_length": 16, "stride": 16, "shuffle": True, "seed": 123}
    a = [x for x, _ in create_dataloader(text, char_tok, **kw)]
    b = [x for x, _ in create_dataloader(text, char_tok, **kw)]
    c = [x for x, _ in create_dataloader(text, char_tok, **{**kw, "seed": 124})]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))
    assert all(x.shape == (8, 16) for x in a)  # drop_last: every batch is full
