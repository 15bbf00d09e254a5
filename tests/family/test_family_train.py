"""BERT and seq2seq through the one training loop and the CLI: train, resume, fill-mask, translate."""

from __future__ import annotations

import json

import pytest

from scratchllm.cli.main import main

TINY_BERT = [
    "--set",
    "n_layer=1",
    "--set",
    "n_embd=32",
    "--set",
    "n_head=2",
    "--set",
    "context_length=48",
    "--set",
    "batch_size=16",
    "--set",
    "warmup_steps=5",
    "--set",
    "eval_steps=2",
    "--set",
    "lr=3e-3",
    "--quiet",
]


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_bert_trains_resumes_and_fills_masks(tmp_path, shared_data, capsys) -> None:
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    data = tmp_path / "verdict.txt"
    data.write_text(text, encoding="utf-8")
    run = tmp_path / "bert"
    args = ["train", "--arch", "bert", "--data", str(data), "--out", str(run), *TINY_BERT]
    assert (
        main([*args, "--set", "max_steps=40", "--set", "eval_interval=40", "--set", "save_interval=20"]) == 0
    )
    events = metrics(run)
    train = [e["loss"] for e in events if e["event"] == "train"]
    assert train[-1] < train[0] - 0.5
    evals = [e for e in events if e["event"] == "eval" and "val_loss" in e]
    assert {"masked_token_accuracy", "nsp_accuracy", "perplexity"} <= set(evals[-1])
    assert json.loads((run / "config.json").read_text())["architecture"] == "bert"

    # --resume continues from the checkpoint to a larger max_steps.
    assert main([*args, "--set", "max_steps=45", "--set", "eval_interval=40", "--resume"]) == 0
    assert [e for e in metrics(run) if e["event"] == "train"][-1]["step"] == 45
    capsys.readouterr()

    assert (
        main(
            ["fill-mask", "--model", str(run), "--text", "I had always thought Jack Gisburn rather a [MASK]"]
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and all("I had always thought" in line for line in out)
    assert main(["fill-mask", "--model", str(run), "--text", "no mask here"]) == 2
    assert main(["translate", "--model", str(run), "--text", "x"]) == 2
    assert "is a bert model" in capsys.readouterr().err


def test_seq2seq_tsv_train_and_translate(tmp_path, capsys) -> None:
    from scratchllm.data.seq2seq import date_pairs

    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in date_pairs(300, seed=1)), encoding="utf-8")
    run = tmp_path / "s2s"
    common = [
        "--set",
        "n_layer=1",
        "--set",
        "n_embd=32",
        "--set",
        "n_head=2",
        "--set",
        "batch_size=16",
        "--set",
        "eval_steps=1",
        "--set",
        "warmup_steps=2",
        "--quiet",
    ]
    assert (
        main(
            [
                "train",
                "--arch",
                "seq2seq",
                "--data",
                str(tsv),
                "--out",
                str(run),
                *common,
                "--set",
                "max_steps=12",
                "--set",
                "eval_interval=12",
            ]
        )
        == 0
    )
    last = [e for e in metrics(run) if e["event"] == "eval" and "val_loss" in e][-1]
    assert {"exact_match", "bleu", "perplexity"} <= set(last)
    resume = ["train", "--arch", "seq2seq", "--data", str(tsv), "--out", str(run), "--quiet", "--resume"]
    assert main([*resume, "--set", "max_steps=14"]) == 0
    assert [e for e in metrics(run) if e["event"] == "train"][-1]["step"] == 14
    capsys.readouterr()
    png = tmp_path / "attn.png"
    assert (
        main(
            [
                "translate",
                "--model",
                str(run),
                "--text",
                "Mar 3, 1998",
                "--beam",
                "2",
                "--max-len",
                "12",
                "--plot-attention",
                str(png),
            ]
        )
        == 0
    )
    assert png.is_file()
    assert main(["translate", "--model", str(run), "--text", "x", "--plot-attention", str(png)]) == 2
    assert "--force" in capsys.readouterr().err

    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nc d\n", encoding="utf-8")
    assert (
        main(["train", "--arch", "seq2seq", "--data", str(bad), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    )
    assert "line 2" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["bert", "seq2seq"])
def test_family_runs_load_back(tmp_path, arch) -> None:
    from scratchllm.load import load_model
    from scratchllm.runs import save_run_files
    from scratchllm.train.pretrain import setup_pretraining

    data = "default" if arch == "bert" else "dates"
    setup = setup_pretraining(data, tmp_path, arch=arch, overrides=["n_layer=1", "n_embd=32", "n_head=2"])
    save_run_files(
        tmp_path, setup.model, arch=arch, model_config=setup.model_config, tokenizer=setup.tokenizer
    )
    loaded = load_model(tmp_path)
    assert loaded.arch == arch and type(loaded.model) is type(setup.model)
    assert loaded.tokenizer.vocab_size == setup.tokenizer.vocab_size
