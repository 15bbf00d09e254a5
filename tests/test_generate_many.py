"""Several outputs at once: generate_many (prompts x samples in left-padded batches) and
`scratchllm generate --num-samples / --prompt-file / --json`."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from scratchllm.cli.main import main
from scratchllm.generate import generate, generate_many
from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel
from scratchllm.runs import save_run_files
from scratchllm.tokenizer.char import CharTokenizer

TEXT = "hello world, the quick brown fox jumps over the lazy dog.\n"


def tiny(tok) -> GPTModel:
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=tok.vocab_size, context_length=24, n_layer=2, n_head=2, n_embd=32, init_std=0.3
    )
    return GPTModel(cfg).eval()


@pytest.fixture(scope="module")
def tok() -> CharTokenizer:
    return CharTokenizer.train(TEXT)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tok):
    path = tmp_path_factory.mktemp("run") / "tiny"
    m = tiny(tok)
    save_run_files(path, m, arch="gpt", model_config=m.config, tokenizer=tok)
    return path


def test_greedy_batch_equals_each_prompt_alone(tok) -> None:
    m = tiny(tok)
    prompts = [tok.encode(p) for p in ("the quick", "a", "hello world, the lazy dog jumps")]  # one > context
    outs = generate_many(m, tok, prompts, 12, num_samples=2, temperature=0.0, eos_id=[], batch_size=4)
    assert [(o.prompt_index, o.sample_index) for o in outs] == [(p, s) for p in range(3) for s in range(2)]
    for o in outs:
        alone = generate(m, prompts[o.prompt_index], 12, temperature=0.0).tolist()
        assert o.tokens == alone[len(prompts[o.prompt_index]) :]
        assert o.text == tok.decode(o.tokens) and o.stop_reason == "max_new_tokens" and o.new_tokens == 12


def test_samples_differ_and_follow_the_seed(tok) -> None:
    m = tiny(tok)
    prompts = [tok.encode("the "), tok.encode("fox")]

    def run(seed: int):
        g = torch.Generator().manual_seed(seed)
        return [o.tokens for o in generate_many(m, tok, prompts, 10, num_samples=3, generator=g, eos_id=[])]

    first = run(1)
    assert first == run(1) and first != run(2)
    assert len({tuple(t) for t in first[:3]}) > 1, "the samples of one prompt are different draws"


def test_eos_and_stop_strings_end_rows(tok) -> None:
    m = tiny(tok)
    prompts = [tok.encode("the quick"), tok.encode("lazy")]
    free = generate_many(m, tok, prompts, 16, temperature=0.0, eos_id=[])
    # An "end of text" token and a stop string taken from what the rows really produce.
    eos = free[0].tokens[4]
    ended = generate_many(m, tok, prompts, 16, temperature=0.0, eos_id=eos)
    assert ended[0].stop_reason == "eos" and ended[0].tokens == free[0].tokens[: free[0].tokens.index(eos)]
    assert ended[0].new_tokens == len(ended[0].tokens) + 1
    stop = free[1].text[3:5]
    stopped = generate_many(m, tok, prompts, 16, temperature=0.0, eos_id=[], stop=[stop])
    assert stopped[1].stop_reason == "stop" and stopped[1].text == free[1].text[: free[1].text.index(stop)]
    assert stop in tok.decode(stopped[1].tokens) and stop not in tok.decode(stopped[1].tokens[:-1])


def test_cli_num_samples_prompt_file_and_json_lines(run_dir, tmp_path, capsys, monkeypatch) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the quick\n\nhello\n  \nlazy dog\n", encoding="utf-8")
    base = ["generate", "--model", str(run_dir), "--max-new-tokens", "8", "--seed", "3"]
    assert main([*base, "--prompt-file", str(prompts), "--num-samples", "2", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["prompt_index"], r["sample_index"]) for r in records] == [
        (p, s) for p in range(3) for s in range(2)
    ]
    assert [r["prompt"] for r in records[::2]] == ["the quick", "hello", "lazy dog"]
    for r in records:
        assert {"text", "tokens", "new_tokens", "stop_reason", "model"} <= set(r)
        assert r["stop_reason"] in ("eos", "stop", "max_new_tokens") and len(r["tokens"]) <= 8
    # same seed, same outputs; the text output shows each one under a header
    assert main([*base, "--prompt-file", str(prompts), "--num-samples", "2"]) == 0
    out = capsys.readouterr()
    assert out.out.count("--- prompt ") == 6 and "6 outputs in 1 batch(es)" in out.err
    for r in records:
        assert r["prompt"] + r["text"] in out.out
    # smaller batches, one forward per batch: the same greedy outputs
    greedy = [*base, "--prompt-file", str(prompts), "--temperature", "0", "--json"]
    assert main(greedy) == 0
    one_batch = capsys.readouterr().out
    assert main([*greedy, "--batch-size", "1"]) == 0
    assert capsys.readouterr().out == one_batch
    # --num-samples with --prompt, and stdin as the prompt file
    assert main([*base, "--prompt", "the ", "--num-samples", "3", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    monkeypatch.setattr("sys.stdin", io.StringIO(prompts.read_text(encoding="utf-8")))
    assert main([*base, "--prompt-file", "-", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--prompt-file", "MISSING"], "not found"),
        (["--prompt-file", "EMPTY"], "holds no prompts"),
        (["--prompt", "the", "--num-samples", "0"], "--num-samples must be >= 1"),
        (["--prompt", "the", "--num-samples", "2", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["--prompt", "the", "--prompt-file", "EMPTY"], "not allowed with argument"),
        (["--prompt-file", "BAD"], "not in this char tokenizer"),
    ],
)
def test_cli_errors(run_dir, tmp_path, capsys, extra, match) -> None:
    (tmp_path / "EMPTY").write_text("\n \n", encoding="utf-8")
    (tmp_path / "BAD").write_text("the\nHELLO\n", encoding="utf-8")
    extra = [str(tmp_path / a) if a in ("MISSING", "EMPTY", "BAD") else a for a in extra]
    with pytest.raises(SystemExit) if "not allowed" in match else contextlib.nullcontext() as caught:
        code = main(["generate", "--model", str(run_dir), *extra])
    code = caught.value.code if caught else code
    assert code == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_cli_allow_special_reads_the_separator_in_prompts(run_dir, tmp_path, capsys) -> None:
    """A prompt is ordinary text: this char tokenizer has no '<', so the literal cannot be spelled
    (a one-line error that names --allow-special); with the flag it is the separator token."""
    base = ["generate", "--model", str(run_dir), "--max-new-tokens", "4", "--temperature", "0", "--json"]
    prompts = tmp_path / "p.txt"
    prompts.write_text("the quick<|endoftext|>hello\n", encoding="utf-8")
    for source in (["--prompt", "the quick<|endoftext|>hello"], ["--prompt-file", str(prompts)]):
        assert main([*base, *source]) == 2
        err = capsys.readouterr().err
        assert "character '<'" in err and "--allow-special" in err and len(err.strip().splitlines()) == 1
        assert main([*base, *source, "--allow-special"]) == 0
        assert '"the quick<|endoftext|>hello"' in capsys.readouterr().out  # (JSON: the prompt echoed)
