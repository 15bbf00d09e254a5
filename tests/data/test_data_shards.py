"""load_shards, the tokenizer fingerprint, and the two window samplers (determinism, exact resume, DDP)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scratchllm.data import (
    RandomWindowSampler,
    SequentialWindowSampler,
    load_shards,
    prepare,
    tokenizer_fingerprint,
)
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import CharTokenizer, load_tokenizer

TOKENS = np.arange(1000, dtype=np.uint16)  # token i has id i: windows are easy to check


@pytest.fixture(scope="module")
def shards_dir(char_tok, shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "verdict"
    prepare(char_tok, [shared_data / "the-verdict.txt"], out, progress=False)
    return out


# ----------------------------------------------------------------------------- load_shards


def test_load_shards_memmaps_and_tokenizer(shards_dir, char_tok):
    shards = load_shards(shards_dir)
    assert isinstance(shards.train, np.memmap) and shards.train.dtype == np.uint16
    assert len(shards.train) == shards.meta["train_tokens"] and len(shards.val) == shards.meta["val_tokens"]
    assert shards.vocab_size == char_tok.vocab_size
    assert shards.tokenizer_path == shards_dir / "tokenizer.json"
    shards.check_tokenizer(char_tok)
    shards.check_tokenizer(shards.load_tokenizer())
    assert tokenizer_fingerprint(load_tokenizer(shards.tokenizer_path)) == tokenizer_fingerprint(char_tok)


def test_check_tokenizer_rejects_a_different_tokenizer(shards_dir):
    other = CharTokenizer.train("a different vocabulary")
    with pytest.raises(ScratchLLMError, match="prepared with a different tokenizer"):
        load_shards(shards_dir).check_tokenizer(other)


def test_load_shards_errors(shards_dir, tmp_path):
    with pytest.raises(ScratchLLMError, match="data directory not found"):
        load_shards(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScratchLLMError, match="not a prepared data directory"):
        load_shards(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("train.bin", "val.bin", "meta.json", "tokenizer.json"):
        (broken / name).write_bytes((shards_dir / name).read_bytes())
    with open(broken / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ScratchLLMError, match="truncated or was modified"):
        load_shards(broken)
    (broken / "meta.json").unlink()
    with pytest.raises(ScratchLLMError, match="interrupted"):
        load_shards(broken)


# ----------------------------------------------------------------------------- RandomWindowSampler


def test_random_batches_shape_dtype_and_shift():
    sampler = RandomWindowSampler(TOKENS, 4, 8, seed=0)
    x, y = sampler.next_batch()
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y, x + 1)  # TOKENS[i] == i, so the next token is always x + 1
    assert int(y.max()) <= 999 and sampler.step == 1


def test_random_windows_reach_the_last_token():
    tokens = np.arange(11, dtype=np.uint16)  # exactly context + 1 tokens: one possible window
    x, y = RandomWindowSampler(tokens, 3, 10, seed=1).next_batch()
    assert x[:, 0].tolist() == [0, 0, 0] and y[:, -1].tolist() == [10, 10, 10]
    starts = np.concatenate([RandomWindowSampler(TOKENS, 64, 8, seed=s).window_starts(0) for s in range(20)])
    assert starts.min() >= 0 and starts.max() <= 1000 - 9


def test_same_seed_same_batches_other_seed_other_batches():
    a = RandomWindowSampler(TOKENS, 4, 8, seed=7)
    b = RandomWindowSampler(TOKENS, 4, 8, seed=7)
    c = RandomWindowSampler(TOKENS, 4, 8, seed=8)
    for _ in range(3):
        xa, xb, xc = a.next_batch()[0], b.next_batch()[0], c.next_batch()[0]
        assert torch.equal(xa, xb) and not torch.equal(xa, xc)


@pytest.mark.parametrize("k", [0, 1, 5])
def test_resume_gives_exactly_the_next_batches(k):
    straight = RandomWindowSampler(TOKENS, 4, 8, seed=3)
    expected = [straight.next_batch() for _ in range(k + 4)][k:]

    first = RandomWindowSampler(TOKENS, 4, 8, seed=3)
    for _ in range(k):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # the checkpoint stores it as JSON

    resumed = RandomWindowSampler(TOKENS, 4, 8, seed=3)
    resumed.load_state_dict(state)
    for x_exp, y_exp in expected:
        x, y = resumed.next_batch()
        assert torch.equal(x, x_exp) and torch.equal(y, y_exp)


def test_without_restoring_the_cursor_batches_differ():
    a = RandomWindowSampler(TOKENS, 4, 8, seed=3)
    a.next_batch()
    fresh = RandomWindowSampler(TOKENS, 4, 8, seed=3)
    assert not torch.equal(a.next_batch()[0], fresh.next_batch()[0])


def test_strict_resume_refuses_changed_settings():
    state = RandomWindowSampler(TOKENS, 4, 8, seed=3).state_dict()
    with pytest.raises(ScratchLLMError, match="batch_size was 4 when saved and is 8 now"):
        RandomWindowSampler(TOKENS, 8, 8, seed=3).load_state_dict(state)
    with pytest.raises(ScratchLLMError, match="seed"):
        RandomWindowSampler(TOKENS, 4, 8, seed=4).load_state_dict(state)
    relaxed = RandomWindowSampler(TOKENS, 4, 8, seed=3, world_size=2)
    relaxed.load_state_dict({**state, "step": 9}, strict=False)
    assert relaxed.step == 9


def test_ranks_read_their_own_slice_of_one_draw():
    world = [RandomWindowSampler(TOKENS, 4, 8, seed=5, rank=r, world_size=3) for r in range(3)]
    starts = [s.window_starts(0) for s in world]
    assert all(not np.array_equal(starts[0], s) for s in starts[1:])
    # The three ranks together read the same windows as one process drawing 3x the batch.
    single = RandomWindowSampler(TOKENS, 12, 8, seed=5).window_starts(0)
    assert np.array_equal(np.concatenate(starts), single)
    # A rank-0 checkpoint resumes every rank.
    world[0].next_batch()
    other = RandomWindowSampler(TOKENS, 4, 8, seed=5, rank=2, world_size=3)
    other.load_state_dict(world[0].state_dict())
    assert np.array_equal(other.window_starts(other.step), world[2].window_starts(1))


def test_sampler_input_errors():
    with pytest.raises(ScratchLLMError, match=r"has 5 tokens .* context_length \+ 1 = 9"):
        RandomWindowSampler(np.arange(5), 2, 8, seed=0)
    with pytest.raises(ScratchLLMError, match="rank"):
        RandomWindowSampler(TOKENS, 2, 8, seed=0, rank=2, world_size=2)
    with pytest.raises(ScratchLLMError, match="batch_size"):
        RandomWindowSampler(TOKENS, 0, 8, seed=0)
    with pytest.raises(ScratchLLMError, match="seed"):
        RandomWindowSampler(TOKENS, 2, 8, seed=-1)


def test_device_argument_moves_batches():
    x, y = RandomWindowSampler(TOKENS, 2, 8, seed=0, device="cpu").next_batch()
    assert x.device.type == "cpu" and not x.is_pinned()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_are_pinned_and_on_device():  # pragma: no cover - CPU CI
    x, y = RandomWindowSampler(TOKENS, 2, 8, seed=0, device="cuda").next_batch()
    assert x.is_cuda and y.is_cuda


def test_sampler_over_real_shards(shards_dir, char_tok, shared_data):
    shards = load_shards(shards_dir)
    verdict = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    x, y = RandomWindowSampler(shards.train, 2, 32, seed=0, name="train.bin").next_batch()
    for row in range(2):
        window = char_tok.decode(x[row].tolist() + y[row, -1:].tolist())
        assert len(window) == 33 and window in verdict


# ----------------------------------------------------------------------------- SequentialWindowSampler


def test_sequential_windows_are_fixed_and_cover_the_array():
    s = SequentialWindowSampler(TOKENS, 4, 10)
    batches = list(s)
    assert len(batches) == len(s) == 24  # 99 windows of 11 tokens -> 24 full batches of 4
    assert s.num_windows == 99
    assert batches[0][0][:, 0].tolist() == [0, 10, 20, 30]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, list(s)))
    assert torch.equal(batches[0][1], batches[0][0] + 1)
    assert len(SequentialWindowSampler(TOKENS, 4, 10, drop_last=False)) == 25
    assert len(list(s.batches(max_batches=3))) == 3


def test_sequential_stride_and_ranks():
    s = SequentialWindowSampler(TOKENS, 2, 10, stride=5)
    assert s.starts[:3].tolist() == [0, 5, 10]
    r0 = SequentialWindowSampler(TOKENS, 2, 10, rank=0, world_size=2)
    r1 = SequentialWindowSampler(TOKENS, 2, 10, rank=1, world_size=2)
    assert set(r0.starts.tolist()).isdisjoint(r1.starts.tolist())
    assert sorted(r0.starts.tolist() + r1.starts.tolist()) == list(range(0, 990, 10))


def test_sequential_too_few_windows():
    with pytest.raises(ScratchLLMError, match="fewer than batch_size 8"):
        SequentialWindowSampler(np.arange(30), 8, 10)
    assert len(SequentialWindowSampler(np.arange(30), 8, 10, drop_last=False)) == 1
    with pytest.raises(ScratchLLMError, match=r"^val.bin has 9 tokens .* = 11"):
        SequentialWindowSampler(np.arange(9), 1, 10, name="val.bin")
