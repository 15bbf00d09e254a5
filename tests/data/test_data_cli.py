"""`scratchllm prepare`: summary, --json, and one clear line + exit 2 for every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scratchllm.cli.main import main
from scratchllm.tokenizer import CharTokenizer


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["prepare", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_summary_and_json(char_tok_file, shared_data, tmp_path, capsys):
    code, out, _ = run_cli(
        capsys,
        "--tokenizer",
        char_tok_file,
        "--input",
        shared_data / "the-verdict.txt",
        "--out",
        tmp_path / "a",
    )
    assert code == 0
    assert "train.bin" in out and "val.bin" in out and "uint16" in out and str(tmp_path / "a") in out
    code, out, _ = run_cli(
        capsys, "--tokenizer", char_tok_file, "--out", tmp_path / "b", "--json", "--workers", "1"
    )
    assert code == 0
    result = json.loads(out)
    assert result["documents"] > 50 and result["val_tokens"] > 0 and result["out_dir"] == str(tmp_path / "b")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "in"
    d.mkdir()
    (d / "empty.txt").write_bytes(b"")
    (d / "nul.bin").write_bytes(b"text\x00more")
    (d / "latin1.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    (d / "oneline.txt").write_text("just one line, no break\n")
    (d / "ok.txt").write_text("Some text.\nMore text.\nEven more.\nThe end.\n")
    (d / "unknown.txt").write_text("Text with a snowman \u2603.\nAnd more.\n")
    (d / "emptydir").mkdir()
    (d / "bad-tok.json").write_text("{not json")
    (d / "wrong-kind.json").write_text('{"kind": "nope", "version": 1}')
    return {p.name: p for p in d.iterdir()}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (["--input", "@missing"], "input not found"),
        (["--input", "@empty.txt"], "is empty"),
        (["--input", "@emptydir"], "contains no non-empty input files"),
        (["--input", "@nul.bin"], "NUL byte at byte offset 4"),
        (["--input", "@latin1.txt"], "invalid UTF-8 byte 0xe9 at byte offset 3"),
        (["--input", "@unknown.txt"], "U+2603"),
        (["--input", "@oneline.txt"], "validation split got only 0 tokens"),
        (["--input", "@ok.txt", "--val-fraction", "1.5"], "between 0 and 1"),
        (["--input", "@ok.txt", "--workers", "-1"], "--workers"),
        (["--input", "@ok.txt", "--tokenizer", "@missing"], "tokenizer not found"),
        (["--input", "@ok.txt", "--tokenizer", "@bad-tok.json"], "not a tokenizer JSON file"),
        (["--input", "@ok.txt", "--tokenizer", "@wrong-kind.json"], "not a scratchllm tokenizer"),
    ],
)
def test_bad_input_is_one_line_exit_2(case, message, files, char_tok_file, tmp_path, capsys):
    names = {**{k: str(v) for k, v in files.items()}, "missing": str(tmp_path / "nope.txt")}
    args = [names[a[1:]] if a.startswith("@") else a for a in case]
    if "--tokenizer" not in args:
        args = ["--tokenizer", str(char_tok_file), *args]
    out_dir = tmp_path / "out"
    code, _, err = run_cli(capsys, *args, "--out", out_dir)
    assert code == 2
    assert err.startswith("scratchllm prepare: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_populated_output_needs_force(char_tok_file, files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, _, err = run_cli(capsys, "--tokenizer", char_tok_file, "--input", files["ok.txt"], "--out", out)
    assert code == 2 and "--force" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    code, _, _ = run_cli(
        capsys,
        "--tokenizer",
        char_tok_file,
        "--input",
        files["ok.txt"],
        "--out",
        out,
        "--force",
        "--val-fraction",
        "0.3",
    )
    assert code == 0 and (out / "precious.txt").read_text() == "keep me" and (out / "meta.json").is_file()


def test_tokenizer_without_eot_cannot_join_documents(files, tmp_path, capsys):
    tok = CharTokenizer.train(
        "Some text.\nMore text.\nEven more.\nThe end.\nJust one line, no break", special_tokens=()
    )
    tok.save(tmp_path / "noeot.json")
    code, _, err = run_cli(
        capsys, "--tokenizer", tmp_path / "noeot.json", "--input", files["ok.txt"], files["oneline.txt"],
        "--out", tmp_path / "out",
    )  # fmt: skip
    assert code == 2 and "<|endoftext|>" in err
