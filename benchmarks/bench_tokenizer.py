"""Tokenizer benchmarks: BPE training vs Hugging Face ``tokenizers``, encoding vs tiktoken.

    python -m benchmarks.bench_tokenizer            # quick sizes
    python -m benchmarks.bench_tokenizer --full     # tinyshakespeare x5, vocab 4,096

Rows (ours vs a peer, measured in the same process, runs interleaved so that load spikes on a
shared machine hit both sides alike; medians reported):

* BPE training time, vocab 4,096, tinyshakespeare x5 (5.6 MB) and x1 — peer: HF ``tokenizers``
  ``BpeTrainer`` with the ``ByteLevel`` pre-tokenizer and the same vocab size, trained from a file
  (its fastest input path here). Target: at most 2x the peer's time.
* The textbook floor: the naive recount-per-merge trainer vs the incremental one (1 MB, vocab 512).
* Encoding throughput (MB/s) with GPT-2's vocabulary: our ``encode`` (tiktoken fast path) and our
  pure-Python reference encoder, each vs a ``tiktoken.Encoding`` built from the same files.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import SHARED_DATA, Row

_CPU: dict[int, float] = {}


def _interleaved(fns: list[Callable[[], Any]], repeat: int) -> list[float]:
    """Median wall time of each function, running them in turn ``repeat`` times.

    The median CPU time (all threads of this process) of function ``k`` is left in ``_CPU[k]``:
    on a shared machine it shows the work done, which wall time blurs with waiting.
    """
    runs: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            runs[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    _CPU.clear()
    _CPU.update({k: round(statistics.median(c), 3) for k, c in enumerate(cpu)})
    return [statistics.median(r) for r in runs]


def _hf_trainer(path: Path, vocab_size: int) -> Callable[[], Any]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    def train() -> Any:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=["<|endoftext|>"],
            show_progress=False,
        )
        tok.train([str(path)], trainer)
        return tok

    return train


def bench_training(text: str, vocab_size: int, label: str, repeat: int) -> dict:
    from scratchllm.tokenizer.bpe import train_bpe

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        path.write_text(text, encoding="utf-8")
        ours, peer = _interleaved(
            [lambda: train_bpe(path.read_text(encoding="utf-8"), vocab_size), _hf_trainer(path, vocab_size)],
            repeat,
        )
    return Row(
        name=f"BPE train vocab {vocab_size:,}, {label} ({len(text.encode()) / 1e6:.1f} MB)",
        ours=round(ours, 3),
        peer=round(peer, 3),
        unit="s",
        peer_name="HF tokenizers BpeTrainer (ByteLevel)",
        higher_is_better=False,
        target="<= 2x HF time",
        met=ours <= 2 * peer,
        extra={"ours_cpu_s": _CPU[0], "peer_cpu_s": _CPU[1]},
    ).to_dict()


def bench_naive_floor(text: str, vocab_size: int) -> dict:
    from scratchllm.tokenizer.bpe import train_bpe, train_bpe_naive

    ours, peer = _interleaved(
        [lambda: train_bpe(text, vocab_size), lambda: train_bpe_naive(text, vocab_size)], 1
    )
    return Row(
        name=f"BPE train vocab {vocab_size}, {len(text.encode()) / 1e6:.1f} MB: incremental vs naive",
        ours=round(ours, 3),
        peer=round(peer, 3),
        unit="s",
        peer_name="naive recount-per-merge trainer (ours, textbook)",
        higher_is_better=False,
        target="faster than the naive floor",
        met=ours < peer,
        extra={"ours_cpu_s": _CPU[0], "peer_cpu_s": _CPU[1]},
    ).to_dict()


def bench_encoding(text: str, repeat: int) -> list[dict]:
    import tiktoken

    from scratchllm.tokenizer.gpt2 import load_gpt2_files

    gpt2 = SHARED_DATA / "gpt2"
    tok = load_gpt2_files(gpt2 / "encoder.json", gpt2 / "vocab.bpe")
    peer_enc = tiktoken.Encoding(
        "gpt2-peer",
        pat_str=tok.pattern,
        mergeable_ranks=dict(tok.ranks),
        special_tokens={"<|endoftext|>": 50256},
    )
    mb = len(text.encode()) / 1e6
    assert tok.encode(text) == peer_enc.encode_ordinary(text)
    fast, peer = _interleaved([lambda: tok.encode(text), lambda: peer_enc.encode_ordinary(text)], repeat)
    rows = [
        Row(
            name=f"encode GPT-2 vocab, {mb:.1f} MB (fast path)",
            ours=round(mb / fast, 2),
            peer=round(mb / peer, 2),
            unit="MB/s",
            peer_name="tiktoken",
            target=">= 0.9x tiktoken (it is tiktoken underneath)",
            met=mb / fast >= 0.9 * mb / peer,
        ).to_dict()
    ]

    def reference() -> None:
        tok._cache.clear()  # measure the algorithm, not a warm cache
        tok.encode_reference(text)

    ref, peer = _interleaved([reference, lambda: peer_enc.encode_ordinary(text)], 1)
    rows.append(
        Row(
            name=f"encode GPT-2 vocab, {mb:.1f} MB (pure-Python reference)",
            ours=round(mb / ref, 2),
            peer=round(mb / peer, 2),
            unit="MB/s",
            peer_name="tiktoken",
            target="(educational; not a target)",
        ).to_dict()
    )
    return rows


def run(quick: bool = True) -> list[dict]:
    shakespeare = (SHARED_DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")
    rows = []
    if quick:
        rows.append(bench_training(shakespeare, 1024, "tinyshakespeare x1", repeat=1))
        rows.append(bench_naive_floor(shakespeare[:100_000], 300))
        rows.extend(bench_encoding(shakespeare[:300_000], repeat=3))
    else:
        rows.append(bench_training(shakespeare * 5, 4096, "tinyshakespeare x5", repeat=3))
        rows.append(bench_training(shakespeare, 4096, "tinyshakespeare x1", repeat=3))
        rows.append(bench_naive_floor(shakespeare[:1_000_000], 512))
        rows.extend(bench_encoding(shakespeare, repeat=5))
    return rows


if __name__ == "__main__":
    from benchmarks.common import format_table
    from benchmarks.run import _as_row

    results = run(quick="--full" not in sys.argv[1:])
    print(format_table([_as_row(r) for r in results]))
