"""The static KV cache: in-place writes, padding masks, crop/reset, overflow errors."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel
from scratchllm.model.kv_cache import KVCache


def model(**kw) -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig(vocab_size=40, context_length=12, n_layer=2, n_head=4, n_embd=32, **kw)).eval()


def test_buffers_are_preallocated_and_written_in_place():
    m = model(n_kv_head=2)
    cache = m.make_kv_cache(3, max_len=8)
    assert cache.k.shape == (2, 3, 2, 8, 8) and cache.nbytes == 2 * 2 * 3 * 2 * 8 * 8 * 4
    ptr = cache.k.data_ptr()
    with torch.no_grad():
        m(torch.randint(0, 40, (3, 5)), kv_cache=cache)
        m(torch.randint(0, 40, (3, 1)), kv_cache=cache)
    assert cache.length == 6 and cache.k.data_ptr() == ptr
    assert cache.k[:, :, :, :6].abs().sum() > 0 and cache.k[:, :, :, 6:].abs().sum() == 0


def test_crop_rolls_back_and_reset_forgets():
    m = model(pos_emb="rope")
    idx = torch.randint(0, 40, (1, 9))
    cache = m.make_kv_cache(1)
    with torch.no_grad():
        full = m(idx)
        m(idx[:, :7], kv_cache=cache)
        cache.crop(4)
        again = m(idx[:, 4:9], kv_cache=cache)
        assert torch.allclose(again, full[:, 4:9], atol=1e-5)
        cache.reset()
        assert torch.allclose(m(idx[:, :3], kv_cache=cache), full[:, :3], atol=1e-5)
    with pytest.raises(ValueError):
        cache.crop(5)


def test_overflow_and_context_errors():
    m = model()
    cache = m.make_kv_cache(1, max_len=4)
    with torch.no_grad():
        m(torch.zeros(1, 4, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ScratchLLMError, match="KV cache is full"):
            m(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)
    cache = KVCache(2, 1, 20, 4, 8)
    with torch.no_grad(), pytest.raises(ScratchLLMError, match="context_length"):
        m(torch.zeros(1, 13, dtype=torch.long), kv_cache=cache)


def test_padding_mask_in_either_convention():
    m = model(pos_emb="alibi")
    idx = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    nxt = torch.tensor([[9], [9]])
    with torch.no_grad():
        ref = m(
            torch.cat([idx, nxt], 1), attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        )
        for full_mask in (False, True):
            cache = m.make_kv_cache(2)
            m(idx, kv_cache=cache, attention_mask=mask)
            step_mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1) if full_mask else None
            out = m(nxt, kv_cache=cache, attention_mask=step_mask)
            assert torch.allclose(out[:, -1], ref[:, -1], atol=1e-5)
        alone = m(torch.tensor([[5, 6, 7, 9]]))
    assert torch.allclose(ref[0, -1], alone[0, -1], atol=1e-5)


@pytest.mark.parametrize("pos_emb", ["learned", "sinusoidal", "rope", "alibi", "none"])
def test_per_row_cache_rows_join_and_leave_independently(pos_emb):
    """Continuous batching: rows prefilled one by one, decoded together with some rows idle, one
    row reset and reused — every row's logits equal the uncached forward of its own sequence."""
    m = model(pos_emb=pos_emb, n_kv_head=2)
    cache = m.make_kv_cache(4, per_row=True)
    seqs = {0: [1, 2, 3, 4, 5], 1: [7, 8], 2: [9, 9, 9, 1, 2, 3]}
    last = {}
    with torch.no_grad():
        for row, ids in seqs.items():
            last[row] = m(torch.tensor([ids]), kv_cache=cache.rows(row, row + 1))[0, -1]
        for step in range(5):
            if step == 2:  # row 1 leaves, a new sequence takes its slot
                cache.reset_row(1)
                seqs[1] = [3, 1, 4]
                last[1] = m(torch.tensor([seqs[1]]), kv_cache=cache.rows(1, 2))[0, -1]
            moving = [0, 1] + ([2] if step % 2 == 0 else [])  # row 2 pauses every other step; row 3 idles
            tokens = torch.zeros(4, 1, dtype=torch.long)
            for row in moving:
                tokens[row, 0] = int(last[row].argmax())
                seqs[row].append(int(tokens[row, 0]))
            advancing = torch.tensor([row in moving for row in range(4)])
            out = m(tokens, kv_cache=cache.rows(0, 4, advancing))[:, -1]
            for row in moving:
                last[row] = out[row]
        for row, ids in seqs.items():
            assert torch.allclose(m(torch.tensor([ids]))[0, -1], last[row], atol=1e-5), row
    assert cache.lengths.tolist() == [len(seqs[0]), len(seqs[1]), len(seqs[2]), 0]
    cache.copy_row(0, 3)
    assert int(cache.lengths[3]) == len(seqs[0]) and torch.equal(cache.k[:, 3, :, :5], cache.k[:, 0, :, :5])
    with pytest.raises(ScratchLLMError, match="row is full"), torch.no_grad():
        m(torch.zeros(1, 12, dtype=torch.long), kv_cache=cache.rows(0, 1))
    with pytest.raises(ValueError):
        cache.crop(1)
