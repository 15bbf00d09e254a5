"""prepare() on JSONL / Parquet / compressed inputs, --on-error, and the one discovery rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_readers import write_jsonl, write_parquet

from scratchllm.cli.main import main
from scratchllm.data import load_shards, prepare
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import load_tokenizer
from scratchllm.tokenizer.base import EOT


def all_ids(out: Path) -> list[int]:
    shards = load_shards(out)
    return np.concatenate([shards.train, shards.val]).astype(np.int64).tolist()


def _newlines(s: str) -> str:
    return s.replace("\r\n", "\n").replace("\r", "\n")


@pytest.fixture
def mixed(tmp_path) -> tuple[Path, list[str]]:
    """A directory of every format; returns it and its documents in reading order."""
    d = tmp_path / "mixed"
    (d / "sub").mkdir(parents=True)
    records = [f"Record number {i}.\nIt has two lines." for i in range(300)]
    write_jsonl(d / "a.jsonl.gz", [{"text": t} for t in records[:100]], "gzip")
    write_jsonl(d / "b.jsonl.zst", [{"text": t, "meta": 1} for t in records[100:200]], "zstd")
    write_parquet(d / "c.parquet", records[200:], row_group_size=16)
    (d / "sub" / "d.txt").write_text("A plain text file.\r\nWith CRLF lines.\r\n")
    (d / "image.png").write_bytes(b"\x89PNG\r\n")
    return d, [*records, "A plain text file.\nWith CRLF lines.\n"]


def test_records_of_every_format_are_documents(char_tok, mixed, tmp_path):
    d, docs = mixed
    meta = prepare(char_tok, [d], tmp_path / "out", progress=False, chunk_bytes=200)
    assert all_ids(tmp_path / "out") == char_tok.encode(
        EOT.join(docs), allowed_special="all"
    )  # the prepare invariant
    assert meta["documents"] == len(docs) and meta["unsafe_cuts"] == 0
    assert meta["train_tokens"] > 0 and meta["val_tokens"] > 0
    sources = {Path(s["path"]).name: s for s in meta["sources"]}
    assert sources["a.jsonl.gz"]["documents"] == 100 and sources["c.parquet"]["format"] == "parquet"
    assert [Path(s["path"]).name for s in meta["skipped"]] == ["image.png"]
    assert meta["input_errors"]["count"] == 0


def test_many_small_records_identical_with_a_pool(char_tok, tmp_path):
    texts = [f"Short record {i}.\nSecond line {i * 7}." for i in range(3000)]
    src = write_jsonl(tmp_path / "r.jsonl", [{"text": t} for t in texts])
    a = prepare(char_tok, [src], tmp_path / "a", progress=False, workers=1)
    b = prepare(char_tok, [src], tmp_path / "b", progress=False, workers=2, chunk_bytes=1000)
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a["split_byte"] == b["split_byte"] and a["documents"] == 3000
    assert all_ids(tmp_path / "a") == char_tok.encode(EOT.join(texts), allowed_special="all")


def test_bad_records_fail_before_anything_is_written(char_tok, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"txt": "typo"}\n')
    with pytest.raises(ScratchLLMError, match=r"bad.jsonl:3: no field 'text' \(keys: txt\)"):
        prepare(char_tok, [src], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_on_error_skip_counts_and_reports(char_tok, tmp_path):
    src = tmp_path / "bad.jsonl"
    good = [f"Good record {i}.\nMore." for i in range(20)]
    lines = [json.dumps({"text": t}) for t in good]
    lines.insert(5, "{broken")
    lines.insert(9, json.dumps({"text": None}))
    src.write_text("\n".join(lines) + "\n")
    meta = prepare(char_tok, [src], tmp_path / "out", progress=False, on_error="skip")
    assert all_ids(tmp_path / "out") == char_tok.encode(EOT.join(good), allowed_special="all")
    errors = meta["input_errors"]
    assert errors["count"] == 2 and errors["by_kind"] == {"not_json": 1, "not_string": 1}
    assert [(e["line"], e["kind"]) for e in errors["first"]] == [(6, "not_json"), (10, "not_string")]
    saved = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert saved["input_errors"] == errors


def test_every_record_skipped_is_a_clear_error(char_tok, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"body": "x"}\n')
    with pytest.raises(ScratchLLMError, match="every input record was skipped"):
        prepare(char_tok, [src], tmp_path / "out", progress=False, on_error="skip")


def test_text_field_and_globs_reach_prepare(char_tok, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    write_jsonl(d / "keep.jsonl", [{"body": "Kept text.\nLine two."}, {"body": "And more.\nYes."}])
    write_jsonl(d / "drop.jsonl", [{"body": "Dropped."}])
    meta = prepare(
        char_tok,
        [d],
        tmp_path / "out",
        progress=False,
        text_field="body",
        exclude=["drop*"],
        val_fraction=0.3,
    )
    assert all_ids(tmp_path / "out") == char_tok.encode(
        EOT.join(["Kept text.\nLine two.", "And more.\nYes."]), allowed_special="all"
    )
    assert meta["text_field"] == "body"


def test_tokenizer_train_and_prepare_read_the_same_files(mixed, tmp_path, capsys):
    """Issue 13.11: one file rule for `tokenizer train --input DIR` and `prepare --input DIR`."""
    d, docs = mixed
    (d / "sub" / "z.md").write_text("Markdown ☃ is read by both.\n")  # the snowman appears only here
    (d / "notes.py").write_text("print('Ω')")  # another format: skipped by both
    tok = tmp_path / "char.json"
    assert (
        main(["tokenizer", "train", "--kind", "char", "--input", str(d), "--out", str(tok), "--quiet"]) == 0
    )
    vocab = {load_tokenizer(tok).token_text(i) for i in range(load_tokenizer(tok).vocab_size)}
    assert "☃" in vocab and "Ω" not in vocab
    assert set("".join(docs)) - {"\r"} <= vocab
    capsys.readouterr()
    assert (
        main(["prepare", "--tokenizer", str(tok), "--input", str(d), "--out", str(tmp_path / "o"), "--json"])
        == 0
    )
    meta = json.loads(capsys.readouterr().out)
    names = [Path(s["path"]).name for s in meta["sources"]]
    assert names == ["a.jsonl.gz", "b.jsonl.zst", "c.parquet", "d.txt", "z.md"]
    assert sorted(Path(s["path"]).name for s in meta["skipped"]) == ["image.png", "notes.py"]


def test_prepare_cli_input_options(char_tok_file, tmp_path, capsys):
    src = tmp_path / "x.jsonl"
    src.write_text('{"t": "One record.\\nTwo lines."}\n{"t": "Another one.\\nHere."}\nnot json\n')
    out = tmp_path / "out"
    args = ["prepare", "--tokenizer", str(char_tok_file), "--input", str(src), "--out", str(out)]
    assert main([*args, "--text-field", "t"]) == 2
    assert "x.jsonl:3: not JSON" in capsys.readouterr().err
    assert main([*args, "--text-field", "t", "--on-error", "skip", "--val-fraction", "0.4"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 bad input record(s)" in printed and "x.jsonl:3" in printed
    assert main([*args, "--near-threshold", "0.9", "--force"]) == 2
    assert "--near-threshold is an option of the clean stage; add --clean" in capsys.readouterr().err
