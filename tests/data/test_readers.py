"""Corpus readers: every format and compression, the one file-discovery rule, and bad input."""

from __future__ import annotations

import bz2
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from scratchllm.data.readers import (
    DEFAULT_INCLUDE,
    Inputs,
    detect_format,
    discover,
    read_documents,
)
from scratchllm.errors import ScratchLLMError

DOCS = ["First document.\nWith two lines.", "Second — with unicode: é, 漢字, 🤖.", "Third\r\nwith CRLF."]


def _compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data)
    if compression == "bz2":
        return bz2.compress(data)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    return data


SUFFIX = {"none": "", "gzip": ".gz", "bz2": ".bz2", "zstd": ".zst"}


def write_jsonl(path: Path, records: list, compression: str = "none") -> Path:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    path.write_bytes(_compress(data, compression))
    return path


def write_parquet(path: Path, texts: list, *, field: str = "text", row_group_size: int = 2) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({field: texts, "id": list(range(len(texts)))}), path, row_group_size=row_group_size
    )
    return path


def docs_of(paths, **kwargs) -> list:
    inputs = Inputs(paths, **kwargs)
    inputs.scan()
    return list(inputs.documents())


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.txt", ("text", None)),
        ("a.MD", ("text", None)),
        ("notes.rst.gz", ("text", "gzip")),
        ("x.jsonl.zst", ("jsonl", "zstd")),
        ("x.json.zstd", ("jsonl", "zstd")),
        ("x.ndjson.bz2", ("jsonl", "bz2")),
        ("part-0.parquet", ("parquet", None)),
        ("image.png", (None, None)),
        ("archive.tar.gz", (None, "gzip")),
    ],
)
def test_detect_format(name, expected):
    assert detect_format(name) == expected


@pytest.mark.parametrize("compression", ["none", "gzip", "bz2", "zstd"])
def test_jsonl_in_every_compression(tmp_path, compression):
    records = [{"text": t, "n": i} for i, t in enumerate(DOCS)]
    path = write_jsonl(tmp_path / f"d.jsonl{SUFFIX[compression]}", records, compression)
    docs = docs_of([path])
    assert [d.text for d in docs] == DOCS  # records are taken as they are (prepare reads \r\n as \n)
    assert [d.line for d in docs] == [1, 2, 3] and docs[0].where == f"{path}:1"


@pytest.mark.parametrize("compression", ["none", "gzip", "bz2", "zstd"])
def test_text_file_in_every_compression(tmp_path, compression):
    raw = "\ufeffLine one.\r\nLine two.\rLine three.\n".encode()
    path = tmp_path / f"t.txt{SUFFIX[compression]}"
    path.write_bytes(_compress(raw, compression))
    (doc,) = docs_of([path])
    assert doc.text == "Line one.\nLine two.\nLine three.\n"  # like Path.read_text: BOM dropped, newlines
    assert doc.line is None


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_parquet_rows_stream_in_order(tmp_path, compression):
    texts = [f"row {i} text" for i in range(2500)]  # more rows than one read batch, many row groups
    plain = write_parquet(tmp_path / "p.parquet", texts, row_group_size=300)
    path = plain
    if compression != "none":
        path = tmp_path / f"p.parquet{SUFFIX[compression]}"
        path.write_bytes(_compress(plain.read_bytes(), compression))
        plain.unlink()
    docs = docs_of([path])
    assert [d.text for d in docs] == texts and docs[-1].line == 2500


def test_text_field_names_the_field_or_column(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"content": "top", "meta": {"body": "nested"}}])
    write_parquet(tmp_path / "b.parquet", ["from parquet"], field="body")
    assert [d.text for d in docs_of([tmp_path / "a.jsonl"], text_field="content")] == ["top"]
    assert [d.text for d in docs_of([tmp_path / "a.jsonl"], text_field="meta.body")] == ["nested"]
    assert [d.text for d in docs_of([tmp_path / "b.parquet"], text_field="body")] == ["from parquet"]


def test_blank_lines_and_a_bom_in_jsonl_are_fine(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "one"}\n\n   \n{"text": "two"}')  # no final newline either
    docs = docs_of([path])
    assert [(d.text, d.line) for d in docs] == [("one", 1), ("two", 4)]


# ----------------------------------------------------------------------------- discovery


@pytest.fixture
def tree(tmp_path) -> Path:
    d = tmp_path / "corpus"
    (d / "en" / "deep").mkdir(parents=True)
    (d / "de").mkdir()
    (d / ".git").mkdir()
    (d / "b.txt").write_text("b")
    (d / "a.md").write_text("a")
    write_jsonl(d / "en" / "c.jsonl.gz", [{"text": "c1"}, {"text": "c2"}], "gzip")
    write_parquet(d / "en" / "deep" / "d.parquet", ["d1"])
    (d / "de" / "e.txt").write_text("e")
    (d / "notes.py").write_text("print('code')")
    (d / "empty.txt").write_text("")
    (d / "blob.txt").write_bytes(b"\x00\x01binary")
    (d / ".hidden.txt").write_text("hidden")
    (d / ".git" / "x.txt").write_text("git")
    return d


def test_directory_walk_is_sorted_recursive_and_explains_skips(tree):
    found = discover([tree])
    assert [f.path.relative_to(tree).as_posix() for f in found.files] == [
        "a.md", "b.txt", "de/e.txt", "en/c.jsonl.gz", "en/deep/d.parquet",
    ]  # fmt: skip
    reasons = {Path(s["path"]).name: s["reason"] for s in found.skipped}
    assert set(reasons) == {"notes.py", "empty.txt", "blob.txt"}  # hidden files are not even listed
    assert "not a known input format" in reasons["notes.py"] and reasons["empty.txt"] == "empty"
    assert "NUL byte" in reasons["blob.txt"]
    assert [d.text for d in docs_of([tree])] == ["a", "b", "e", "c1", "c2", "d1"]


def test_include_and_exclude_globs(tree):
    def names(**kw):
        return [f.path.relative_to(tree).as_posix() for f in discover([tree], **kw).files]

    assert names(include=["*.txt"]) == ["b.txt", "de/e.txt"]  # a glob without / matches the name
    assert names(include=["en/*"]) == ["en/c.jsonl.gz", "en/deep/d.parquet"]  # with /: the path
    assert names(exclude=["de/*", "*.parquet"]) == ["a.md", "b.txt", "en/c.jsonl.gz"]
    assert names(include=["*.py"]) == ["notes.py"]  # read as plain text when asked for
    assert "*.jsonl.zst" in DEFAULT_INCLUDE and "*.parquet" in DEFAULT_INCLUDE


def test_named_files_are_always_read_and_duplicates_once(tree):
    found = discover([tree / "notes.py", tree / "b.txt", tree, tree / "b.txt"])
    names = [f.path.name for f in found.files]
    assert names[:2] == ["notes.py", "b.txt"] and names.count("b.txt") == 1


def test_our_own_output_directory_is_never_read(tree):
    out = tree / "en"
    assert all(out not in f.path.parents for f in discover([tree], ignore_dirs=[out]).files)


def test_a_clean_output_directory_reads_as_its_shards(tmp_path):
    d = tmp_path / "clean"
    d.mkdir()
    write_jsonl(d / "part-00001.jsonl", [{"text": "second shard"}])
    write_jsonl(d / "part-00000.jsonl", [{"text": "first shard"}])
    report = {
        "kind": "scratchllm-clean",
        "shards": [{"path": "part-00000.jsonl"}, {"path": "part-00001.jsonl"}],
    }
    (d / "report.json").write_text(json.dumps(report, indent=2))  # not JSON lines: never read as data
    assert [doc.text for doc in docs_of([d])] == ["first shard", "second shard"]
    (d / "part-00001.jsonl").unlink()
    with pytest.raises(ScratchLLMError, match="shard part-00001.jsonl is missing"):
        discover([d])


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.jsonl", "input not found"),
        (lambda d: _touch(d / "e.jsonl"), "is empty"),
        (lambda d: d / "emptydir", "contains no non-empty input files"),
    ],
)
def test_discovery_errors(tmp_path, make, message):
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "emptydir" / "skip.bin").write_bytes(b"\x00")
    with pytest.raises(ScratchLLMError, match=message):
        discover([make(tmp_path)])


# ----------------------------------------------------------------------------- bad input


BAD_LINES = [
    (b'{"text": "good one"}', None),
    (b"not json at all", "not_json"),
    (b'{"body": "no text field"}', "missing_field"),
    (b'{"text": 42}', "not_string"),
    (b'["an", "array"]', "not_object"),
    (b'{"text": "lone \\ud800 surrogate"}', "invalid_unicode"),
    (b'{"text": "caf\xe9"}', "not_utf8"),
    (b'{"text": "good two"}', None),
]


def _bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(line for line, _ in BAD_LINES) + b"\n")
    return path


def test_bad_records_fail_with_file_and_line(tmp_path):
    path = _bad_file(tmp_path)
    inputs = Inputs([path])
    with pytest.raises(ScratchLLMError, match=rf"{path.name}:2: not JSON .*--on-error skip"):
        inputs.scan()


def test_bad_records_are_skipped_counted_and_listed(tmp_path):
    path = _bad_file(tmp_path)
    inputs = Inputs([path], on_error="skip")
    inputs.scan()
    assert [d.text for d in inputs.documents()] == ["good one", "good two"]
    summary = inputs.summary()["input_errors"]
    kinds = [k for _, k in BAD_LINES if k]
    assert summary["count"] == len(kinds) and summary["by_kind"] == {k: 1 for k in kinds}
    assert [(e["line"], e["kind"]) for e in summary["first"]] == [
        (i + 1, k) for i, (_, k) in enumerate(BAD_LINES) if k
    ]
    assert all(e["source"] == str(path) for e in summary["first"])


@pytest.mark.parametrize("compression", ["gzip", "bz2", "zstd"])
def test_a_corrupt_compressed_file_is_skipped_whole(tmp_path, compression):
    good = write_jsonl(tmp_path / f"good.jsonl{SUFFIX[compression]}", [{"text": "kept"}], compression)
    data = _compress(b"".join(b'{"text": "line %d"}\n' % i for i in range(5000)), compression)
    bad = tmp_path / f"bad.jsonl{SUFFIX[compression]}"
    bad.write_bytes(data[: len(data) // 2])  # truncated mid-stream
    with pytest.raises(ScratchLLMError, match=rf"{bad.name}.*(corrupt|truncated)"):
        Inputs([good, bad]).scan()
    inputs = Inputs([good, bad], on_error="skip")
    inputs.scan()
    assert [d.text for d in inputs.documents()] == ["kept"]  # nothing of the damaged file is used
    errors = inputs.summary()["input_errors"]
    assert errors["by_kind"] == {"corrupt_file": 1}
    entry = [f for f in inputs.summary()["files"] if f["path"] == str(bad)][0]
    assert entry["documents"] == 0 and "corrupt" in entry["skipped"]


def test_text_files_that_are_not_utf8_midway(tmp_path):
    ok = tmp_path / "ok.txt"
    ok.write_text("fine\n")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"plain line\n" * 1000 + b"caf\xe9\n")  # valid for the first 8 KiB
    with pytest.raises(
        ScratchLLMError, match=r"bad.txt:1001: not valid UTF-8: byte 0xe9 at byte offset 11003"
    ):
        Inputs([ok, bad]).scan()
    assert [d.text for d in docs_of([ok, bad], on_error="skip")] == ["fine\n"]


def test_a_json_array_file_gets_a_hint(tmp_path):
    path = tmp_path / "records.json"
    path.write_text(json.dumps([{"text": "a"}, {"text": "b"}], indent=2))
    with pytest.raises(ScratchLLMError, match=r"records.json:1: the file is one JSON array.*jq -c"):
        Inputs([path]).scan()


def test_parquet_errors(tmp_path):
    write_parquet(tmp_path / "p.parquet", ["a", None, "c"])
    with pytest.raises(ScratchLLMError, match=r"p.parquet: no column 'body' \(columns: text, id\)"):
        Inputs([tmp_path / "p.parquet"], text_field="body").scan()
    with pytest.raises(ScratchLLMError, match=r"p.parquet: column 'id' holds int64, not strings"):
        Inputs([tmp_path / "p.parquet"], text_field="id").scan()
    assert [d.text for d in docs_of([tmp_path / "p.parquet"], on_error="skip")] == ["a", "c"]
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ScratchLLMError, match=r"junk.parquet: not a readable Parquet file"):
        Inputs([tmp_path / "junk.parquet"]).scan()


def test_a_file_changed_after_the_scan_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    inputs = Inputs([path])
    inputs.scan()
    write_jsonl(path, [{"text": "one"}, {"text": "two"}, {"text": "three"}])
    with pytest.raises(ScratchLLMError, match="changed while it was being read"):
        list(inputs.documents())


def test_on_error_must_be_fail_or_skip(tmp_path):
    with pytest.raises(ScratchLLMError, match="--on-error must be one of fail, skip"):
        Inputs([write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])], on_error="ignore")


def test_read_documents_reports_errors_inline(tmp_path):
    items = list(read_documents(Inputs([_bad_file(tmp_path)]).files[0]))
    assert [getattr(i, "kind", None) for i in items] == [k for _, k in BAD_LINES]


def test_plain_formats_need_neither_pyarrow_nor_zstandard(tmp_path):
    write_jsonl(tmp_path / "a.jsonl.gz", [{"text": "x"}], "gzip")
    (tmp_path / "b.txt").write_text("y")
    code = (
        "import sys\nfrom scratchllm.data.readers import Inputs\n"
        f"i = Inputs([{str(tmp_path)!r}]); i.scan(); assert [d.text for d in i.documents()] == ['x', 'y']\n"
        "for name in ('pyarrow', 'zstandard', 'numpy'):\n"
        "    assert name not in sys.modules, name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
