"""scratchllm.inspect on its own (and the CLI that prints it), plus Engine.call."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.inspect import logit_lens, sampling_pipeline, tokenize
from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel


@pytest.fixture(scope="module")
def bpe():
    from scratchllm.tokenizer.bpe import train_bpe

    return train_bpe("the cat sat on the mat; the cats sat on the mats. " * 20, 300)


def test_merge_replay_ends_in_the_encoders_tokens(bpe):
    text = "the cats sat<|endoftext|> on mats"
    d = tokenize(bpe, text)
    assert [t["id"] for t in d["tokens"]] == bpe.encode(text)
    assert [i for w in d["merges"] for i in w["ids"]] == bpe.encode(text)
    for w in d["merges"]:
        if w["special"]:
            assert w["steps"] == [[w["word"]]]
            continue
        assert w["steps"][0] == list(w["word"])  # ASCII: one byte per character
        for a, b in zip(w["steps"], w["steps"][1:]):
            assert len(b) == len(a) - 1 and "".join(a) == "".join(b)  # one merge per step
    assert any(len(w["steps"]) > 2 for w in d["merges"])


def test_replay_is_capped_and_bytes_are_readable(bpe):
    d = tokenize(bpe, "a " * 100, replay_words=10)
    assert len(d["merges"]) == 10 and d["merges_truncated"]
    d = tokenize(bpe, "é")
    assert d["merges"][0]["steps"][0] == ["\\xc3", "\\xa9"]  # two bytes, neither UTF-8 on its own
    with pytest.raises(ScratchLLMError, match="at most"):
        tokenize(bpe, "x" * 20_001)


def test_lens_layers_are_capped_evenly():
    from scratchllm.tokenizer import CharTokenizer

    tok = CharTokenizer(list("abc "))
    torch.manual_seed(0)
    model = GPTModel(
        GPTConfig(vocab_size=tok.vocab_size, context_length=16, n_layer=9, n_head=1, n_embd=8)
    ).eval()
    d = logit_lens(model, tok, "abc", max_layers=4)
    assert [r["layer"] for r in d["layers"]] == [0, 3, 6, 9]
    with torch.no_grad():
        real = model(torch.tensor([tok.encode("abc")]))[0].softmax(-1)
    assert [c[0]["p"] for c in d["layers"][-1]["top"]] == pytest.approx(
        real.max(-1).values.tolist(), abs=1e-4
    )


def test_pipeline_matches_the_sampler():
    from scratchllm.generate.sampling import sample_next
    from scratchllm.tokenizer import CharTokenizer

    tok = CharTokenizer(list("abcdefgh"))
    logits = torch.tensor([3.0, 2.5, 2.0, 1.0, 0.5, 0.0, -1.0, -2.0])
    for seed in range(5):
        d = sampling_pipeline(logits, tok, temperature=0.8, top_k=4, top_p=0.9, seed=seed)
        g = torch.Generator().manual_seed(seed)
        assert d["sampled"]["id"] == int(
            sample_next(logits[None], temperature=0.8, top_k=4, top_p=0.9, generator=g)
        )
        assert [s["kept"] for s in d["stages"]] == [8, 8, 4, d["stages"][3]["kept"]]
        assert sum(d["stages"][3]["p"]) == pytest.approx(1, abs=1e-4)
    with pytest.raises(ScratchLLMError):
        sampling_pipeline(logits, tok, top_p=0)


def test_engine_call_runs_between_steps():
    from scratchllm.serve.engine import Engine
    from scratchllm.tokenizer import CharTokenizer

    tok = CharTokenizer(list("abc "))
    model = GPTModel(
        GPTConfig(vocab_size=tok.vocab_size, context_length=16, n_layer=1, n_head=1, n_embd=8)
    ).eval()
    engine = Engine(model, tok, max_batch=2)
    seen = []
    fut = engine.call(lambda: seen.append(threading.current_thread().name) or 42)
    assert not fut.done() and not engine.idle()
    engine.start()
    try:
        assert fut.result(timeout=10) == 42 and seen == ["scratchllm-engine"]
        bad = engine.call(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            bad.result(timeout=10)
        assert engine.call(lambda: "still serving").result(timeout=10) == "still serving"
    finally:
        engine.close()
    with pytest.raises(ScratchLLMError):
        engine.call(lambda: None)


def test_cli_inspect_prints_the_same_numbers(play_run, capsys):
    from scratchllm import inspect as ins
    from scratchllm.cli.main import main
    from scratchllm.load import load_model

    text = "User: hello"
    assert (
        main(
            [
                "inspect",
                "--model",
                str(play_run),
                "--text",
                text,
                "--next-token",
                "--logit-lens",
                "--tokens",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    loaded = load_model(play_run)
    expected = ins.sampling_pipeline(
        ins.next_token_logits(loaded.model, loaded.tokenizer, text), loaded.tokenizer, show=10
    )
    assert out["next_token"] == expected
    assert out["logit_lens"] == ins.logit_lens(loaded.model, loaded.tokenizer, text)
    assert main(["inspect", "--model", str(play_run), "--text", text, "--logit-lens"]) == 0
    assert "logit lens" in capsys.readouterr().out
    assert main(["inspect", "--model", str(play_run), "--logit-lens"]) == 2
    assert "need --model RUN and --text" in capsys.readouterr().err
