"""The batching engine on its own (no HTTP): batch independence, choices, stops, logprobs, limits."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.generate import TextStreamer, generate
from scratchllm.serve.engine import (
    Delta,
    Done,
    Engine,
    Failed,
    Finish,
    GenerationRequest,
    PromptLogprobs,
    QueueFull,
    SamplingParams,
)

PROMPTS = ["User: hello\nAssistant:", "The quick", "fish live", "User: count to five\n", "A small model", "w"]


def run_all(engine: Engine) -> None:
    while not engine.idle():
        engine.step()


def collect(engine: Engine, request: GenerationRequest) -> list:
    events: list = []
    engine.submit(request, events.append)
    return events


def finishes(events: list) -> dict[int, Finish]:
    return {e.choice: e for e in events if isinstance(e, Finish)}


def greedy(tok, prompt: str, n: int = 30, **kw) -> GenerationRequest:
    return GenerationRequest(tok.encode(prompt), n, SamplingParams(temperature=0), **kw)


def test_requests_joining_at_different_steps_match_greedy_alone(char_model_parts):
    model, tok, _ = char_model_parts
    engine = Engine(model, tok, max_batch=4, max_queue=16, prefill_chunk=5)
    events = {}
    # Requests arrive while others run (6 requests, 4 slots): they join and leave at different steps.
    for k, prompt in enumerate(PROMPTS):
        events[k] = collect(engine, greedy(tok, prompt, 20 + 3 * k))
        for _ in range(k + 1):
            engine.step()
    run_all(engine)
    for k, prompt in enumerate(PROMPTS):
        ids = tok.encode(prompt)
        ref = generate(model, ids, 20 + 3 * k, temperature=0)[len(ids) :].tolist()
        eot = tok.eot_id
        ref = ref[: ref.index(eot)] if eot in ref else ref
        fin = finishes(events[k])[0]
        assert fin.text == tok.decode(ref), k
        assert "".join(e.text for e in events[k] if isinstance(e, Delta)) == fin.text
        assert isinstance(events[k][-1], Done)
    assert engine.slots_in_use == 0 and engine.cache.lengths.tolist() == [0, 0, 0, 0]


def test_prompts_prefilled_together_match_greedy_alone(char_model_parts):
    """Six prompts of different lengths arrive at once: prefilled in one right-padded pass (and in
    chunks, with a small budget), then decoded together."""
    model, tok, _ = char_model_parts
    for chunk in (512, 9):
        engine = Engine(model, tok, max_batch=8, prefill_chunk=chunk)
        events = [collect(engine, greedy(tok, p, 15)) for p in PROMPTS]
        run_all(engine)
        for prompt, ev in zip(PROMPTS, events):
            ids = tok.encode(prompt)
            ref = generate(model, ids, 15, temperature=0)[len(ids) :].tolist()
            assert finishes(ev)[0].text == tok.decode(ref), (chunk, prompt)


def test_n_choices_seeds_and_batch_independent_sampling(char_model_parts):
    model, tok, _ = char_model_parts
    ids = tok.encode("User: hello\nAssistant:")
    sampling = SamplingParams(temperature=1.0, top_k=20, seed=7)

    def texts(engine, others=0):
        for k in range(others):  # unrelated traffic in the same batch
            collect(
                engine, GenerationRequest(tok.encode(PROMPTS[k]), 25, SamplingParams(temperature=1.3, seed=k))
            )
        ev = collect(engine, GenerationRequest(ids, 25, sampling, n=3))
        run_all(engine)
        return [finishes(ev)[i].text for i in range(3)]

    alone = texts(Engine(model, tok, max_batch=8))
    crowded = texts(Engine(model, tok, max_batch=8), others=4)
    assert alone == crowded
    assert len(set(alone)) == 3  # distinct choices
    one = collect(engine := Engine(model, tok), GenerationRequest(ids, 25, sampling))
    run_all(engine)
    assert finishes(one)[0].text == alone[0]  # choice 0 uses the seed itself


def test_stop_strings_eos_length_and_logprob_alignment(char_model_parts):
    model, tok, _ = char_model_parts
    engine = Engine(model, tok)
    ids = tok.encode("User: hello\nAssistant:")
    free = collect(
        engine, GenerationRequest(ids, 40, SamplingParams(temperature=0), stop_ids=frozenset([tok.eot_id]))
    )
    run_all(engine)
    full = finishes(free)[0].text
    assert len(full) > 20
    stop = full[10:13]  # spans several tokens of a char model
    ev = collect(engine, GenerationRequest(ids, 40, SamplingParams(temperature=0), stop=[stop], logprobs=3))
    short = collect(engine, GenerationRequest(ids, 4, SamplingParams(temperature=0)))
    run_all(engine)
    fin = finishes(ev)[0]
    assert fin.reason == "stop" and fin.text == full[: full.index(stop)] and stop not in fin.text
    tokens = [t for e in ev if isinstance(e, Delta) for t in e.tokens]
    assert "".join(t.text for t in tokens) == fin.text
    assert all(t.logprob <= 0 and len(t.top) == 3 and t.top[0][1] >= t.top[1][1] for t in tokens)
    assert finishes(short)[0].reason == "length" and finishes(short)[0].completion_tokens == 4


def test_prompt_logprobs_equal_the_full_forward(char_model_parts):
    model, tok, _ = char_model_parts
    engine = Engine(model, tok, prefill_chunk=7)  # the prompt spans several chunks
    ids = tok.encode("The river runs to the sea, and the sea is wide.")
    ev = collect(engine, GenerationRequest(ids, 0, prompt_logprobs=2))
    run_all(engine)
    pl = next(e for e in ev if isinstance(e, PromptLogprobs))
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0], -1)
    assert pl.tokens[0].logprob is None
    for j in range(1, len(ids)):
        assert pl.tokens[j].logprob == pytest.approx(float(logp[j - 1, ids[j]]), abs=1e-4)
    assert "".join(t.text for t in pl.tokens) == pl.text == tok.decode(ids)
    assert finishes(ev)[0].reason == "length" and finishes(ev)[0].text == ""


def test_penalties_and_logit_bias(char_model_parts):
    model, tok, _ = char_model_parts
    engine = Engine(model, tok)
    ids = tok.encode("one, two, ")
    x = tok.encode("x")[0]
    forced = collect(engine, GenerationRequest(ids, 5, SamplingParams(temperature=0, logit_bias={x: 100})))
    params = SamplingParams(temperature=0, frequency_penalty=1.5, presence_penalty=0.5)
    penal = collect(engine, GenerationRequest(ids, 12, params))
    run_all(engine)
    assert finishes(forced)[0].text == "xxxxx"
    # the reference: OpenAI's formula applied by hand to the uncached model's logits
    seq, counts = list(ids), torch.zeros(tok.vocab_size)
    with torch.no_grad():
        for _ in range(12):
            logits = model(torch.tensor([seq]))[0, -1] - 1.5 * counts - 0.5 * (counts > 0).float()
            seq.append(int(logits.argmax()))
            counts[seq[-1]] += 1
    assert finishes(penal)[0].text == tok.decode(seq[len(ids) :])


def test_queue_cancel_timeout_and_bad_requests(char_model_parts):
    model, tok, _ = char_model_parts
    clock = [0.0]
    engine = Engine(model, tok, max_batch=1, max_queue=1, clock=lambda: clock[0])
    ids = tok.encode("hello")
    first = collect(engine, GenerationRequest(ids, 50, SamplingParams(temperature=0)))
    engine.step()  # the first takes the only slot
    waiting: list = []
    handle = engine.submit(GenerationRequest(ids, 5, timeout=1.0), waiting.append)
    with pytest.raises(QueueFull):
        engine.submit(GenerationRequest(ids, 5), lambda e: None)
    assert (engine.running, engine.waiting, engine.slots_in_use) == (1, 1, 1)
    clock[0] = 2.0  # the waiting one times out
    engine.step()
    assert isinstance(waiting[-1], Failed) and waiting[-1].code == "timeout"
    assert engine.waiting == 0
    engine.submit(GenerationRequest(ids, 5), lambda e: None).cancel()
    # cancel the running one: its slot is free at the next step
    engine._running[0].handle.cancel()
    engine.step()
    assert engine.idle() and engine.slots_in_use == 0
    assert not any(isinstance(e, Done) for e in first)
    assert handle.cancelled is False
    for bad, match in [
        (GenerationRequest([], 5), "no tokens"),
        (GenerationRequest(ids, 500), "context length"),
        (GenerationRequest(ids, 5, n=2), "max-batch"),
        (GenerationRequest([10**6], 5), "outside the vocabulary"),
    ]:
        with pytest.raises(ScratchLLMError, match=match):
            engine.submit(bad, lambda e: None)


def test_text_streamer_take_tokens_align_with_released_text():
    from scratchllm.tokenizer.bpe import train_bpe

    tok = train_bpe("ab 🍕 cd 🍕 ab " * 20, 262)
    ids = tok.encode("ab 🍕 cd 🍕 ab")
    s = TextStreamer(tok, [], stop=["cd 🍕 a"])
    shown, pieces = "", []
    for i in ids:
        shown += s.push(i)
        pieces += s.take_tokens()
        assert "".join(pieces) == shown[: len("".join(pieces))]
        if s.stopped:
            break
    shown += s.finish()
    pieces += s.take_tokens()
    assert shown == "ab 🍕 " and "".join(pieces) == shown and "\ufffd" not in shown
    assert len(pieces) == len(s.ids)
