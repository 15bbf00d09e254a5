"""Clean a corpus: normalise, filter junk, remove exact and near duplicates, write JSONL shards.

``scratchllm clean IN... --out CLEAN_DIR`` (and ``prepare --clean``) runs these stages, in order:

1. **read** the inputs (:mod:`scratchllm.data.readers`: text, JSONL, Parquet, compressed;
   bad records per ``--on-error``);
2. **normalise** each document (:mod:`scratchllm.data.normalize`: NFC, control characters,
   whitespace) and, with ``boilerplate``, drop lines that occur in many documents;
3. **filter** with the quality rules (:mod:`scratchllm.data.quality`);
4. **exact dedup**, then **near dedup** with MinHash + LSH (:mod:`scratchllm.data.dedup`);
5. **write** what survives as JSONL shards ``part-00000.jsonl`` ... (``{"text", "source",
   "line"}`` per line, optionally ``.gz``/``.zst``) and ``report.json``.

How it scales (and why memory stays flat in the size of the text):

* Documents stream through in batches. Stages 2–4's per-document work (normalising, the
  statistics, the hashes, the MinHash signature) runs in a pool of worker processes on batches of
  about 1 MB; results come back in order, with at most two batches per worker in flight.
* What survives the filters is written to a temporary JSONL file at once. Only small per-document
  numbers stay in memory (a 64-bit exact-duplicate key and a file offset: 16 bytes per document);
  the signatures' band hashes and the shingle sets go to temporary files in ``CLEAN_DIR``.
* Dedup then runs over those files, one LSH band at a time (8 bytes per document in memory), and
  a last pass copies the surviving lines into the shards.
* Temporary disk: about the size of the kept text, plus ~4 bytes per word for the shingle sets
  (``verify="exact"``). Memory: a fixed amount plus about 40 bytes per document during dedup.

**Deterministic**: the same input and settings give byte-identical shards and report (minus
timings) for any number of workers: batches are cut the same way, results are consumed in
input order, every hash is seeded, and dedup keeps the earliest document of every group.

The report (``report.json``) says, for every stage and rule, how many documents and bytes it
removed, with a few removed examples (``examples`` per rule) so a user can judge the thresholds;
``documents_in == documents_kept + sum(removed)``, and bad input records are counted separately.
``timings`` gives each stage's CPU seconds (summed over processes; CPU time, so that a busy
machine does not inflate it) and MB of input per CPU second; ``seconds`` is the wall clock.
"""

from __future__ import annotations

import array
import contextlib
import functools
import gzip
import json
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from scratchllm.data.dedup import DedupConfig
from scratchllm.data.normalize import NormalizeConfig
from scratchllm.data.quality import RULES, QualityConfig
from scratchllm.data.readers import CLEAN_REPORT_KIND, Document, Inputs
from scratchllm.errors import ScratchLLMError

FORMAT_VERSION = 1
#: A batch handed to a worker holds about this much text (or BATCH_DOCS documents).
BATCH_BYTES = 1 << 20
BATCH_DOCS = 4096
#: With ``workers=None``, corpora smaller than this are cleaned in-process (a pool costs ~1 s).
POOL_MIN_BYTES = 8 << 20
COMPRESS_CHOICES = ("none", "gzip", "zstd")
_SUFFIX = {"none": "", "gzip": ".gz", "zstd": ".zst"}
SNIPPET_CHARS = 300


@dataclass(frozen=True)
class CleanConfig:
    """Everything ``clean`` can be told; the defaults are the documented recommended settings."""

    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    #: Drop lines found in at least ``max(boilerplate_min_docs, boilerplate_min_fraction * N)`` docs.
    boilerplate: bool = False
    boilerplate_min_docs: int = 20
    boilerplate_min_fraction: float = 0.001
    #: Documents larger than this are removed (rule ``too_large``): clean holds one in memory.
    max_doc_bytes: int = 16 << 20
    shard_bytes: int = 256 << 20
    compress: str = "none"
    examples: int = 5
    #: Also write every removed document, with the rule that removed it, to ``removed-*.jsonl``.
    keep_removed: bool = False

    def validated(self) -> CleanConfig:
        if self.compress not in COMPRESS_CHOICES:
            raise ScratchLLMError(f"--compress must be one of {', '.join(COMPRESS_CHOICES)}")
        if self.shard_bytes < 1 << 10:
            raise ScratchLLMError(f"--shard-mb is too small ({self.shard_bytes} bytes)")
        if self.boilerplate_min_docs < 2:
            raise ScratchLLMError("--boilerplate-min-docs must be at least 2")
        if self.examples < 0:
            raise ScratchLLMError("--examples must be >= 0")
        self.dedup.validated()
        return self

    def to_dict(self) -> dict[str, Any]:
        bands, rows = self.dedup.lsh()
        return {
            "normalize": self.normalize.steps(),
            "boilerplate": {
                "enabled": self.boilerplate,
                "min_documents": self.boilerplate_min_docs,
                "min_fraction": self.boilerplate_min_fraction,
            },
            "quality": self.quality.to_dict(),
            "dedup": {**asdict(self.dedup), "bands": bands, "rows": rows},
            "max_doc_bytes": self.max_doc_bytes,
            "shard_bytes": self.shard_bytes,
            "compress": self.compress,
            "keep_removed": self.keep_removed,
        }


def removal_rules(config: CleanConfig) -> list[tuple[str, str, str]]:
    """``(rule, stage, what it means)`` for each removal reason that is on, in pipeline order."""
    rules = [
        ("too_large", "read", f"larger than {config.max_doc_bytes:,} bytes"),
        ("empty", "normalize", "no text left after normalisation"),
    ]
    rules += [(r.name, "quality", r.description) for r in RULES if r.name in config.quality.rules]
    if config.dedup.exact:
        rules.append(
            ("exact_duplicate", "dedup", "same text as an earlier document (case/whitespace folded)")
        )
    if config.dedup.near:
        rules.append(
            (
                "near_duplicate",
                "dedup",
                f"Jaccard similarity >= {config.dedup.threshold} to an earlier document "
                f"(word {config.dedup.ngram}-grams)",
            )
        )
    return rules


# ----------------------------------------------------------------------------- worker side

_W: dict[str, Any] = {}


def _init_worker(config: CleanConfig, boilerplate: frozenset[int], in_pool: bool) -> None:
    """Set up a worker (or the main process when there is no pool): config, permutations, LSH shape."""
    from scratchllm.data.dedup import permutations

    if in_pool:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _W.clear()
    _W.update(
        config=config,
        boilerplate=boilerplate,
        lsh=config.dedup.lsh(),
        perms=permutations(config.dedup.num_perm, config.dedup.seed),
    )


def _line_keys_job(texts: list[str]) -> list[list[int]]:
    """Pass 0 (boilerplate): each normalised document's distinct line keys, sorted."""
    from scratchllm.data.normalize import document_line_keys, normalize

    cfg: CleanConfig = _W["config"]
    return [sorted(document_line_keys(normalize(t, cfg.normalize))) for t in texts]


@dataclass
class _BatchResult:
    """What a worker sends back for one batch (arrays only for the documents still kept)."""

    reasons: list[str | None]
    values: list[float | None]
    kept_texts: list[str]
    lines_dropped: int
    keys: Any = None  # uint64 [kept]
    bands: Any = None  # uint64 [kept, bands]
    signatures: Any = None  # uint32 [kept, K] (verify="signature")
    shingles: Any = None  # uint32 concatenated sorted sets (verify="exact")
    shingle_counts: Any = None  # uint32 [kept]
    seconds: dict[str, float] = field(default_factory=dict)


def _clean_job(texts: list[str]) -> _BatchResult:
    """Pass 1 for one batch: normalise, drop boilerplate lines, judge quality, hash for dedup."""
    import numpy as np

    from scratchllm.data import dedup as D
    from scratchllm.data.normalize import drop_lines, normalize
    from scratchllm.data.quality import BatchText, judge

    cfg: CleanConfig = _W["config"]
    seconds: dict[str, float] = defaultdict(float)
    t = time.process_time()
    normed = [normalize(x, cfg.normalize) for x in texts]
    dropped = 0
    if _W["boilerplate"]:
        out = []
        for x in normed:
            x, n = drop_lines(x, _W["boilerplate"])
            out.append(x)
            dropped += n
        normed = out
    seconds["normalize"] += time.process_time() - t

    t = time.process_time()
    reasons: list[str | None] = ["empty" if not x else None for x in normed]
    values: list[float | None] = [None] * len(texts)
    live = [i for i, r in enumerate(reasons) if r is None]
    batch = BatchText([normed[i] for i in live])  # words and hashes shared by the filters and dedup
    q_reason, q_value = judge(batch.texts, cfg.quality, batch)
    for i, r, v in zip(live, q_reason, q_value):
        reasons[i], values[i] = r, v
    seconds["quality"] += time.process_time() - t

    t = time.process_time()
    kept_mask = np.array([r is None for r in q_reason], dtype=bool)
    kept = [x for x, k in zip(batch.texts, kept_mask) if k]
    result = _BatchResult(reasons, values, kept, dropped)
    if kept and (cfg.dedup.exact or cfg.dedup.near):
        result.keys = np.array([D.exact_key(x) for x in kept], dtype=np.uint64)
    if kept and cfg.dedup.near:
        tok_h, tok_doc, _ = batch.lower_tokens()
        renumber = np.cumsum(kept_mask) - 1  # live index -> kept index
        on = kept_mask[tok_doc]
        sh, sh_doc = D.shingles(tok_h[on], renumber[tok_doc[on]], len(kept), cfg.dedup.ngram)
        sig = D.minhash(sh, sh_doc, len(kept), _W["perms"])
        bands, rows = _W["lsh"]
        result.bands = D.band_keys(sig, bands, rows)
        result.shingle_counts = np.bincount(sh_doc, minlength=len(kept)).astype(np.uint32)
        if cfg.dedup.verify == "exact":
            result.shingles = sh  # sorted per document: what the exact Jaccard check reads back
        else:
            result.signatures = sig
    seconds["dedup_hashing"] += time.process_time() - t
    result.seconds = dict(seconds)
    return result


# ----------------------------------------------------------------------------- main side


def _in_order(
    jobs: Iterator[Any], fn: Any, pool: Any, max_pending: int, arg: Any = None
) -> Iterator[tuple[Any, Any]]:
    """``(job, fn(arg(job)))`` in input order, at most ``max_pending`` jobs ahead.

    ``Pool.imap`` would keep feeding workers while results pile up unread; here a new job is only
    submitted when an old result has been taken, so memory is bounded by ``max_pending`` batches.
    """
    from collections import deque

    arg = arg or (lambda job: job)
    pending: deque = deque()
    for job in jobs:
        pending.append((job, pool.apply_async(fn, (arg(job),)) if pool is not None else None))
        while len(pending) > max_pending:
            j, r = pending.popleft()
            yield j, (r.get() if r is not None else fn(arg(j)))
    while pending:
        j, r = pending.popleft()
        yield j, (r.get() if r is not None else fn(arg(j)))


class _Removed:
    """Counts, bytes and a few examples per removal rule."""

    def __init__(self, rules: list[tuple[str, str, str]], max_examples: int) -> None:
        self.rules = rules
        self.max_examples = max_examples
        self.documents: dict[str, int] = {r: 0 for r, _, _ in rules}
        self.bytes: dict[str, int] = {r: 0 for r, _, _ in rules}
        self.examples: dict[str, list[dict[str, Any]]] = {r: [] for r, _, _ in rules}

    def add(self, rule: str, nbytes: int, example: dict[str, Any] | None = None) -> None:
        self.documents[rule] += 1
        self.bytes[rule] += nbytes
        if example is not None and self.wants_example(rule):
            self.examples[rule].append(example)

    def wants_example(self, rule: str) -> bool:
        return len(self.examples[rule]) < self.max_examples

    @property
    def total(self) -> int:
        return sum(self.documents.values())

    def to_list(self) -> list[dict[str, Any]]:
        return [
            {
                "rule": r,
                "stage": stage,
                "description": what,
                "documents": self.documents[r],
                "bytes": self.bytes[r],
                "examples": self.examples[r],
            }
            for r, stage, what in self.rules
        ]


def _snippet(text: str) -> str:
    return text[:SNIPPET_CHARS] + ("…" if len(text) > SNIPPET_CHARS else "")


def _example(doc_where: str, text: str, value: Any = None, **extra: Any) -> dict[str, Any]:
    ex: dict[str, Any] = {"source": doc_where}
    if value is not None:
        ex["value"] = value
    ex.update(extra)
    ex["text"] = _snippet(text)
    return ex


def _open_shard(path: Path, compress: str) -> BinaryIO:
    if compress == "gzip":
        return gzip.open(path, "wb", compresslevel=6)  # type: ignore[return-value]
    if compress == "zstd":
        import zstandard

        raw = open(path, "wb")  # noqa: SIM115 - closed with the writer (closefd)
        return zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=True)  # type: ignore[return-value]
    return open(path, "wb")


class _ShardWriter:
    """Writes JSON lines into ``part-00000.jsonl`` ... under temporary names (renamed by ``commit``)."""

    def __init__(self, out: Path, shard_bytes: int, compress: str, stem: str = "part") -> None:
        from scratchllm.io import TMP_PREFIX

        self.out, self.shard_bytes, self.compress, self.stem = out, shard_bytes, compress, stem
        self.prefix = f"{TMP_PREFIX}{os.getpid()}-"
        self.shards: list[dict[str, Any]] = []
        self._f: BinaryIO | None = None
        self._size = 0

    def write(self, line: bytes, text_bytes: int) -> None:
        if self._f is None or self._size >= self.shard_bytes:
            self._close()
            name = f"{self.stem}-{len(self.shards):05d}.jsonl{_SUFFIX[self.compress]}"
            self._f = _open_shard(self.out / (self.prefix + name), self.compress)
            self.shards.append({"path": name, "documents": 0, "bytes": 0})
            self._size = 0
        self._f.write(line)
        self._size += len(line)
        self.shards[-1]["documents"] += 1
        self.shards[-1]["bytes"] += text_bytes

    def _close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def sync(self) -> None:
        self._close()
        for s in self.shards:
            with open(self.out / (self.prefix + s["path"]), "rb+") as f:
                os.fsync(f.fileno())

    def commit(self) -> None:
        """Rename the (synced) shards into place and delete old shards this run did not write.

        The caller removes the old report.json first, so a crash in between leaves a directory
        that says it is incomplete.
        """
        from scratchllm.io import fsync_dir

        new = {s["path"] for s in self.shards}
        for s in self.shards:
            os.replace(self.out / (self.prefix + s["path"]), self.out / s["path"])
        for old in self.out.glob(f"{self.stem}-*.jsonl*"):
            if old.name not in new:
                old.unlink()
        fsync_dir(self.out)

    def discard(self) -> None:
        self._close()
        for s in self.shards:
            with contextlib.suppress(OSError):
                (self.out / (self.prefix + s["path"])).unlink()


class _Run:
    """The state of one ``clean`` run between its passes."""

    def __init__(self, source: Inputs, config: CleanConfig, work: Path, workers: int, progress: bool) -> None:
        self.source, self.config, self.work = source, config, work
        self.workers, self.progress = workers, progress
        self.timer: dict[str, float] = defaultdict(float)  # main-process seconds per stage
        self.worker_seconds: dict[str, float] = defaultdict(float)  # summed over workers
        self.removed = _Removed(removal_rules(config), config.examples)
        self.boilerplate: frozenset[int] = frozenset()
        self.boiler_info: dict[str, Any] = {"enabled": config.boilerplate}
        self.docs_in = self.bytes_in = self.lines_dropped = 0
        self.n_kept = 0  # documents that survived the filters (pass 1)
        self.dedup_info: dict[str, Any] = {}
        self.removed_writer: _ShardWriter | None = None

    # ---------------------------------------------------------------- plumbing
    def _pool(self) -> Any:
        if self.workers < 2:
            _init_worker(self.config, self.boilerplate, False)
            return None
        import multiprocessing
        import sys

        # "fork" on Linux: workers start at once and a user's script needs no
        # `if __name__ == "__main__":` guard (with "spawn" each worker re-imports __main__, and an
        # unguarded script would start pools recursively). The workers only run numpy and the
        # standard library, so no thread of the parent is needed in them. Elsewhere: "spawn".
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        return ctx.Pool(self.workers, _init_worker, (self.config, self.boilerplate, True))

    def _batches(self) -> Iterator[list[Document]]:
        """Documents grouped into worker batches (cut the same way whatever the number of workers);
        documents too large to clean are charged to ``too_large`` here."""
        docs = self.source.documents()
        batch: list[Document] = []
        size = 0
        while True:
            t = time.process_time()
            doc = next(docs, None)
            self.timer["read"] += time.process_time() - t
            if doc is None:
                break
            n = len(doc.text)
            if (
                n > self.config.max_doc_bytes // 4
                and len(doc.text.encode("utf-8")) > self.config.max_doc_bytes
            ):
                nbytes = len(doc.text.encode("utf-8"))
                self.docs_in += 1
                self.bytes_in += nbytes
                self.removed.add("too_large", nbytes, _example(doc.where, doc.text))
                self._write_removed("too_large", doc.where, _record(doc, doc.text), nbytes)
                continue
            batch.append(doc)
            size += n
            if size >= BATCH_BYTES or len(batch) >= BATCH_DOCS:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch

    # ---------------------------------------------------------------- pass 0
    def find_boilerplate(self) -> None:
        from scratchllm.data.normalize import BoilerplateCounter

        t = time.perf_counter()  # (wall clock: the work is done in the workers)
        counter = BoilerplateCounter()
        pool = self._pool()
        try:
            texts = lambda batch: [d.text for d in batch]  # noqa: E731
            for _, keys in _in_order(self._batches(), _line_keys_job, pool, 2 * self.workers, texts):
                for k in keys:
                    counter.add_document(k)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        cfg = self.config
        self.boilerplate = frozenset(counter.frequent(cfg.boilerplate_min_docs, cfg.boilerplate_min_fraction))
        self.boiler_info.update(
            distinct_lines=len(self.boilerplate),
            documents_counted=counter.documents,
            count_error_bound=counter.decrements,
        )
        # pass 1 counts the documents again: reset what this pass's batching counted
        self.docs_in = self.bytes_in = 0
        self.removed = _Removed(removal_rules(cfg), cfg.examples)
        self.timer["boilerplate"] = time.perf_counter() - t

    # ---------------------------------------------------------------- pass 1
    def _write_removed(self, rule: str, doc_where: str, record: dict[str, Any], nbytes: int) -> None:
        if self.removed_writer is not None:
            line = json.dumps({"rule": rule, "where": doc_where, **record}, ensure_ascii=False) + "\n"
            self.removed_writer.write(line.encode("utf-8"), nbytes)

    def filter_and_hash(self) -> None:
        """Normalise, filter and hash every document; survivors go to ``kept.jsonl`` + array files."""
        import numpy as np
        from tqdm.auto import tqdm

        cfg = self.config
        near = cfg.dedup.near
        bands, _ = cfg.dedup.lsh()
        work = self.work
        keys: list[Any] = []
        counts: list[Any] = []
        # Per kept document: where its line starts in kept.jsonl and its text's size. They go to
        # files, not memory (8 bytes per document each); pass 2 reads them back in order.
        position = 0
        n_kept = 0
        files = {
            "offsets": open(work / "offsets.i64", "wb"),  # noqa: SIM115
            "sizes": open(work / "sizes.i64", "wb"),  # noqa: SIM115
            "kept": open(work / "kept.jsonl", "wb"),  # noqa: SIM115
            "sig": open(work / "signatures.u32", "wb"),  # noqa: SIM115
            "sh": open(work / "shingles.u32", "wb"),  # noqa: SIM115
            **{f"band{b}": open(work / f"band-{b:03d}.u64", "wb") for b in range(bands if near else 0)},  # noqa: SIM115
        }
        pool = self._pool()  # (before the progress bar starts its monitor thread)
        bar = tqdm(
            total=self.source.text_bytes,
            unit="B",
            unit_scale=True,
            desc="clean",
            disable=None if self.progress else True,
        )
        try:
            texts = lambda batch: [d.text for d in batch]  # noqa: E731
            for batch, res in _in_order(self._batches(), _clean_job, pool, 2 * self.workers, texts):
                for stage, sec in res.seconds.items():
                    self.worker_seconds[stage] += sec
                t = time.process_time()
                self.lines_dropped += res.lines_dropped
                kept_iter = iter(res.kept_texts)
                offsets, sizes = array.array("q"), array.array("q")
                for doc, reason, value in zip(batch, res.reasons, res.values):
                    nbytes = len(doc.text.encode("utf-8"))
                    self.docs_in += 1
                    self.bytes_in += nbytes
                    if reason is not None:
                        wanted = self.removed.wants_example(reason)
                        self.removed.add(
                            reason, nbytes, _example(doc.where, doc.text, value) if wanted else None
                        )
                        self._write_removed(reason, doc.where, _record(doc, doc.text, value=value), nbytes)
                        continue
                    text = next(kept_iter)
                    line = (json.dumps(_record(doc, text), ensure_ascii=False) + "\n").encode("utf-8")
                    files["kept"].write(line)
                    offsets.append(position)
                    sizes.append(len(text.encode("utf-8")))
                    position += len(line)
                n_kept += len(sizes)
                offsets.tofile(files["offsets"])
                sizes.tofile(files["sizes"])
                if res.keys is not None:
                    keys.append(res.keys)
                if near and res.bands is not None:
                    for b in range(bands):
                        files[f"band{b}"].write(np.ascontiguousarray(res.bands[:, b]).tobytes())
                    counts.append(res.shingle_counts)
                    if res.shingles is not None:
                        files["sh"].write(res.shingles.tobytes())
                    if res.signatures is not None:
                        files["sig"].write(res.signatures.tobytes())
                bar.update(sum(len(d.text) for d in batch))
                self.timer["write_kept"] += time.process_time() - t
        finally:
            bar.close()
            for f in files.values():
                f.close()
            if pool is not None:
                pool.terminate()
                pool.join()
        self.n_kept = n_kept
        self.keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)
        self.shingle_counts = np.concatenate(counts) if counts else np.zeros(self.n_kept, dtype=np.uint32)

    # ---------------------------------------------------------------- dedup
    def deduplicate(self) -> None:
        """Mark exact copies, then confirmed near-copies of earlier documents (``dup_of`` >= 0)."""
        import numpy as np

        from scratchllm.data import dedup as D

        t = time.process_time()
        cfg = self.config.dedup
        n = self.n_kept
        self.exact_of = np.full(n, -1, dtype=np.int64)
        self.near_of = np.full(n, -1, dtype=np.int64)
        self.near_score = np.zeros(n, dtype=np.float32)
        if cfg.exact and n:
            self.exact_of = D.duplicate_of_earlier(self.keys)
        info: dict[str, Any] = {"documents": n, "exact_duplicates": int((self.exact_of >= 0).sum())}
        if cfg.near and n:
            bands, rows = cfg.lsh()
            alive = (self.exact_of < 0) & (self.shingle_counts > 0)
            columns = (np.fromfile(self.work / f"band-{b:03d}.u64", dtype=np.uint64) for b in range(bands))
            pairs = D.candidate_pairs(columns, alive)
            similarity = self._similarity(cfg)
            self.near_of, self.near_score, checked = D.verified_duplicates(
                pairs, n, cfg.threshold, similarity
            )
            info.update(
                near_duplicates=int((self.near_of >= 0).sum()),
                candidate_pairs=len(pairs),
                pairs_checked=checked,
                bands=bands,
                rows=rows,
                num_perm=cfg.num_perm,
                threshold=cfg.threshold,
                shingle_size=cfg.ngram,
                verify=cfg.verify,
                candidate_probability_at_threshold=round(
                    float(D.candidate_probability(cfg.threshold, bands, rows)), 4
                ),
            )
        self.dedup_info = info
        self.timer["dedup"] = time.process_time() - t

    def _similarity(self, cfg: DedupConfig) -> Any:
        """A function ``(i, j) -> similarity`` reading shingle sets (or signatures) from disk."""
        import numpy as np

        from scratchllm.data import dedup as D

        if cfg.verify == "exact":
            ends = np.cumsum(self.shingle_counts, dtype=np.int64)
            path, starts, itemsize = self.work / "shingles.u32", ends - self.shingle_counts, 4
            width = None
        else:
            path, itemsize, width = self.work / "signatures.u32", 4, cfg.num_perm
        f = open(path, "rb")  # noqa: SIM115 - closed by the finaliser below
        self._close_later = f

        @functools.lru_cache(maxsize=1024)
        def load(i: int) -> Any:
            if width is None:
                f.seek(int(starts[i]) * itemsize)
                return np.fromfile(f, dtype=np.uint32, count=int(self.shingle_counts[i]))
            f.seek(i * width * itemsize)
            return np.fromfile(f, dtype=np.uint32, count=width)

        if cfg.verify == "exact":
            return lambda i, j: D.jaccard(load(i), load(j))
        return lambda i, j: D.signature_similarity(load(i), load(j))

    # ---------------------------------------------------------------- pass 2
    def write_shards(self, writer: _ShardWriter) -> None:
        """Copy the surviving lines of ``kept.jsonl`` into the shards; record dedup examples."""
        import numpy as np

        t = time.process_time()
        if hasattr(self, "_close_later"):
            self._close_later.close()
        removed = self.removed
        # The partners of the examples shown: their sources are picked up on the way (partner < doc).
        want: dict[int, str] = {}
        for of in (self.exact_of, self.near_of):
            for i in np.flatnonzero(of >= 0)[: self.config.examples].tolist():
                want[int(of[i])] = ""
        keep_all = self.removed_writer is not None
        work = self.work
        with (
            open(work / "kept.jsonl", "rb") as f,
            open(work / "kept.jsonl", "rb") as partners,
            open(work / "offsets.i64", "rb") as offsets,
            open(work / "sizes.i64", "rb") as sizes_file,
        ):

            def partner_where(i: int) -> str:
                if want.get(i):
                    return want[i]
                offsets.seek(8 * i)
                partners.seek(int(np.frombuffer(offsets.read(8), dtype=np.int64)[0]))
                return _where(json.loads(partners.readline()))

            sizes = np.zeros(0, dtype=np.int64)
            base = 0
            for i, line in enumerate(f):
                if i - base >= len(sizes):  # the next block of text sizes (read in order, 1 MB at a time)
                    base, sizes = i, np.fromfile(sizes_file, dtype=np.int64, count=1 << 17)
                if i in want:
                    want[i] = _where(json.loads(line))
                nbytes = int(sizes[i - base])
                for rule, of in (("exact_duplicate", self.exact_of), ("near_duplicate", self.near_of)):
                    if of[i] < 0:
                        continue
                    ex = None
                    if removed.wants_example(rule) or keep_all:
                        rec = json.loads(line)
                        extra: dict[str, Any] = {"duplicate_of": partner_where(int(of[i]))}
                        if rule == "near_duplicate":
                            extra["jaccard"] = round(float(self.near_score[i]), 4)
                        if removed.wants_example(rule):
                            ex = _example(_where(rec), rec["text"], **extra)
                        self._write_removed(rule, _where(rec), {**rec, **extra}, nbytes)
                    removed.add(rule, nbytes, ex)
                    break
                else:
                    writer.write(line, nbytes)
        self.timer["write_shards"] = time.process_time() - t


def _record(doc: Document, text: str, **extra: Any) -> dict[str, Any]:
    """A JSON line of the output: ``{"text", "source", "line"}`` (line only for records)."""
    record: dict[str, Any] = {"text": text, "source": doc.source}
    if doc.line is not None:
        record["line"] = doc.line
    record.update({k: v for k, v in extra.items() if v is not None})
    return record


def _where(record: dict[str, Any]) -> str:
    return record["source"] if record.get("line") is None else f"{record['source']}:{record['line']}"


def clean(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: CleanConfig | None = None,
    *,
    text_field: str = "text",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    on_error: str = "fail",
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
    ignore_dirs: Sequence[str | os.PathLike] = (),
) -> dict[str, Any]:
    """Clean ``inputs`` into ``out_dir`` (JSONL shards + ``report.json``); returns the report.

    ``ignore_dirs``: more directories whose files are never read (``out_dir`` never is).

    ``workers``: None = one per core (up to 8) for corpora over :data:`POOL_MIN_BYTES`, else
    in-process; 0 or 1 = in-process. Raises :class:`ScratchLLMError` for anything the user can
    fix; nothing in ``out_dir`` is replaced unless the whole run succeeds (``force`` is needed
    when it already holds files).
    """
    from scratchllm import __version__
    from scratchllm.io import TMP_PREFIX, atomic_write_json, ensure_empty_dir

    t_start = time.perf_counter()
    config = (config or CleanConfig()).validated()
    if not inputs:
        raise ScratchLLMError("give at least one input file or directory to clean")
    if workers is not None and workers < 0:
        raise ScratchLLMError(f"--workers must be >= 0, got {workers}")
    out = Path(out_dir)
    ensure_empty_dir(out, force=force, create=False)
    source = Inputs(
        inputs,
        text_field=text_field,
        include=include,
        exclude=exclude,
        on_error=on_error,
        ignore_dirs=[out, *ignore_dirs],
    )
    t = time.process_time()
    source.scan(progress=progress)
    scan_seconds = time.process_time() - t
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if source.text_bytes >= POOL_MIN_BYTES else 1
    workers = max(1, workers)

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    work = out / f"{TMP_PREFIX}clean-work-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    writer = _ShardWriter(out, config.shard_bytes, config.compress)
    run = _Run(source, config, work, workers, progress)
    run.timer["scan"] = scan_seconds
    if config.keep_removed:
        run.removed_writer = _ShardWriter(out, config.shard_bytes, config.compress, stem="removed")
    writers = [w for w in (writer, run.removed_writer) if w is not None]
    try:
        if config.boilerplate:
            run.find_boilerplate()
        run.filter_and_hash()
        run.deduplicate()
        run.write_shards(writer)
        report = _report(run, writer, out, __version__, time.perf_counter() - t_start)
        for w in writers:
            w.sync()
        # From here the old output is replaced: drop its report first (incomplete until the new one).
        (out / "report.json").unlink(missing_ok=True)
        for w in writers:
            w.commit()
        if run.removed_writer is None:
            for old in out.glob("removed-*.jsonl*"):
                old.unlink()
        atomic_write_json(out / "report.json", report)
    except BaseException:
        for w in writers:
            w.discard()
        shutil.rmtree(work, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return report


def _report(run: _Run, writer: _ShardWriter, out: Path, version: str, seconds: float) -> dict[str, Any]:
    summary = run.source.summary()
    removed = run.removed.to_list()
    kept_docs = sum(s["documents"] for s in writer.shards)
    kept_bytes = sum(s["bytes"] for s in writer.shards)
    assert run.docs_in == kept_docs + run.removed.total, (run.docs_in, kept_docs, run.removed.total)
    mb_in = run.bytes_in / 1e6
    stages = {
        "scan": run.timer["scan"],
        "read": run.timer["read"],
        **({"boilerplate_pass_wall": run.timer["boilerplate"]} if run.config.boilerplate else {}),
        "normalize": run.worker_seconds["normalize"],
        "quality": run.worker_seconds["quality"],
        "dedup_hashing": run.worker_seconds["dedup_hashing"],
        "dedup": run.timer["dedup"],
        "write": run.timer["write_kept"] + run.timer["write_shards"],
    }
    timings = {
        k: {"cpu_seconds": round(v, 3), "mb_per_s": round(mb_in / v, 1) if v > 0 else None}
        for k, v in stages.items()
    }
    return {
        "kind": CLEAN_REPORT_KIND,
        "format_version": FORMAT_VERSION,
        "created_by": f"scratchllm {version}",
        "out_dir": str(out),
        "documents_in": run.docs_in,
        "bytes_in": run.bytes_in,
        "documents_kept": kept_docs,
        "bytes_kept": kept_bytes,
        "documents_removed": run.removed.total,
        "removed_by_rule": {r["rule"]: r["documents"] for r in removed},
        "removed": removed,
        "boilerplate": {**run.boiler_info, "lines_removed": run.lines_dropped},
        "dedup": run.dedup_info,
        "input_errors": summary["input_errors"],
        "inputs": summary["files"],
        "skipped_files": summary["skipped_files"],
        "skipped_files_count": summary["skipped_files_count"],
        "text_field": run.source.text_field,
        "config": run.config.to_dict(),
        "shards": writer.shards,
        "removed_shards": run.removed_writer.shards if run.removed_writer is not None else [],
        "workers": run.workers,
        "timings": timings,
        "seconds": round(seconds, 3),
    }


def report_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table: what each stage and rule removed, and what was kept."""
    n_in, b_in = report["documents_in"], report["bytes_in"]

    def row(name: str, docs: int, nbytes: int) -> str:
        share = f"{100 * docs / n_in:5.1f} %" if n_in else "    - "
        return f"  {name:<22} {docs:>12,} {share}  {nbytes / 1e6:>12,.2f}"

    lines = [f"  {'':<22} {'documents':>12} {'':>7}  {'MB':>12}", row("in", n_in, b_in)]
    for r in report["removed"]:
        if r["documents"]:
            lines.append(row(f"- {r['rule']}", r["documents"], r["bytes"]))
    lines.append(row("= kept", report["documents_kept"], report["bytes_kept"]))
    idle = [r["rule"] for r in report["removed"] if not r["documents"]]
    if idle:
        lines.append(f"  removed nothing: {', '.join(idle)}")
    errors = report["input_errors"]
    if errors.get("count"):
        kinds = ", ".join(f"{k} {v:,}" for k, v in errors["by_kind"].items())
        lines.append(f"  bad input records skipped: {errors['count']:,} ({kinds})")
    if report["boilerplate"].get("enabled"):
        lines.append(
            f"  boilerplate lines removed: {report['boilerplate']['lines_removed']:,} "
            f"({report['boilerplate']['distinct_lines']:,} distinct lines)"
        )
    return "\n".join(lines)
