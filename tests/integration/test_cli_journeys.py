"""A new user's journeys through the real CLI, stage after stage, as the READMEs tell them.

Each test chains several verbs and checks what one stage hands the next: the tokenizer the
shards were made with, the run directory ``train`` writes and ``generate``/``eval``/``convert``
read, the fine-tuned run ``classify``/``chat``/``lora merge`` read. The models are tiny and
barely trained: these tests check the glue, not the quality.
"""

from __future__ import annotations

import json
import math

from integration_cli import TINY, cli, ok


def test_tokenizer_train_show_encode_decode(workspace, shared_data):
    word = workspace.root / "word.json"
    ok("tokenizer", "train", "--kind", "word", "--input", shared_data / "the-verdict.txt", "--out", word)
    text = "I had always thought Jack Gisburn"
    for tok in (workspace.char_tok, workspace.bpe_tok, word):
        ids = ok("tokenizer", "encode", "--tokenizer", tok, "--text", text, "--json").json()["ids"]
        assert ids and all(isinstance(i, int) for i in ids)
        decoded = ok("tokenizer", "decode", "--tokenizer", tok, "--ids", *map(str, ids)).out
        if tok != word:  # the word tokenizer is lossy by design (spacing around punctuation)
            assert decoded.rstrip("\n") == text
        shown = ok("tokenizer", "show", "--tokenizer", tok, "--text", text, "--no-color").out
        assert f"{len(ids)} tokens" in shown
    # a run directory is accepted wherever a tokenizer is
    ids = ok("tokenizer", "encode", "--tokenizer", workspace.run, "--text", text, "--json").json()["ids"]
    assert (
        ids
        == ok("tokenizer", "encode", "--tokenizer", workspace.bpe_tok, "--text", text, "--json").json()["ids"]
    )


def test_generate_eval_inspect_on_a_trained_run(workspace):
    run = workspace.run
    args = ["generate", "--model", run, "--prompt", "I had", "--max-new-tokens", "8"]
    sampled = [
        ok(*args, "--temperature", "0.9", "--top-k", "20", "--top-p", "0.9", "--seed", "7", "--json").json()
        for _ in range(2)
    ]
    assert sampled[0]["text"] == sampled[1]["text"], "the same --seed must give the same text"
    assert sampled[0]["new_tokens"] <= 8 and sampled[0]["stop_reason"]
    streamed = ok(*args, "--temperature", "0")
    assert streamed.out.startswith("I had")  # the prompt, then the tokens as they come
    assert ok(*args, "--temperature", "0", "--int8", "--json").json()["int8"] is True
    # --stop on a char model (every token is one whole character): cut before the first match
    char_args = ["generate", "--model", workspace.char_run, "--prompt", "First", "--max-new-tokens", "12"]
    char_args += ["--temperature", "0", "--json"]
    greedy = ok(*char_args).json()
    stop = greedy["text"][3:5]
    if len(stop) == 2:
        cut = ok(*char_args, "--stop", stop).json()
        assert cut["text"] == greedy["text"][: greedy["text"].index(stop)] and cut["stop_reason"] == "stop"

    ev = ok("eval", "--model", run, "--data", workspace.bpe_data, "--json").json()
    for key in ("val_loss", "perplexity", "tokens_per_s", "peak_rss_mb"):
        assert key in ev, key
    assert math.isclose(ev["perplexity"], math.exp(ev["val_loss"]), rel_tol=1e-4)

    info = ok("inspect", "--model", run, "--json").json()
    assert info["architecture"] == "gpt"
    assert "124,439,808" in ok("inspect", "--preset", "gpt2").out


def test_resume_with_the_same_command(workspace):
    """The Ctrl-C message says 'the same command plus --resume' — so --preset must be accepted."""
    run = workspace.root / "resumed"
    cmd = ["train", "--data", workspace.char_data, "--out", run, *TINY, "--quiet"]
    ok(*cmd)
    res = ok(*cmd, "--set", "max_steps=3", "--resume")
    assert "resumed from" in res.out + res.err or "step 3" in res.out
    assert (run / "checkpoints" / "step-00000003").is_dir()
    # the model cannot change on resume
    bad = cli(*cmd, "--set", "n_embd=32", "--resume")
    assert bad.rc == 2 and "cannot change on --resume" in bad.err


def test_hugging_face_round_trip(workspace):
    hf, back = workspace.root / "hf", workspace.root / "from-hf"
    ok("convert", "--to-hf", workspace.run, "--out", hf)
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= {p.name for p in hf.iterdir()}
    ok("convert", "--from-hf", hf, "--out", back)
    args = ["--prompt", "I had always", "--max-new-tokens", "6", "--temperature", "0", "--json"]
    texts = [ok("generate", "--model", m, *args).json()["text"] for m in (workspace.run, hf, back)]
    assert texts[0] == texts[1] == texts[2]
    evals = [
        ok("eval", "--model", m, "--data", workspace.bpe_data, "--batch-size", "2", "--json").json()
        for m in (workspace.run, hf)
    ]
    assert evals[0]["tokens"] == evals[1]["tokens"]
    assert math.isclose(evals[0]["val_loss"], evals[1]["val_loss"], rel_tol=1e-5)


def test_finetune_classify_lora_then_merge(workspace, shared_data):
    rows = ["text\tlabel"]
    shk = [line for line in workspace.char_text.read_text().splitlines() if len(line) > 15][:24]
    ver = [line for line in (shared_data / "the-verdict.txt").read_text().splitlines() if len(line) > 15][:24]
    rows += [f"{t}\tshakespeare" for t in shk] + [f"{t}\tverdict" for t in ver]
    data = workspace.root / "lines.tsv"
    data.write_text("\n".join(rows) + "\n")
    lora, merged = workspace.root / "cls-lora", workspace.root / "cls-merged"
    ok("finetune", "classify", "--model", workspace.run, "--data", data, "--out", lora, "--lora-r", "2",
       "--set", "max_steps=2", "--set", "batch_size=4", "--quiet")  # fmt: skip
    assert (lora / "adapter" / "adapter.safetensors").is_file()
    metrics = json.loads((lora / "test_metrics.json").read_text())
    assert "test" in metrics or "accuracy" in json.dumps(metrics)

    piped = ok("classify", "--model", lora, "--json", stdin="First Citizen: hear me\nthe picture was fine\n")
    before = piped.json()
    assert [r["label"] in ("shakespeare", "verdict") for r in before] == [True, True]
    ok("lora", "merge", "--model", lora, "--out", merged)
    after = ok(
        "classify", "--model", merged, "--json", stdin="First Citizen: hear me\nthe picture was fine\n"
    )
    for a, b in zip(before, after.json(), strict=True):
        assert a["label"] == b["label"] and math.isclose(a["probability"], b["probability"], abs_tol=1e-5)


def test_finetune_instruct_then_chat(workspace, shared_data):
    records = json.loads((shared_data / "instruction-data.json").read_text())[:20]
    data = workspace.root / "instructions.json"
    data.write_text(json.dumps(records))
    base, tuned = workspace.root / "base-128", workspace.root / "instruct"
    ok("train", "--data", workspace.bpe_data, "--out", base, *TINY, "--set", "context_length=128", "--quiet")
    ok("finetune", "instruct", "--model", base, "--data", data, "--out", tuned, "--template", "phi3",
       "--set", "max_steps=2", "--max-new-tokens", "2", "--quiet")  # fmt: skip
    responses = json.loads((tuned / "test_responses.json").read_text())
    assert responses and all("model_response" in r for r in responses)
    assert (tuned / "test_metrics.json").is_file()
    res = ok("chat", "--model", tuned, "--max-new-tokens", "3", stdin="Name a fruit.\n")
    assert "Traceback" not in res.err


def test_seq2seq_train_and_translate(workspace):
    pairs = workspace.root / "reverse.tsv"
    words = ["abc", "hello", "xyz", "foo", "bar", "qux", "ab", "cd", "ef", "gh", "ij", "kl"]
    pairs.write_text("".join(f"{w}\t{w[::-1]}\n" for w in words))
    run = workspace.root / "s2s"
    ok("train", "--arch", "seq2seq", "--data", pairs, "--out", run, *TINY, "--quiet")
    out = ok("translate", "--model", run, "--text", "abc", "--text", "foo", "--beam", "2", "--json").json()
    assert [r["source"] for r in out] == ["abc", "foo"]
    assert all(isinstance(r["output"], str) for r in out)
