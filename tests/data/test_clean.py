"""`clean` end to end: report counts, planted duplicates found, determinism, atomic output, CLI."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from scratchllm.cli.main import main
from scratchllm.data import load_shards, prepare
from scratchllm.data.clean import CleanConfig, clean
from scratchllm.data.dedup import DedupConfig
from scratchllm.data.readers import Inputs
from scratchllm.data.synthetic import Rates, write_corpus
from scratchllm.errors import ScratchLLMError

VOLATILE = {"timings", "seconds", "workers", "out_dir"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[tuple[str, int], dict]]:
    """~1.5 MB of synthetic JSONL (two shards) with planted copies; the truth by (file, line)."""
    d = tmp_path_factory.mktemp("synthetic")
    write_corpus(
        d, 1_500_000, seed=7, rates=Rates(exact=0.06, near=0.12, related=0.04, junk=0.06), shard_bytes=800_000
    )
    truth = {}
    for f in sorted(d.glob("*.jsonl")):
        for k, line in enumerate(f.read_text().splitlines(), 1):
            truth[(str(f), k)] = json.loads(line)
    return d, truth


def _removed(out: Path) -> dict[tuple[str, int], dict]:
    recs = {}
    for f in sorted(out.glob("removed-*.jsonl*")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            recs[(r["source"], r["line"])] = r
    return recs


def _stable(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in VOLATILE}


@pytest.fixture(scope="module")
def cleaned(corpus, tmp_path_factory) -> tuple[Path, dict]:
    d, _ = corpus
    out = tmp_path_factory.mktemp("clean") / "out"
    report = clean([d], out, CleanConfig(keep_removed=True), progress=False, workers=1)
    return out, report


def test_report_counts_add_up_and_match_the_files(cleaned):
    out, report = cleaned
    removed = sum(r["documents"] for r in report["removed"])
    assert (
        report["documents_in"]
        == report["documents_kept"] + removed
        == report["documents_removed"] + report["documents_kept"]
    )
    assert report["bytes_in"] >= report["bytes_kept"] + sum(r["bytes"] for r in report["removed"]) * 0.9
    kept_lines = sum(len(p.read_text().splitlines()) for p in out.glob("part-*.jsonl"))
    assert kept_lines == report["documents_kept"] == sum(s["documents"] for s in report["shards"])
    assert len(_removed(out)) == removed
    assert report["removed_by_rule"] == {r["rule"]: r["documents"] for r in report["removed"]}
    for r in report["removed"]:
        assert len(r["examples"]) == min(5, r["documents"])
        for ex in r["examples"]:
            assert ex["source"] and ex["text"]
    saved = json.loads((out / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["kind"] == "scratchllm-clean"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_planted_duplicates_and_junk_are_found(corpus, cleaned):
    _, truth = corpus
    out, report = cleaned
    removed = _removed(out)
    by_rule = {}
    for key, rec in removed.items():
        by_rule.setdefault(rec["rule"], set()).add(key)
    kinds = {}
    for key, rec in truth.items():
        kinds.setdefault(rec["kind"], set()).add(key)
    assert kinds["original"].isdisjoint(removed)  # no original document is removed
    assert kinds["junk"] <= set(removed)  # every junk page is caught by some filter
    assert kinds["exact"] <= by_rule["exact_duplicate"] | by_rule["near_duplicate"]
    # near copies at or above the threshold (and not hit by a filter first) are all found ...
    filtered = set().union(*(v for k, v in by_rule.items() if k not in ("exact_duplicate", "near_duplicate")))
    copies = {k for k in kinds["near"] | kinds["related"] if truth[k]["jaccard"] >= 0.8} - filtered
    found = copies & (by_rule["near_duplicate"] | by_rule["exact_duplicate"])
    assert len(found) >= 0.97 * len(copies) and len(copies) > 50
    # ... and nothing below it is removed as a near duplicate (verification is exact)
    for key in by_rule["near_duplicate"]:
        assert removed[key]["jaccard"] >= 0.8
        assert truth[key]["kind"] in ("near", "related", "exact")
    # the removed copy names the document it copies
    some = next(iter(by_rule["near_duplicate"]))
    source, line = removed[some]["duplicate_of"].rsplit(":", 1)
    assert truth[(source, int(line))]["id"] == truth[some]["of"]
    assert report["dedup"]["candidate_probability_at_threshold"] >= 0.99


def test_same_output_for_any_number_of_workers(corpus, cleaned, tmp_path):
    d, _ = corpus
    out1, report1 = cleaned
    report2 = clean([d], tmp_path / "w2", CleanConfig(keep_removed=True), progress=False, workers=2)
    assert report2["workers"] == 2
    assert json.dumps(_stable(report1)) == json.dumps(_stable(report2))
    for name in ["part-00000.jsonl", "removed-00000.jsonl"]:
        assert (out1 / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()


def test_signature_verification_and_compressed_shards(corpus, tmp_path):
    d, _ = corpus
    cfg = CleanConfig(dedup=DedupConfig(verify="signature"), compress="gzip", shard_bytes=300_000)
    report = clean([d], tmp_path / "o", cfg, progress=False, workers=1)
    shards = sorted((tmp_path / "o").glob("part-*.jsonl.gz"))
    assert len(shards) == len(report["shards"]) > 1
    assert sum(len(gzip.decompress(p.read_bytes()).splitlines()) for p in shards) == report["documents_kept"]
    assert report["dedup"]["verify"] == "signature" and report["dedup"]["near_duplicates"] > 50
    inputs = Inputs([tmp_path / "o"])  # a clean directory reads as its shards, compressed or not
    inputs.scan()
    assert inputs.documents_count == report["documents_kept"]


def test_switches_turn_stages_off(corpus, tmp_path):
    d, _ = corpus
    cfg = CleanConfig(quality=CleanConfig().quality.make(only=[]), dedup=DedupConfig(exact=False, near=False))
    report = clean([d], tmp_path / "o", cfg, progress=False)
    assert report["documents_kept"] == report["documents_in"]
    assert [r["rule"] for r in report["removed"]] == ["too_large", "empty"]


def test_boilerplate_lines_are_dropped(tmp_path):
    docs = []
    for i in range(60):
        body = " ".join(f"word{i}x{j} and the other thing{j}" for j in range(12)) + "."
        docs.append({"text": f"Home | News | Contact\n{body}\nCopyright Example Inc. All rights reserved."})
    src = tmp_path / "web.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in docs))
    cfg = CleanConfig(boilerplate=True, boilerplate_min_docs=20, quality=CleanConfig().quality.make(only=[]))
    report = clean([src], tmp_path / "o", cfg, progress=False)
    assert report["boilerplate"]["lines_removed"] == 120 and report["boilerplate"]["distinct_lines"] == 2
    first = json.loads((tmp_path / "o" / "part-00000.jsonl").read_text().splitlines()[0])
    assert "Copyright" not in first["text"] and "Home |" not in first["text"] and "word0x0" in first["text"]


def test_bad_records_are_counted_separately(tmp_path, corpus):
    d, truth = corpus
    src = tmp_path / "mixed.jsonl"
    good = [r["text"] for r in list(truth.values())[:30] if r["kind"] == "original"]
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in good) + "{oops\n" + '{"t": 1}\n')
    with pytest.raises(ScratchLLMError, match=r"mixed.jsonl:\d+: not JSON"):
        clean([src], tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
    report = clean([src], tmp_path / "o", progress=False, on_error="skip")
    assert report["documents_in"] == len(good)
    assert report["input_errors"]["by_kind"] == {"missing_field": 1, "not_json": 1}


def test_output_is_replaced_atomically_and_only_with_force(corpus, tmp_path):
    d, _ = corpus
    out = tmp_path / "o"
    clean([d], out, CleanConfig(shard_bytes=200_000), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len([n for n in before if n.startswith("part-")]) > 2
    with pytest.raises(ScratchLLMError, match="already contains files"):
        clean([d], out, progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\nnot json\n')
    with pytest.raises(ScratchLLMError, match="not JSON"):
        clean([bad], out, progress=False, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched by the failed run
    report = clean([d], out, progress=False, force=True)  # one big shard now: the old extra ones go
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.jsonl", "report.json"]
    assert report["documents_kept"] == len((out / "part-00000.jsonl").read_text().splitlines())


def test_a_document_too_large_to_clean_is_reported(tmp_path):
    src = tmp_path / "big.txt"
    src.write_text("the big and long text. " * 2000)
    report = clean([src], tmp_path / "o", CleanConfig(max_doc_bytes=10_000), progress=False)
    assert report["removed_by_rule"]["too_large"] == 1 and report["documents_kept"] == 0


# ----------------------------------------------------------------------------- prepare --clean


def _docs(tok, data_dir: Path) -> tuple[list[str], list[str]]:
    shards = load_shards(data_dir)
    return [tok.decode(part.tolist()).split("<|endoftext|>") for part in (shards.train, shards.val)]


def test_prepare_clean_splits_after_dedup(char_tok, corpus, tmp_path):
    """No near copy straddles train/val: the split is made after de-duplication."""
    from scratchllm.data.normalize import normalize

    d, truth = corpus
    by_id = {rec["id"]: rec for rec in truth.values()}
    pairs = [
        (by_id[r["of"]]["text"], r["text"])
        for r in truth.values()
        if r["kind"] == "exact" or (r["kind"] in ("near", "related") and r["jaccard"] >= 0.8)
    ]
    # Without cleaning, copies land on both sides of the split ...
    prepare(char_tok, [d], tmp_path / "raw", progress=False)
    train, val = map(set, _docs(char_tok, tmp_path / "raw"))
    assert any(orig in train and copy in val for orig, copy in pairs)
    # ... with --clean, no pair survives whole, so none can straddle.
    meta = prepare(char_tok, [d], tmp_path / "data", progress=False, clean=CleanConfig())
    assert meta["clean"]["documents_kept"] == meta["documents"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "clean-report.json",
        "meta.json",
        "tokenizer.json",
        "train.bin",
        "val.bin",
    ]
    train, val = _docs(char_tok, tmp_path / "data")
    count = Counter(train + val)
    for orig, copy in ((normalize(o), normalize(c)) for o, c in pairs):
        assert (count[orig] <= 1) if orig == copy else not (count[orig] and count[copy])


def test_prepare_reads_a_clean_directory(char_tok, cleaned, tmp_path):
    out, report = cleaned
    meta = prepare(char_tok, [out], tmp_path / "data", progress=False)
    assert meta["documents"] == report["documents_kept"]
    ids = np.concatenate([load_shards(tmp_path / "data").train, load_shards(tmp_path / "data").val])
    assert int((ids == char_tok.eot_id).sum()) == report["documents_kept"] - 1


# ----------------------------------------------------------------------------- the CLI


def test_clean_cli_table_json_and_filters(corpus, tmp_path, capsys):
    d, _ = corpus
    assert main(["clean", str(d), "--out", str(tmp_path / "o"), "--quiet", "--keep-removed"]) == 0
    out = capsys.readouterr().out
    assert "- near_duplicate" in out and "= kept" in out and "e.g. exact_duplicate" in out
    assert (tmp_path / "o" / "removed-00000.jsonl").is_file()
    assert (
        main(
            [
                "clean",
                str(d),
                "--out",
                str(tmp_path / "j"),
                "--json",
                "--threshold",
                "min_words=10",
                "--skip-filter",
                "dup_ngrams",
                "--near-threshold",
                "0.9",
                "--no-exact-dedup",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["quality"]["thresholds"]["min_words"] == 10
    assert "dup_ngrams" not in report["config"]["quality"]["rules"]
    assert report["dedup"]["threshold"] == 0.9 and "exact_duplicate" not in report["removed_by_rule"]
    assert main(["clean", "--list-filters"]) == 0
    listing = capsys.readouterr().out
    assert "dup_ngrams" in listing and "max_dup_10gram=0.1" in listing and "Gopher" in listing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give the files or directories to clean"),
        (["@in"], "give --out DIR"),
        (["@in", "--out", "@o", "--threshold", "min_words"], "--threshold wants NAME=NUMBER"),
        (["@in", "--out", "@o", "--threshold", "nope=1"], "unknown threshold 'nope'"),
        (["@in", "--out", "@o", "--normalize", "nfc,bogus"], "unknown --normalize step 'bogus'"),
        (["@in", "--out", "@o", "--near-threshold", "0"], "--near-threshold must be in (0, 1]"),
        (["@in", "--out", "@o", "--lsh-bands", "4"], "give both --lsh-bands and --lsh-rows"),
        (["@missing", "--out", "@o"], "input not found"),
    ],
)
def test_clean_cli_errors_are_one_line(args, message, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "hello"}\n')
    names = {"@in": str(src), "@o": str(tmp_path / "o"), "@missing": str(tmp_path / "nope")}
    assert main(["clean", *[names.get(a, a) for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchllm clean: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_prepare_clean_cli(char_tok_file, corpus, tmp_path, capsys):
    d, _ = corpus
    args = ["prepare", "--tokenizer", str(char_tok_file), "--input", str(d), "--out", str(tmp_path / "p")]
    assert main([*args, "--clean", "--near-threshold", "0.85", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "cleaned" in out and "near_duplicate" in out and "clean-report.json" in out
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert meta["clean"]["removed_by_rule"]["near_duplicate"] > 0
    assert main(["prepare", "--tokenizer", str(char_tok_file), "--clean", "--out", str(tmp_path / "q")]) == 2
    assert "--clean needs --input" in capsys.readouterr().err


def test_clean_and_prepare_do_not_import_torch_or_unused_readers(tmp_path, char_tok_file):
    src = tmp_path / "a.jsonl"
    src.write_text(
        "".join(json.dumps({"text": f"Line {i} of the text.\nAnd more."}) + "\n" for i in range(50))
    )
    code = (
        "import sys\nfrom scratchllm.cli.main import main\n"
        f"assert main(['clean', {str(src)!r}, '--out', {str(tmp_path / 'c')!r}, '--quiet',"
        " '--no-filters']) == 0\n"
        f"assert main(['prepare', '--tokenizer', {str(char_tok_file)!r}, '--input', {str(tmp_path / 'c')!r}, "
        f"'--out', {str(tmp_path / 'p')!r}, '--quiet']) == 0\n"
        "for name in ('torch', 'pyarrow', 'zstandard'):\n"
        "    assert name not in sys.modules, name\n"
    )
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
