"""``scratchllm explain``: listing, JSON, errors, pictures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scratchllm.cli.main import main
from scratchllm.explain.registry import TOPICS


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["explain", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_names_every_topic_with_one_line(capsys) -> None:
    rc, out, _ = run_cli(capsys, "--list")
    assert rc == 0
    lines = [ln for ln in out.splitlines() if ln and not ln.startswith("run ")]
    assert [ln.split()[0] for ln in lines] == list(TOPICS)
    assert all(len(ln.split(None, 1)[1]) > 20 for ln in lines)  # a real summary each


def test_list_json(capsys) -> None:
    rc, out, _ = run_cli(capsys, "--list", "--json")
    data = json.loads(out)
    assert rc == 0 and [t["name"] for t in data] == list(TOPICS)
    by_name = {t["name"]: t for t in data}
    assert by_name["bpe"]["model"] is None and "seq2seq" in by_name["cross-attention"]["model"]


def test_issue_topics_are_all_there() -> None:
    wanted = {
        "tokenization",
        "bpe",
        "embeddings",
        "positions",
        "dataloader",
        "attention",
        "layernorm",
        "activations",
        "residual",
        "prenorm",
        "weight-tying",
        "gpt",
        "loss",
        "optimizer",
        "decoding",
        "kv-cache",
        "lora",
        "moe",
        "bert-masking",
        "cross-attention",
        "scaling",
    }
    assert wanted <= set(TOPICS)


def test_list_does_not_import_torch() -> None:
    code = (
        "import sys; from scratchllm.cli.main import main; main(['explain', '--list']); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_json_output_is_the_explanation(capsys) -> None:
    rc, out, _ = run_cli(capsys, "bpe", "--json", "--text", "low lower lowest newer newest wider widest")
    data = json.loads(out)
    assert rc == 0 and data["topic"] == "bpe" and data["all_checks_hold"] is True
    titles = [s["title"] for s in data["steps"]]
    assert "Count adjacent pairs" in titles
    merges = next(s for s in data["steps"] if s["title"].startswith("The first"))["values"]["merges"]
    assert merges[0]["pair count"] >= merges[-1]["pair count"] and merges[0]["id"] == 256
    assert all({"name", "ok"} <= set(c) for s in data["steps"] for c in s["checks"])


def test_text_output_has_steps_values_and_checks(capsys) -> None:
    rc, out, _ = run_cli(capsys, "positions")
    assert rc == 0
    assert out.startswith("== positions:")
    assert "1. Attention alone is blind to order" in out
    assert "check  same offset -> same score: True" in out
    assert "add --out DIR" in out  # the picture it would draw


def test_unknown_topic_is_a_one_line_error_listing_topics(capsys) -> None:
    rc, out, err = run_cli(capsys, "attentoin")
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "unknown topic 'attentoin'" in err and all(name in err for name in TOPICS)


def test_no_topic_is_an_error(capsys) -> None:
    rc, _, err = run_cli(capsys)
    assert rc == 2 and "name a topic" in err


def test_topic_that_does_not_apply_to_the_model(capsys, runs) -> None:
    rc, out, err = run_cli(capsys, "cross-attention", "--model", str(runs["gpt"]))
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "needs an encoder-decoder model" in err and "is a gpt model" in err
    rc, _, err = run_cli(capsys, "moe", "--model", str(runs["gpt"]))
    assert rc == 2 and "Mixture-of-Experts" in err
    rc, _, err = run_cli(capsys, "decoding", "--model", str(runs["bert"]))
    assert rc == 2 and "needs a GPT language model" in err and "is a bert model" in err


def test_model_for_a_topic_without_one(capsys, runs) -> None:
    rc, _, err = run_cli(capsys, "residual", "--model", str(runs["gpt"]))
    assert rc == 2 and "does not use a model" in err


def test_missing_model_and_bad_flags(capsys, tmp_path) -> None:
    rc, _, err = run_cli(capsys, "loss", "--model", str(tmp_path / "nope"))
    assert rc == 2 and "model not found" in err
    rc, _, err = run_cli(capsys, "bpe", "--preset", "gpt2")
    assert rc == 2 and "--preset applies to the topics" in err
    rc, _, err = run_cli(capsys, "gpt", "--preset", "gpt5")
    assert rc == 2 and "unknown preset" in err
    rc, _, err = run_cli(capsys, "gpt", "--tokenizer", str(tmp_path))
    assert rc == 2 and "--tokenizer applies to the tokenization topic" in err


def test_out_writes_pictures_and_never_overwrites(capsys, tmp_path) -> None:
    rc, out, _ = run_cli(capsys, "activations", "--out", str(tmp_path))
    png = tmp_path / "activations.png"
    assert rc == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {png}" in out
    before = png.stat().st_mtime_ns
    rc, _, err = run_cli(capsys, "activations", "--out", str(tmp_path))
    assert rc == 2 and "already exists" in err and png.stat().st_mtime_ns == before
    rc, _, _ = run_cli(capsys, "activations", "--out", str(tmp_path), "--force")
    assert rc == 0


def test_out_that_is_a_file(capsys, tmp_path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    rc, _, err = run_cli(capsys, "activations", "--out", str(f))
    assert rc == 2 and "is not a directory" in err


@pytest.mark.parametrize("topic", ["dataloader", "layernorm", "tokenization"])
def test_topics_run_on_a_users_model(capsys, runs, topic) -> None:
    rc, out, _ = run_cli(capsys, topic, "--model", str(runs["gpt"]), "--json")
    data = json.loads(out)
    assert rc == 0 and data["all_checks_hold"] and str(runs["gpt"]) in data["source"]


def test_every_topic_has_an_explainer_function() -> None:
    for topic in TOPICS.values():
        assert callable(topic.function()), topic.name


def test_an_occupied_out_is_refused_before_anything_is_written(capsys, tmp_path) -> None:
    (tmp_path / "residual-13-layers.png").write_bytes(b"mine")
    rc, out, err = run_cli(capsys, "residual", "--out", str(tmp_path))
    assert rc == 2 and out == "" and "residual-13-layers.png already exists" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["residual-13-layers.png"]  # nothing new
    assert (tmp_path / "residual-13-layers.png").read_bytes() == b"mine"
