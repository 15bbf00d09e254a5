"""Generation: sampler rules, KV-cache engine == recomputation, padding, stops, argument errors."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.generate import (
    StopStrings,
    TextStreamer,
    filter_logits,
    generate,
    pad_left,
    sample_next,
    stream,
    truncate_at_stop,
)
from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel

POS = ["learned", "sinusoidal", "rope", "alibi", "none"]


def tiny_model(**kw) -> GPTModel:
    torch.manual_seed(0)
    base = dict(vocab_size=53, context_length=24, n_layer=2, n_head=4, n_embd=32)
    base.update(kw)
    # Larger init so that random models produce peaked, non-trivial greedy continuations.
    return GPTModel(GPTConfig(init_std=0.2, **base)).eval()


def naive_greedy(model: GPTModel, idx: torch.Tensor, n: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Recompute the whole (cropped) sequence at every step: the reference for the cache."""
    ctx = model.config.context_length
    all_logits = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(idx[:, -ctx:])[:, -1]
            all_logits.append(logits)
            idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx, all_logits


@pytest.mark.parametrize(
    "variant",
    [dict(pos_emb=p) for p in POS]
    + [dict(pos_emb="rope", n_kv_head=2), dict(n_kv_head=1, norm="rmsnorm", activation="swiglu")]
    + [
        dict(qk_norm=True, pos_emb="rope", n_kv_head=2),
        dict(qk_norm=True),
        dict(activation="relu2", logit_softcap=5.0, tie_weights=False),
        dict(pos_emb="rope", activation="relu2", qk_norm=True, logit_softcap=5.0, norm="rmsnorm"),
    ],
    ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()),
)
def test_kv_cache_matches_recomputation(variant):
    model = tiny_model(**variant)
    idx = torch.randint(0, 53, (2, 7))
    ref_ids, ref_logits = naive_greedy(model, idx, 10)
    # logits step by step through the cache
    cache = model.make_kv_cache(2)
    with torch.no_grad():
        logits = model(idx, kv_cache=cache)[:, -1]
        for step in range(10):
            assert torch.allclose(logits, ref_logits[step], atol=1e-5), step
            logits = model(ref_ids[:, 7 + step : 8 + step], kv_cache=cache)[:, -1]
    assert torch.equal(generate(model, idx, 10, temperature=0), ref_ids)


@pytest.mark.parametrize("pos_emb", ["learned", "rope", "alibi"])
def test_sliding_window_past_context_equals_cropping(pos_emb):
    model = tiny_model(pos_emb=pos_emb, context_length=12)
    idx = torch.randint(0, 53, (1, 15))  # longer than the context: cropped from the left
    ref, _ = naive_greedy(model, idx, 9)
    assert torch.equal(generate(model, idx, 9, temperature=0), ref)
    out = generate(model, idx[0, :5], 20, temperature=0, on_full="stop")
    assert out.shape == (13,)  # 12 tokens fill the context and predict a 13th, then it stops


@pytest.mark.parametrize("pos_emb", ["learned", "sinusoidal", "rope", "alibi"])
def test_left_padded_batch_equals_rows_alone(pos_emb):
    model = tiny_model(pos_emb=pos_emb, n_kv_head=2)
    prompts = [[5, 9, 2, 44, 7, 1, 3], [8, 8], [30, 1, 2, 3]]
    idx, mask = pad_left(prompts, pad_id=0)
    assert mask.tolist()[1] == [0, 0, 0, 0, 0, 1, 1]
    batched = generate(model, idx, 8, temperature=0, attention_mask=mask)
    for row, prompt in enumerate(prompts):
        alone = generate(model, prompt, 8, temperature=0)
        assert batched[row, -8:].tolist() == alone[-8:].tolist()
    # Same logits too (padded rows see the same positions and keys as unpadded ones).
    with torch.no_grad():
        padded_logits = model(idx, attention_mask=mask)[1, -1]
        alone_logits = model(torch.tensor([prompts[1]]))[0, -1]
    assert torch.allclose(padded_logits, alone_logits, atol=1e-5)


def test_greedy_is_argmax_and_topk_topp_rules():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5, -1.0]])
    assert sample_next(logits, temperature=0).item() == 1
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, temperature=1.5, top_k=2, generator=g).item() for _ in range(300)}
    assert draws == {1, 2}
    # top-p: probabilities 0.5, 0.3, 0.15, 0.05 -> p=0.75 keeps {0.5, 0.3} (mass 0.8 >= 0.75)
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(filter_logits(probs.log(), top_p=0.75))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(probs.log(), top_p=0.8 - 1e-6)).sum() == 2
    assert torch.isfinite(filter_logits(probs.log(), top_p=0.81)).sum() == 3
    assert torch.isfinite(filter_logits(probs.log(), top_p=0.1)).sum() == 1  # the top token always stays
    # composable: top-k 3 then top-p 0.9 of the renormalised three
    both = filter_logits(probs.log(), top_k=3, top_p=0.9)
    assert torch.isfinite(both).tolist() == [[True, True, True, False]]
    draws = {sample_next(probs.log(), top_p=0.75, generator=g).item() for _ in range(300)}
    assert draws == {0, 1}


def test_seed_reproducibility_and_streaming():
    model = tiny_model()
    prompt = [3, 4, 5]
    a = generate(model, prompt, 12, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(7))
    b = generate(model, prompt, 12, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(7))
    c = generate(model, prompt, 12, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    streamed = list(
        stream(model, prompt, 12, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(7))
    )
    assert all(isinstance(t, int) for t in streamed)
    assert streamed == a[3:].tolist()
    assert model.training is False
    model.train()
    generate(model, prompt, 2)
    assert model.training is True  # the mode is restored


def test_eos_and_stop_callback_end_generation():
    model = tiny_model()
    full = generate(model, [1, 2, 3], 10, temperature=0)
    eos = int(full[5])  # the 3rd generated token
    out = generate(model, [1, 2, 3], 10, temperature=0, eos_id=eos)
    assert out.tolist() == full[: full.tolist().index(eos, 3) + 1].tolist()
    calls = []

    def stop(ids):
        calls.append(list(ids))
        return len(ids) == 4

    out = generate(model, [1, 2, 3], 10, temperature=0, stop=stop)
    assert out.tolist() == full[:7].tolist() and calls[-1] == full[3:7].tolist()
    # batch: a finished row stands still while the other continues
    idx = torch.tensor([[1, 2, 3], [7, 8, 9]])
    both = generate(model, idx, 10, temperature=0, eos_id=eos)
    assert both.shape[1] <= 13


class _CharTok:
    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


def test_stop_strings_helper():
    s = StopStrings(_CharTok(), ["cd"])
    assert not s([0, 1, 2]) and s([0, 1, 2, 3])
    assert truncate_at_stop("hello\n\nworld", ["\n\n", "zzz"]) == ("hello", True)
    assert truncate_at_stop("hello", ["x"]) == ("hello", False)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=0), "top_k"),
    ],
)
def test_bad_sampling_arguments(kwargs, match):
    model = tiny_model()
    args = dict(max_new_tokens=5)
    args.update(kwargs)
    with pytest.raises(ScratchLLMError, match=match):
        generate(model, [1, 2], args.pop("max_new_tokens"), **args)
    with pytest.raises(ScratchLLMError):
        generate(model, [], 3)


def test_stop_on_replacement_character_follows_one_rule(gpt2_files):
    """A stop string containing U+FFFD: StopStrings and TextStreamer agree, and the stop is reported.

    Byte-level tokens split characters: the ids of "日本語" are 6 byte tokens, each decoding alone
    to U+FFFD. While a character is being spelled out nothing is searched; a byte that never
    completes a character counts as U+FFFD once generation ends (``finish``).
    """
    from scratchllm.tokenizer import load_tokenizer

    tok = load_tokenizer(gpt2_files)
    ids = tok.encode("日本語" * 4)
    stop = StopStrings(tok, ["\ufffd"])
    # whole characters, or a character still arriving: no stop (a tail window would start mid-character)
    assert not any(stop(ids[:n]) for n in range(1, len(ids) + 1))
    # a lone continuation byte followed by more text: it is a real U+FFFD now
    lone = [ids[1], *tok.encode("ab")]
    assert stop(lone)

    streamer = TextStreamer(tok, tok.encode("Q:"), stop=["\ufffd"])
    shown = "".join(streamer.push(i) for i in lone)
    assert streamer.stopped and shown == "" and streamer.text == ""
    # generation ends on the lone byte: the stop is found by finish(), which callers must check
    streamer = TextStreamer(tok, [], stop=["\ufffd"])
    assert streamer.push(ids[1]) == "" and not streamer.stopped
    assert streamer.finish() == "" and streamer.stopped and streamer.text == ""
    # text before a pending character is searched at once
    streamer = TextStreamer(tok, [], stop=["ab"])
    for i in [*tok.encode("xab"), ids[0]]:
        streamer.push(i)
    assert streamer.stopped and streamer.text == "x"
