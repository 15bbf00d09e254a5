"""Data cleaning at scale: a synthetic corpus with planted duplicates, cleaned and prepared.

    python -m benchmarks.run --only data            # quick: 2 MB and 8 MB corpora
    python -m benchmarks.run --full --only data     # 100 MB and 1 GB corpora

The corpus is :mod:`scratchllm.data.synthetic`: JSONL shards of English-like documents with
planted exact copies (5 %), near copies (10 %, a few percent of the words edited; their *true*
Jaccard similarity to the original is in the record), "related" documents that share at most half
of their paragraphs (3 %, mostly well below the threshold) and junk pages (5 %). Corpora are cached
in ``$SCRATCHLLM_BENCH_CACHE`` (default: a ``scratchllm-bench-cache`` folder in the temp dir), so
only the first run pays for generating a gigabyte.

Each size is cleaned with ``scratchllm clean --workers 2 --keep-removed`` and the result prepared
with ``scratchllm prepare --workers 2`` (a 2,048-id BPE trained here), each as a child process
whose peak RSS is measured (``ru_maxrss``). Rows:

* **clean throughput** on the large corpus (MB/s of input, wall clock), peer: the small corpus —
  flat means it scales linearly. ``extra`` has every stage's MB/s per CPU second from the report
  (CPU time, summed over processes: unlike the wall clock it does not depend on how busy the
  machine is) and the prepare stage's MB/s.
* **peak RSS** of clean and of prepare, large vs small corpus (flat = memory does not grow with
  the corpus).
* **near-duplicate precision and recall** against the planted truth on the large corpus. A
  positive is a planted copy with true Jaccard >= 0.8 that reached the dedup stage (not removed
  by a quality filter first); detected = removed as a near (or exact) duplicate. Peer: datasketch's
  ``MinHash`` + ``MinHashLSH`` with the same settings (128 permutations, threshold 0.8, word
  5-grams of the same normalised text) on the first shard, measured in this run.
* **near-dup throughput**, one process, the same shard: ``clean`` with only normalisation and
  near-dedup switched on, vs datasketch (MinHash over the same shingles + LSH insert/query).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_memory import SCRATCHLLM, child_peak_rss_mb
from benchmarks.common import Row

CACHE_ENV = "SCRATCHLLM_BENCH_CACHE"
GENERATOR_VERSION = 1
THRESHOLD = 0.8


def corpus(size: int) -> Path:
    """The synthetic corpus of ``size`` bytes (generated once, then reused from the cache)."""
    from scratchllm.data.synthetic import write_corpus

    root = Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "scratchllm-bench-cache")
    path = root / f"synthetic-{size}-seed0-v{GENERATOR_VERSION}"
    if not (path / ".done.json").is_file():
        shutil.rmtree(path, ignore_errors=True)
        tmp = root / f".tmp-{path.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.perf_counter()
        summary = write_corpus(tmp, size, seed=0, shard_bytes=min(64 << 20, max(size // 4, 1 << 20)))
        (tmp / ".done.json").write_text(json.dumps({**summary, "seconds": time.perf_counter() - t0}))
        tmp.rename(path)
    return path


def _truth(src: Path) -> tuple[dict, dict]:
    """Per (file, line): the planted record's kind and true Jaccard (texts are not kept)."""
    kinds: dict[tuple[str, int], str] = {}
    jac: dict[tuple[str, int], float] = {}
    for f in sorted(src.glob("synthetic-*.jsonl")):
        with open(f, encoding="utf-8") as fh:
            for k, line in enumerate(fh, 1):
                rec = json.loads(line)
                kinds[(str(f), k)] = rec["kind"]
                if "jaccard" in rec:
                    jac[(str(f), k)] = rec["jaccard"]
    return kinds, jac


def _removed(out: Path) -> dict[tuple[str, int], str]:
    rules = {}
    for f in sorted(out.glob("removed-*.jsonl")):
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                rules[(rec["source"], rec["line"])] = rec["rule"]
    return rules


def precision_recall(src: Path, out: Path) -> dict[str, float]:
    """Near-dup precision/recall of a ``clean --keep-removed`` output against the planted truth."""
    kinds, jac = _truth(src)
    removed = _removed(out)
    dedup = {"near_duplicate", "exact_duplicate"}
    reached = {k for k in kinds if removed.get(k) in dedup or k not in removed}  # not filtered first
    positive = {k for k, j in jac.items() if j >= THRESHOLD and k in reached}
    predicted = {k for k, r in removed.items() if r == "near_duplicate"}
    # an exact copy (or a near copy that ended up identical) removed as exact also counts as found
    found = {k for k in positive if removed.get(k) in dedup}
    true_pred = {k for k in predicted if k in positive or kinds[k] == "exact"}
    exact = {k for k, kind in kinds.items() if kind == "exact"}
    return {
        "recall": len(found) / max(1, len(positive)),
        "precision": len(true_pred) / max(1, len(predicted)),
        "positives": len(positive),
        "predicted": len(predicted),
        "exact_recall": len({k for k in exact if removed.get(k) in dedup}) / max(1, len(exact)),
        "originals_removed": sum(1 for k, kind in kinds.items() if kind == "original" and k in removed),
    }


def _truth_file(src_file: Path) -> tuple[list[str], set[int], dict[int, str]]:
    """One shard's texts, the lines that are copies (exact, or true Jaccard >= 0.8), their kinds."""
    texts, positive, kinds = [], set(), {}
    with open(src_file, encoding="utf-8") as fh:
        for k, line in enumerate(fh, 1):
            rec = json.loads(line)
            texts.append(rec["text"])
            kinds[k] = rec["kind"]
            if rec["kind"] == "exact" or rec.get("jaccard", 0) >= THRESHOLD:
                positive.add(k)
    return texts, positive, kinds


def _scores(flagged: set[int], positive: set[int], nbytes: int, seconds: float) -> dict[str, float]:
    return {
        "mb_per_s": nbytes / 1e6 / seconds,
        "recall": len(flagged & positive) / max(1, len(positive)),
        "precision": len(flagged & positive) / max(1, len(flagged)),
        "seconds": seconds,
        "mb": nbytes / 1e6,
    }


def datasketch_peer(src_file: Path) -> dict[str, float]:
    """datasketch MinHash + MinHashLSH over the same normalised 5-gram shingles; a document is a
    near duplicate when LSH returns an earlier document (datasketch's usual recipe: no verification)."""
    from datasketch import MinHash, MinHashLSH

    from scratchllm.data.normalize import normalize

    texts, positive, _ = _truth_file(src_file)
    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=128)
    flagged = set()
    for k, text in enumerate(texts, 1):
        words = "".join(c.lower() if c.isalnum() else " " for c in normalize(text)).split()
        m = MinHash(num_perm=128)
        m.update_batch([" ".join(words[i : i + 5]).encode() for i in range(max(1, len(words) - 4))])
        if lsh.query(m):
            flagged.add(k)
        else:
            lsh.insert(str(k), m)
    return _scores(flagged, positive, sum(len(t.encode("utf-8")) for t in texts), time.perf_counter() - t0)


def ours_near_only(src_file: Path, out: Path) -> dict[str, float]:
    """The same near-dup job with scratchllm in one process: normalise + MinHash/LSH + verify."""
    from scratchllm.data.clean import CleanConfig, clean
    from scratchllm.data.dedup import DedupConfig
    from scratchllm.data.quality import QualityConfig

    cfg = CleanConfig(quality=QualityConfig.make(only=[]), dedup=DedupConfig(exact=False), keep_removed=True)
    t0 = time.perf_counter()
    report = clean([src_file], out, cfg, workers=1, progress=False, force=True)
    seconds = time.perf_counter() - t0
    _, positive, _ = _truth_file(src_file)
    flagged = {line for (_, line), rule in _removed(out).items() if rule == "near_duplicate"}
    return _scores(flagged, positive, report["bytes_in"], seconds)


def _train_tokenizer(src: Path, path: Path, sample: int) -> None:
    from scratchllm.tokenizer.bpe import train_bpe

    texts, size = [], 0
    with open(sorted(src.glob("synthetic-*.jsonl"))[0], encoding="utf-8") as fh:
        for line in fh:
            texts.append(json.loads(line)["text"])
            size += len(texts[-1])
            if size > sample:
                break
    train_bpe(texts, 2048).save(path)


def run(quick: bool = True) -> list[Row]:
    small, big = (2_000_000, 8_000_000) if quick else (100_000_000, 1_000_000_000)
    env = {**os.environ, "TQDM_DISABLE": "1"}
    results: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="scratchllm-bench-data-") as tmp:
        tmp = Path(tmp)
        tok = tmp / "bpe.json"
        _train_tokenizer(corpus(small), tok, 500_000 if quick else 2_000_000)
        for size in (small, big):
            src = corpus(size)
            out = tmp / f"clean-{size}"
            rss, wall = child_peak_rss_mb(
                [
                    *SCRATCHLLM,
                    "clean",
                    str(src),
                    "--out",
                    str(out),
                    "--workers",
                    "2",
                    "--quiet",
                    "--keep-removed",
                ],
                env=env,
            )
            report = json.loads((out / "report.json").read_text())
            p_rss, p_wall = child_peak_rss_mb(
                [
                    *SCRATCHLLM,
                    "prepare",
                    "--tokenizer",
                    str(tok),
                    "--input",
                    str(out),
                    "--out",
                    str(tmp / f"data-{size}"),
                ]
                + ["--workers", "2", "--quiet"],
                env=env,
            )
            results[size] = {
                "mb": report["bytes_in"] / 1e6,
                "clean_rss": rss,
                "clean_wall": wall,
                "prepare_rss": p_rss,
                "prepare_wall": p_wall,
                "kept_mb": report["bytes_kept"] / 1e6,
                "report": report,
                "pr": precision_recall(src, out) if size == big else None,
            }
            shutil.rmtree(tmp / f"data-{size}", ignore_errors=True)
            if size != big:
                shutil.rmtree(out, ignore_errors=True)
        first_shard = sorted(corpus(small).glob("synthetic-*.jsonl"))[0]
        ours = ours_near_only(first_shard, tmp / "near-only")
        peer = datasketch_peer(first_shard)

    s, b = results[small], results[big]
    stages = {k: v["mb_per_s"] for k, v in b["report"]["timings"].items()}
    size_name = f"{b['mb']:,.0f} MB"
    pr = b["pr"]
    rows = [
        Row(
            name=f"clean, synthetic JSONL {size_name} (2 workers), input MB/s",
            ours=b["mb"] / b["clean_wall"],
            peer=s["mb"] / s["clean_wall"],
            unit="MB/s",
            peer_name=f"the same, {s['mb']:,.0f} MB",
            target="scales linearly: ratio ≈ 1",
            extra={
                "stage_mb_per_s": stages,
                "prepare_mb_per_s": b["kept_mb"] / b["prepare_wall"],
                "removed_by_rule": b["report"]["removed_by_rule"],
                "documents_in": b["report"]["documents_in"],
                "wall_s": {"clean": round(b["clean_wall"], 1), "prepare": round(b["prepare_wall"], 1)},
                "dedup": b["report"]["dedup"],
            },
        ),
        Row(
            name=f"clean peak RSS, {size_name} corpus",
            ours=b["clean_rss"],
            peer=s["clean_rss"],
            unit="MB",
            peer_name=f"clean, {s['mb']:,.0f} MB corpus",
            higher_is_better=False,
            target="flat: ratio ≥ 0.8",
            met=s["clean_rss"] / b["clean_rss"] >= 0.8,
        ),
        Row(
            name=f"prepare (BPE 2k) of the cleaned {size_name}, peak RSS",
            ours=b["prepare_rss"],
            peer=s["prepare_rss"],
            unit="MB",
            peer_name=f"prepare, cleaned {s['mb']:,.0f} MB",
            higher_is_better=False,
            target="flat: ratio ≥ 0.9",
            met=s["prepare_rss"] / b["prepare_rss"] >= 0.9,
            extra={
                "prepare_mb_per_s": {
                    "small": s["kept_mb"] / s["prepare_wall"],
                    "big": b["kept_mb"] / b["prepare_wall"],
                }
            },
        ),
        Row(
            name=f"near-dup recall, planted copies with Jaccard ≥ 0.8, {size_name}",
            ours=pr["recall"],
            peer=peer["recall"],
            unit="recall",
            peer_name=f"datasketch MinHashLSH, first shard ({peer['mb']:.0f} MB)",
            target="≥ 0.95",
            met=pr["recall"] >= 0.95,
            extra={**pr, "ours_first_shard": ours},
        ),
        Row(
            name=f"near-dup precision, {size_name}",
            ours=pr["precision"],
            peer=peer["precision"],
            unit="precision",
            peer_name=f"datasketch MinHashLSH, first shard ({peer['mb']:.0f} MB)",
            target="≥ 0.95",
            met=pr["precision"] >= 0.95,
        ),
        Row(
            name=f"near-dup stage alone, 1 process, first shard ({peer['mb']:.0f} MB)",
            ours=ours["mb_per_s"],
            peer=peer["mb_per_s"],
            unit="MB/s",
            peer_name="datasketch MinHash + MinHashLSH (same shingles)",
            extra={"ours": ours, "datasketch": peer},
        ),
    ]
    return rows


if __name__ == "__main__":
    from benchmarks.common import format_table

    print(format_table(run(quick="--full" not in sys.argv)))
