"""prepare(): token shards equal the tokenizer's encoding of the text, streamed and split atomically."""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st
from hypothesis_profiles import examples

from scratchllm.data import default_corpus_documents, load_shards, prepare, token_dtype, tokenizer_fingerprint
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.base import EOT, Tokenizer

prep = importlib.import_module("scratchllm.data.prepare")  # the module (the package exports the function)


def all_tokens(out: Path) -> np.ndarray:
    shards = load_shards(out)
    return np.concatenate([shards.train, shards.val]).astype(np.int64)


def test_import_is_light():
    code = "import sys, scratchllm.data; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_corpus_documents_separated_by_eot(char_tok, tmp_path):
    meta = prepare(char_tok, None, tmp_path / "out", progress=False)
    docs = default_corpus_documents()
    ids = all_tokens(tmp_path / "out")
    assert ids.tolist() == char_tok.encode(EOT.join(docs), allowed_special="all")
    assert int((ids == char_tok.eot_id).sum()) == len(docs) - 1
    assert meta["documents"] == len(docs) and meta["sources"][0]["documents"] == len(docs)
    assert meta["train_tokens"] + meta["val_tokens"] == len(ids)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == char_tok.vocab_size


def test_tinyshakespeare_matches_whole_file_encoding(char_tok, shared_data, tmp_path):
    src = shared_data / "tinyshakespeare.txt"
    meta = prepare(char_tok, [src], tmp_path / "out", progress=False)
    ids = char_tok.encode(src.read_text(encoding="utf-8"))
    assert all_tokens(tmp_path / "out").tolist() == ids
    # nanoGPT-style split: the last ~10 % is validation, cut at a line break.
    assert meta["train_tokens"] + meta["val_tokens"] == len(ids)
    assert 0.09 < meta["val_tokens"] / len(ids) < 0.11
    shards = load_shards(tmp_path / "out")
    assert char_tok.decode(shards.train[-2:].tolist())[-1] == "\n"
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    assert meta["tokenizer_sha256"] == tokenizer_fingerprint(char_tok)


def test_small_chunks_and_pool_give_identical_shards(char_tok, shared_data, tmp_path):
    text = (shared_data / "tinyshakespeare.txt").read_bytes()[:60_000]
    src = tmp_path / "shake.txt"
    src.write_bytes(text)
    a = prepare(char_tok, [src], tmp_path / "a", progress=False, workers=1)
    b = prepare(char_tok, [src], tmp_path / "b", progress=False, workers=2, chunk_bytes=97)
    assert b["unsafe_cuts"] == 0
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a["train_tokens"] == b["train_tokens"]


def test_directory_input_sorted_recursive_text_only(char_tok, tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("second doc\n")
    (d / "a.txt").write_text("first doc\n")
    (d / "sub" / "c.md").write_text("third doc\nwith two lines\n")
    (d / "z.txt").write_text("last doc\n")  # sorted by path: sub/c.md comes before z.txt
    (d / "image.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (d / "empty.txt").write_text("")
    (d / ".hidden").write_text("not read")
    meta = prepare(char_tok, [d], tmp_path / "out", progress=False, val_fraction=0.3)
    expected = EOT.join(["first doc\n", "second doc\n", "third doc\nwith two lines\n", "last doc\n"])
    assert all_tokens(tmp_path / "out").tolist() == char_tok.encode(expected, allowed_special="all")
    assert [Path(s["path"]).name for s in meta["sources"]] == ["a.txt", "b.txt", "c.md", "z.txt"]
    assert sorted(Path(s["path"]).name for s in meta["skipped"]) == ["empty.txt", "image.bin"]


def test_universal_newlines_and_bom_like_read_text(char_tok, tmp_path):
    src = tmp_path / "crlf.txt"
    src.write_bytes(b"\xef\xbb\xbf" + b"Line one.\r\nLine two.\rLine three.\r\nEnd\r\n" * 40)
    prepare(char_tok, [src], tmp_path / "out", progress=False, chunk_bytes=50)
    assert all_tokens(tmp_path / "out").tolist() == char_tok.encode(src.read_text(encoding="utf-8-sig"))


def test_bpe_shards_equal_whole_text_encoding(gpt2_files, shared_data, tmp_path):
    gpt2 = pytest.importorskip("scratchllm.tokenizer.gpt2")
    tok = gpt2.load_gpt2_dir(gpt2_files)
    shake = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:40_000]
    (tmp_path / "shake.txt").write_text(shake, encoding="utf-8")
    verdict = shared_data / "the-verdict.txt"
    meta = prepare(tok, [tmp_path / "shake.txt", verdict], tmp_path / "out", progress=False, chunk_bytes=300)
    assert meta["unsafe_cuts"] == 0 and meta["dtype"] == "uint16"
    expected = tok.encode(shake + EOT + verdict.read_text(encoding="utf-8"), allowed_special="all")
    assert all_tokens(tmp_path / "out").tolist() == expected
    assert tok.eot_id == 50256 and expected.count(50256) == 1


class BigVocabTokenizer(Tokenizer):
    """A stand-in with 70,000 ids, so ids above 65,535 must survive (uint32 shards)."""

    kind = "test-big"
    special_tokens = {EOT: 69_999}

    @property
    def vocab_size(self) -> int:
        return 70_000

    def encode_ordinary(self, text: str) -> list[int]:
        return [66_000 + ord(c) % 1000 for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i - 66_000) for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"special_tokens": self.special_tokens}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tokenizer:
        return cls()


def test_dtype_follows_vocab_size(tmp_path):
    assert token_dtype(65_535) == "uint16" and token_dtype(65_536) == "uint32"
    src = tmp_path / "t.txt"
    src.write_text("hello there\nsecond line\nthird line\n")
    meta = prepare(BigVocabTokenizer(), [src], tmp_path / "out", progress=False, val_fraction=0.3)
    assert meta["dtype"] == "uint32"
    shards = load_shards(tmp_path / "out")
    assert shards.train.dtype == np.uint32 and int(shards.train.max()) >= 66_000
    assert all_tokens(tmp_path / "out").tolist() == BigVocabTokenizer().encode(src.read_text())


def test_output_is_deterministic(char_tok, shared_data, tmp_path):
    src = shared_data / "the-verdict.txt"
    a = prepare(char_tok, [src], tmp_path / "a", progress=False)
    b = prepare(char_tok, [src], tmp_path / "b", progress=False)
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    strip = ("out_dir", "seconds")
    assert {k: v for k, v in a.items() if k not in strip} == {k: v for k, v in b.items() if k not in strip}


def test_error_midway_leaves_existing_output_untouched(char_tok, tmp_path):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("A line of text.\nAnother line.\n" * 50)
    # Valid for the first 8 KiB sniff, invalid UTF-8 much later: the error happens while streaming.
    bad.write_bytes(b"Plain text.\nMore text.\n" * 2000 + b"\xff oops\n")
    out = tmp_path / "out"
    prepare(char_tok, [good], out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(
        ScratchLLMError, match=r"bad.txt:4001: not valid UTF-8: byte 0xff at byte offset 46000"
    ):
        prepare(char_tok, [bad], out, progress=False, force=True, chunk_bytes=1000)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files left either


def test_force_replaces_output(char_tok, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("aaaa\nbbbb\ncccc\ndddd\n")
    b.write_text("different text\nwith more lines\nthan before\nsee\n")
    out = tmp_path / "out"
    prepare(char_tok, [a], out, progress=False, val_fraction=0.3)
    with pytest.raises(ScratchLLMError, match="already contains files"):
        prepare(char_tok, [b], out, progress=False)
    prepare(char_tok, [b], out, progress=False, val_fraction=0.3, force=True)
    assert all_tokens(out).tolist() == char_tok.encode(b.read_text())
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]


# ----------------------------------------------------------------------------- the chunk-cut rule

GPT2_2019 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_CL100K = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _patterns() -> list[str]:
    pats = [GPT2_2019, GPT4_CL100K]
    try:
        from scratchllm.tokenizer.bpe import PATTERNS

        pats += list(PATTERNS.values())
    except ImportError:  # pragma: no cover - the BPE module lands separately
        pass
    return pats


def _cut_positions(data: bytes) -> list[int]:
    return [m.end() for pat in (prep._NEWLINE_CUT, prep._SPACE_CUT) for m in pat.finditer(data)]


def _newlines(s: str) -> str:
    return s.replace("\r\n", "\n").replace("\r", "\n")


ALPHABET = ["a", "Z", "7", ".", "'", "s", " ", "  ", "\n", "\r\n", "\r", "\t", "é", "—", "漢", "\u00a0", "!?"]


@examples(300)
@given(st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=40))
def test_every_safe_cut_preserves_gpt2_and_gpt4_pretokens(parts):
    """Pre-tokenising the two sides of a safe cut separately gives the whole text's pre-tokens."""
    text = "".join(parts)
    data = text.encode("utf-8")
    for pattern in map(regex.compile, _patterns()):
        whole = pattern.findall(_newlines(text))
        for cut in _cut_positions(data):
            left, right = data[:cut].decode(), data[cut:].decode()
            assert pattern.findall(_newlines(left)) + pattern.findall(_newlines(right)) == whole, (text, cut)


@examples(200)
@given(
    st.lists(st.sampled_from(ALPHABET + ["Word.\n", "word "]), min_size=1, max_size=80), st.integers(16, 40)
)
def test_document_pieces_reassemble_and_split_once(parts, chunk):
    data = "".join(parts).encode("utf-8")
    split_at = len(data) // 2 + 1
    cuts = prep._Cuts()
    pieces = list(prep._document_pieces(io.BytesIO(data), chunk_bytes=chunk, split_at=split_at, cuts=cuts))
    assert b"".join(p for _, p, _ in pieces) == data
    flags = [after for _, _, after in pieces]
    assert flags == sorted(flags)  # train pieces, then val pieces, never interleaved
    offsets = [off for off, _, _ in pieces]
    assert offsets == [sum(len(p) for _, p, _ in pieces[:i]) for i in range(len(pieces))]
    if cuts.unsafe == 0:  # val starts exactly at the first safe cut at or after the requested split
        safe = [c for c in _cut_positions(data) if c >= split_at]
        assert (offsets[flags.index(True)] if any(flags) else None) == (min(safe) if safe else None)
    for _, p, _ in pieces:
        p.decode("utf-8")  # never cut inside a character


def test_long_line_falls_back_to_character_cuts(char_tok, tmp_path):
    src = tmp_path / "one-line.txt"
    src.write_text("—" * 3000 + "\nend\nmore\n", encoding="utf-8")
    meta = prepare(char_tok, [src], tmp_path / "out", progress=False, chunk_bytes=100, val_fraction=0.01)
    assert meta["unsafe_cuts"] > 0  # counted, and a char tokenizer is still exact
    assert all_tokens(tmp_path / "out").tolist() == char_tok.encode(src.read_text(encoding="utf-8"))


def test_meta_json_describes_shards(char_tok, tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("one line\ntwo line\nred line\nblue line\n")
    prepare(char_tok, [src], tmp_path / "out", progress=False, val_fraction=0.25)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    for key in (
        "format_version",
        "dtype",
        "train_tokens",
        "val_tokens",
        "vocab_size",
        "tokenizer_sha256",
        "val_fraction",
        "sources",
        "documents",
    ):
        assert key in meta
    assert meta["sources"] == [{"path": str(src), "bytes": os.path.getsize(src)}]


def test_split_inside_an_unsplittable_document_moves_to_the_next(char_tok, tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.txt").write_text("x" * 50 + "\n")  # no safe cut inside
    (d / "b.txt").write_text("Hello.\nWorld.\n")
    prepare(char_tok, [d], tmp_path / "out", progress=False, val_fraction=0.5)  # split byte 32: inside a.txt
    shards = load_shards(tmp_path / "out")
    assert shards.train.tolist() == char_tok.encode("x" * 50 + "\n") + [char_tok.eot_id]
    assert shards.val.tolist() == char_tok.encode("Hello.\nWorld.\n")


@examples(40)
@given(
    st.lists(
        st.lists(st.sampled_from(ALPHABET[:12] + ["Word.\n", "word "]), min_size=1, max_size=30),
        min_size=1,
        max_size=4,
    ),
    st.floats(0.05, 0.95),
    st.integers(16, 48),
)
def test_any_corpus_any_split_reassembles(char_tok, docs, val_fraction, chunk):
    """train ++ val == encode(doc1 <eot> doc2 ...), whatever the documents, split and chunk size."""
    import tempfile

    texts = ["".join(parts) for parts in docs]
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, text in enumerate(texts):
            files.append(Path(tmp) / f"doc{i}.txt")
            files[-1].write_bytes(text.encode("utf-8"))
        try:
            meta = prepare(
                char_tok,
                files,
                Path(tmp) / "out",
                val_fraction=val_fraction,
                chunk_bytes=chunk,
                progress=False,
            )
        except ScratchLLMError as err:
            assert "split got only" in str(err)
            return
        expected = char_tok.encode(EOT.join(_newlines(t) for t in texts), allowed_special="all")
        assert all_tokens(Path(tmp) / "out").tolist() == expected
        assert meta["train_tokens"] + meta["val_tokens"] == len(expected)


def test_force_rerun_cleans_temp_files_of_a_killed_run(char_tok, tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("one line\ntwo line\nred line\nblue line\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".tmp-train.bin.x1y2z3").write_bytes(b"half a file")  # what SIGKILL mid-write leaves
    prepare(char_tok, [src], out, progress=False, val_fraction=0.25, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]


# ----------------------------------------------------------------------------- literal special strings
LITERAL_DOCS = [
    "A story that quotes a separator: <|endoftext|> and goes on.\nMore text here.\n" * 3,
    "Another document.\nIt ends here.\n" * 3,
]


def _literal_setup(tmp_path: Path):
    from scratchllm.tokenizer import CharTokenizer

    tok = CharTokenizer.train("".join(LITERAL_DOCS))
    files = []
    for k, doc in enumerate(LITERAL_DOCS):
        files.append(tmp_path / f"{k}.txt")
        files[-1].write_text(doc, encoding="utf-8")
    return tok, files


@pytest.mark.parametrize("workers", [1, 2])
def test_literal_special_strings_are_text_and_counted(tmp_path, workers):
    tok, files = _literal_setup(tmp_path)
    meta = prepare(tok, files, tmp_path / "out", progress=False, val_fraction=0.3, workers=workers)
    ids = all_tokens(tmp_path / "out").tolist()
    assert ids == tok.encode(LITERAL_DOCS[0]) + [tok.eot_id] + tok.encode(LITERAL_DOCS[1])
    assert ids.count(tok.eot_id) == 1, "the document boundary is the real id, and the only one"
    assert meta["literal_specials"] == {"count": 3, "by_token": {EOT: 3}, "read_as": "ordinary text"}
    on_disk = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert on_disk["literal_specials"] == meta["literal_specials"]

    again = prepare(
        tok, files, tmp_path / "old", progress=False, val_fraction=0.3, workers=workers, allow_special=True
    )
    ids = all_tokens(tmp_path / "old").tolist()
    assert ids.count(tok.eot_id) == 4, "--allow-special: the old reading, 3 literal + 1 boundary"
    assert ids == tok.encode(EOT.join(LITERAL_DOCS), allowed_special="all")
    assert again["literal_specials"] == {"count": 3, "by_token": {EOT: 3}, "read_as": "special tokens"}


def test_prepare_cli_reports_literal_specials(tmp_path, capsys):
    from scratchllm.cli.main import main

    tok, files = _literal_setup(tmp_path)
    tok.save(tmp_path / "tok.json")
    base = ["prepare", "--tokenizer", str(tmp_path / "tok.json"), "--input", *map(str, files), "--quiet"]
    assert main([*base, "--out", str(tmp_path / "a"), "--val-fraction", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "spells out special tokens 3 time(s) (<|endoftext|> x3): read as ordinary text" in out
    assert (
        main([*base, "--out", str(tmp_path / "b"), "--val-fraction", "0.3", "--allow-special", "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["literal_specials"]["read_as"] == "special tokens"
    assert all_tokens(tmp_path / "b").tolist().count(tok.eot_id) == 4
