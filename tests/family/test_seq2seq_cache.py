"""Incremental seq2seq decoding (self-attention KV cache + cross-attention k/v computed once) gives
the same logits and the same tokens as re-running the decoder over the whole prefix."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from scratchllm.generate.seq2seq import beam_search, greedy_decode
from scratchllm.model.kv_cache import KVCache
from scratchllm.model.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

VARIANTS = [
    {},
    {"norm_position": "post"},
    {"n_kv_head": 1, "activation": "swiglu", "norm": "rmsnorm"},
    {"n_decoder_layer": 3, "share_embeddings": False, "src_vocab_size": 37},
]


def model(**kw) -> Seq2SeqTransformer:
    torch.manual_seed(0)
    base = dict(src_vocab_size=41, tgt_vocab_size=41, context_length=32, n_layer=2, n_head=4, n_embd=32)
    base.update(dropout=0.0, init_std=0.2, pad_id=0, bos_id=1, eos_id=2)
    base.update(kw)
    return Seq2SeqTransformer(Seq2SeqConfig(**base)).eval()


def sources(vocab: int = 37) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, vocab, (4, 11), generator=g)
    mask = torch.ones(4, 11, dtype=torch.long)
    mask[1, 7:] = 0  # padded sources too
    mask[3, 4:] = 0
    return src.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "base"
)
def test_decode_step_logits_equal_the_whole_prefix(variant) -> None:
    m = model(**variant)
    src, mask = sources()
    tgt = torch.randint(3, 41, (4, 15), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        memory = m.encode(src, mask)
        full = m.decode(tgt, memory, mask)
        state = m.start_decoding(memory, mask)
        first = m.decode_step(tgt[:, :3], state)  # a few tokens at once, then one at a time
        rest = [m.decode_step(tgt[:, t : t + 1], state) for t in range(3, 15)]
    steps = torch.cat([first, *rest], dim=1)
    assert state.self_attn.length == 15 and state.cross_attn.length == 11
    assert (steps - full).abs().max() < 1e-5


def make_outputs_end(m: Seq2SeqTransformer, src: torch.Tensor, mask: torch.Tensor) -> None:
    """Give the random model an untied random output head (a tied one just repeats its input token)
    and declare as <eos> a token its greedy outputs reach at different steps, so outputs end at
    different lengths: that exercises finished rows, finished beams and cache reordering."""
    g = torch.Generator().manual_seed(5)
    m.out_head.weight = torch.nn.Parameter(torch.randn(m.out_head.weight.shape, generator=g))
    outs = greedy_decode(m, src, mask, max_len=20, use_cache=False)
    for token, _ in Counter(t for o in outs for t in o[1:]).most_common():
        if len({o.index(token) if token in o else -1 for o in outs}) > 1:
            m.config.eos_id = token
            return
    raise AssertionError("no token ends the outputs at different lengths")


@pytest.mark.parametrize("variant", VARIANTS[:3], ids=["base", "post", "gqa"])
def test_greedy_cached_equals_uncached(variant) -> None:
    m = model(**variant)
    src, mask = sources()
    make_outputs_end(m, src, mask)
    cached = greedy_decode(m, src, mask, max_len=24)
    assert cached == greedy_decode(m, src, mask, max_len=24, use_cache=False)
    assert len({len(o) for o in cached}) > 1, "rows should end at different lengths"


@pytest.mark.parametrize("beam", [1, 2, 4, 6])
def test_beam_search_cached_equals_uncached(beam) -> None:
    m = model(n_kv_head=2)
    src, mask = sources()
    make_outputs_end(m, src, mask)
    lengths = set()
    for row in range(src.shape[0]):
        one = src[row : row + 1, : int(mask[row].sum())]
        cached = beam_search(m, one, beam=beam, max_len=24)
        assert cached == beam_search(m, one, beam=beam, max_len=24, use_cache=False), (row, beam)
        lengths.add(len(cached))
        if beam == 1:
            assert [cached] == greedy_decode(m, one, max_len=24)
    assert len(lengths) > 1


def test_decode_step_checks_room_and_context() -> None:
    from scratchllm.errors import ScratchLLMError

    m = model()
    src, mask = sources()
    with torch.no_grad():
        state = m.start_decoding(m.encode(src, mask), mask, max_len=4)
        m.decode_step(torch.ones(4, 4, dtype=torch.long), state)
        with pytest.raises(ScratchLLMError, match="KV cache is full"):
            m.decode_step(torch.ones(4, 1, dtype=torch.long), state)


def test_kv_cache_reorder_and_fixed_helpers() -> None:
    cache = KVCache(2, 3, 5, 1, 2)
    k = torch.arange(3 * 4, dtype=torch.float32).view(3, 1, 2, 2)
    cache.update(0, k, k + 100)
    cache.update(1, -k, -k)
    cache.advance(2)
    cache.set_padding(torch.tensor([[1], [0], [1]]), 1)
    cache.reorder([2, 2, 0, 1])  # duplicate a row, grow the batch
    assert cache.batch == 4 and cache.k.shape[1] == 4 and cache.length == 2
    keys, values = cache.layer_kv(0)
    assert torch.equal(keys, k[[2, 2, 0, 1]]) and torch.equal(values, k[[2, 2, 0, 1]] + 100)
    assert cache.mask[:, 2].tolist() == [True, True, True, False]
    cache.reorder(torch.tensor([3]))  # shrink
    assert cache.batch == 1 and torch.equal(cache.layer_kv(1)[0], -k[[1]])

    fixed = KVCache.of_fixed([k, -k], [k + 1, -k - 1])
    assert fixed.length == fixed.max_len == 2 and fixed.k.shape == (2, 3, 1, 2, 2)
    assert torch.equal(fixed.layer_kv(1)[1], -k - 1)
    with pytest.raises(ValueError):
        KVCache.of_fixed([], [])
