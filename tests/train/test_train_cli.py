"""`scratchllm train`, `eval` and `demo` end to end on a tiny prepared dataset, and their bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scratchllm.cli.main import main
from scratchllm.data.prepare import prepare
from scratchllm.tokenizer import CharTokenizer

TINY = [
    "--preset",
    "tiny",
    "--set",
    "n_layer=1",
    "--set",
    "n_embd=16",
    "--set",
    "context_length=32",
    "--set",
    "batch_size=4",
    "--set",
    "eval_interval=2",
    "--set",
    "eval_steps=2",
    "--set",
    "sample_tokens=20",
    "--device",
    "cpu",
    "--quiet",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared_data) -> Path:
    root = tmp_path_factory.mktemp("data")
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:30_000]
    (root / "text.txt").write_text(text, encoding="utf-8")
    prepare(CharTokenizer.train(text), [root / "text.txt"], root / "shards", progress=False)
    # the same text, tokenized by a different tokenizer (one extra symbol shifts every id)
    prepare(CharTokenizer.train(text + "§"), [root / "text.txt"], root / "other", progress=False)
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "run"
    code = main(["train", "--data", str(data / "shards"), "--out", str(run), *TINY, "--set", "max_steps=4"])
    assert code == 0
    return run


def one_line_error(capsys, code: int, *words: str, expected: int = 2) -> None:
    err = capsys.readouterr().err
    assert code == expected, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0], err
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_train_writes_a_complete_run(trained, data, capsys):
    for name in (
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "best.safetensors",
        "metrics.jsonl",
        "loss.png",
    ):
        assert (trained / name).is_file(), name
    cfg = json.loads((trained / "config.json").read_text())
    meta = json.loads((data / "shards" / "meta.json").read_text())
    assert cfg["model"]["vocab_size"] == meta["vocab_size"]  # from the data, not the preset
    assert cfg["model"]["n_layer"] == 1 and cfg["train"]["max_steps"] == 4 and cfg["train"]["batch_size"] == 4
    assert cfg["data"]["tokenizer_sha256"] == meta["tokenizer_sha256"]
    assert (trained / "checkpoints" / "step-00000004" / "manifest.json").is_file()


def test_eval_reports_loss_perplexity_speed_memory(trained, data, capsys):
    capsys.readouterr()
    assert (
        main(
            ["eval", "--model", str(trained), "--data", str(data / "shards"), "--json", "--max-batches", "2"]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    for key in ("val_loss", "perplexity", "tokens_per_s", "peak_rss_mb"):
        assert key in out
    assert out["perplexity"] == pytest.approx(2.718281828 ** out["val_loss"], rel=1e-6)
    assert out["batches"] == 2 and out["tokens"] == 2 * 4 * 32
    assert main(["eval", "--model", str(trained / "best.safetensors"), "--data", str(data / "shards")]) == 0
    text = capsys.readouterr().out
    assert "perplexity" in text and "tokens/s" in text


def test_eval_score_does_not_depend_on_batch_size(trained, data, capsys):
    """Batch sizes 2 and 3 score the same windows (the last batch is smaller), so the same loss."""
    from scratchllm.data.shards import load_shards

    n_windows = (len(load_shards(data / "shards").val) - 1) // 32
    assert n_windows % 2 or n_windows % 3  # a tail that one of the batch sizes cannot fill
    results = []
    for bs in ("2", "3"):
        capsys.readouterr()
        argv = ["eval", "--model", str(trained), "--data", str(data / "shards"), "--batch-size", bs]
        assert main([*argv, "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    a, b = results
    assert a["windows"] == b["windows"] == n_windows
    assert a["tokens"] == b["tokens"] == n_windows * 32
    assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6)
    # --max-windows is a number of windows too: the same prefix of val for both batch sizes
    capped = []
    for bs in ("2", "3"):
        capsys.readouterr()
        argv = ["eval", "--model", str(trained), "--data", str(data / "shards"), "--batch-size", bs]
        assert main([*argv, "--json", "--max-windows", "5"]) == 0
        capped.append(json.loads(capsys.readouterr().out))
    assert capped[0]["tokens"] == capped[1]["tokens"] == 5 * 32
    assert capped[0]["val_loss"] == pytest.approx(capped[1]["val_loss"], abs=1e-6)


def test_resume_extends_a_run(trained, data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    # the same command as the original run, plus --resume and a larger max_steps
    args = [
        "train",
        "--data",
        str(data / "shards"),
        "--out",
        str(run),
        *TINY,
        "--resume",
        "--set",
        "max_steps=6",
    ]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 6 and out["val_loss"] is not None
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 6


def test_bad_input_is_one_line_and_changes_nothing(trained, data, tmp_path, capsys):
    shards = str(data / "shards")
    fresh = str(tmp_path / "fresh")
    capsys.readouterr()
    one_line_error(
        capsys, main(["train", "--data", shards, "--out", fresh, "--preset", "nope"]), "unknown preset"
    )
    one_line_error(
        capsys, main(["train", "--data", shards, "--out", fresh, "--set", "lr_max=1"]), "lr_max", "valid keys"
    )
    one_line_error(capsys, main(["train", "--data", str(tmp_path / "missing"), "--out", fresh]), "not found")
    assert not Path(fresh).exists()

    # truncated shards
    broken = tmp_path / "broken"
    shutil.copytree(data / "shards", broken)
    with open(broken / "train.bin", "r+b") as f:
        f.truncate(100)
    one_line_error(capsys, main(["train", "--data", str(broken), "--out", fresh, *TINY]), "train.bin")

    # an existing run is never overwritten without --resume/--force
    before = (trained / "model.safetensors").read_bytes()
    one_line_error(
        capsys, main(["train", "--data", shards, "--out", str(trained), *TINY]), "--resume", "--force"
    )
    assert (trained / "model.safetensors").read_bytes() == before
    one_line_error(
        capsys, main(["train", "--data", shards, "--out", str(trained), "--resume", "--force"]), "contradict"
    )
    # data from another tokenizer cannot continue this run; eval refuses it too
    one_line_error(
        capsys,
        main(["train", "--data", str(data / "other"), "--out", str(trained), "--resume", "--quiet"]),
        "different tokenizer",
    )
    one_line_error(
        capsys, main(["eval", "--model", str(trained), "--data", str(data / "other")]), "different tokenizer"
    )
    # a model key cannot change on resume
    one_line_error(
        capsys,
        main(["train", "--data", shards, "--out", str(trained), "--resume", "--set", "n_layer=3"]),
        "cannot change",
    )
    # --resume with nothing saved yet (a requeued job's first launch) starts a new run and says so
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--data", shards, "--out", str(empty), "--resume", *TINY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] > 0
    one_line_error(
        capsys, main(["eval", "--model", str(tmp_path / "nomodel"), "--data", shards]), "not found"
    )
    assert (trained / "model.safetensors").read_bytes() == before


def test_diverging_loss_exits_3_and_keeps_the_checkpoint(data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(data / "shards"), "--out", str(run), *TINY]
    # lr=1e30 makes the first AdamW step overflow the weights; every later loss is NaN/inf.
    extra = [
        "--set",
        "max_steps=10",
        "--set",
        "save_interval=1",
        "--set",
        "warmup_steps=0",
        "--set",
        "max_bad_steps=2",
    ]
    code = main([*args, *extra, "--set", "lr=1e30", "--set", "min_lr=1e30", "--set", "grad_clip=0"])
    one_line_error(capsys, code, "not finite", "step", expected=3)
    assert any(p.name.startswith("step-") for p in (run / "checkpoints").iterdir())


def test_demo_runs_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--max-steps", "2", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "scratchllm generate --model" in text and "--- 'The ' ---" in text
    for name in ("config.json", "model.safetensors", "tokenizer.json", "loss.png", "data/meta.json"):
        assert (out / name).is_file(), name
    before = (out / "model.safetensors").read_bytes()
    one_line_error(capsys, main(["demo", "--out", str(out)]), "--force")
    assert (out / "model.safetensors").read_bytes() == before


def test_config_layers_resolve_in_order(data, tmp_path):
    from scratchllm.train.pretrain import setup_pretraining

    toml = tmp_path / "cfg.toml"
    toml.write_text("lr = 5e-4\n[model]\nn_layer = 3\nn_embd = 32\n[train]\nbatch_size = 6\nmax_steps = 7\n")
    setup = setup_pretraining(
        data / "shards", tmp_path / "run", preset="tiny", config_file=toml, overrides=["max_steps=9"], seed=5
    )
    tc, mc = setup.train_config, setup.model_config
    assert (tc.lr, tc.batch_size, tc.max_steps, tc.seed) == (
        5e-4,
        6,
        9,
        5,
    )  # toml over preset, --set over toml
    assert (mc.n_layer, mc.n_embd, mc.n_head) == (3, 32, 2)  # n_head from the preset
    assert tc.warmup_steps == 10  # untouched preset value
    assert mc.vocab_size == json.loads((data / "shards" / "meta.json").read_text())["vocab_size"]


def test_speedrun_preset_trains_with_muon_and_qk_norm_from_the_cli(data, tmp_path):
    """`--preset speedrun` (the recipe of docs/guide/speedrun.md) runs as is, only smaller here."""
    from scratchllm.model.config import PRESETS
    from scratchllm.runs import OPTIMIZER_FILE

    run = tmp_path / "run"
    small = ["--set", "n_layer=1", "--set", "n_embd=16", "--set", "batch_size=4", "--set", "max_steps=3"]
    small += ["--set", "eval_steps=1", "--set", "save_interval=3", "--device", "cpu", "--quiet"]
    code = main(["train", "--data", str(data / "shards"), "--out", str(run), "--preset", "speedrun", *small])
    assert code == 0
    cfg = json.loads((run / "config.json").read_text())
    for key, value in PRESETS["speedrun"]["train"].items():
        if key not in ("max_steps", "batch_size", "eval_steps"):
            assert cfg["train"][key] == value, key
    assert cfg["train"]["optimizer"] == "muon" and cfg["model"]["qk_norm"] is True
    (ckpt,) = (run / "checkpoints").iterdir()
    from safetensors import safe_open

    with safe_open(ckpt / OPTIMIZER_FILE, "pt") as f:
        keys = list(f.keys())
    assert any(k.endswith("momentum_buffer") for k in keys) and any(k.endswith("exp_avg") for k in keys)


def test_bpe_shakespeare_preset_trains_on_bpe_shards_from_the_cli(tmp_path, shared_data):
    """`--preset bpe-shakespeare` runs on BPE shards as the speedrun guide says (smaller here), and its
    evaluation covers the whole val split of tinyshakespeare at 2,048 ids, as the preset's comment
    claims — and the speedrun preset's the whole char val split."""
    from scratchllm.data.shards import load_shards
    from scratchllm.model.config import PRESETS

    text = shared_data / "tinyshakespeare.txt"
    tok, shards = tmp_path / "bpe.json", tmp_path / "bpe"
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--kind",
                "bpe",
                "--vocab-size",
                "2048",
                "--input",
                str(text),
                "--out",
                str(tok),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(["prepare", "--tokenizer", str(tok), "--input", str(text), "--out", str(shards), "--quiet"]) == 0
    )
    preset = PRESETS["bpe-shakespeare"]
    ctx, train = preset["model"]["context_length"], preset["train"]
    val_windows = len(load_shards(shards).val) // ctx
    assert (
        train["eval_steps"] * train["batch_size"]
        >= val_windows
        > (train["eval_steps"] - 1) * train["batch_size"]
    )

    run = tmp_path / "run"
    small = ["--set", "n_layer=1", "--set", "n_embd=16", "--set", "batch_size=4", "--set", "max_steps=4"]
    small += ["--set", "eval_steps=1", "--set", "eval_interval=2", "--device", "cpu", "--quiet"]
    assert (
        main(["train", "--data", str(shards), "--out", str(run), "--preset", "bpe-shakespeare", *small]) == 0
    )
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["vocab_size"] == 2048 and cfg["model"]["qk_norm"] is True
    assert cfg["train"]["optimizer"] == "muon"
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "eval"] == [2, 4]

    char = tmp_path / "char"
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--kind",
                "char",
                "--input",
                str(text),
                "--out",
                str(char.with_suffix(".json")),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "prepare",
                "--tokenizer",
                str(char.with_suffix(".json")),
                "--input",
                str(text),
                "--out",
                str(char),
                "--quiet",
            ]
        )
        == 0
    )
    speedrun = PRESETS["speedrun"]["train"]
    windows = len(load_shards(char).val) // PRESETS["speedrun"]["model"]["context_length"]
    assert speedrun["eval_steps"] * speedrun["batch_size"] >= windows
