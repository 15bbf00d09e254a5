"""Memory: peak RSS of ``scratchllm prepare`` on a small and a large corpus, and of training.

    python -m benchmarks.run --only memory            # quick: 1, 5 and 10 MB corpora
    python -m benchmarks.run --full --only memory     # 1, 10 and 100 MB corpora

``prepare`` streams its input in chunks and writes the shards as it goes, so its peak memory should
not grow with the corpus. A corpus of ~5 MB already fills its reading window (4 one-MB chunks and
their token ids: ~15 MB more than a 1 MB corpus needs); beyond that the peak stays put, so the row
compares the largest corpus with the middle one (ratio near 1 = flat) and names the 1 MB figure.
The corpora are tinyshakespeare repeated to the size, written to a temporary directory and encoded
with a char tokenizer (``--workers 1``, so the peak is that of the one process doing all the work).

Each command runs as a child process as a user would run it; its peak RSS is the child's
``ru_maxrss`` (``resource.getrusage(RUSAGE_CHILDREN)``, taken right after that child alone exits).
The training row runs ``scratchllm train --preset char-shakespeare`` for a few steps and compares
with a bare ``python -c "import torch"`` (the floor any PyTorch program pays).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import SHARED_DATA, Row

SCRATCHLLM = [sys.executable, "-m", "scratchllm"]


def child_peak_rss_mb(cmd: list[str], **kwargs) -> tuple[float, float]:
    """Run ``cmd`` to completion; return (its peak RSS in MB, wall seconds).

    ``RUSAGE_CHILDREN`` reports the maximum over all children waited for so far, so each command is
    run from a fresh helper process that reports only its own child.
    """
    probe = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
        "wall = time.perf_counter() - t\n"
        "if r.returncode: sys.stderr.write(r.stderr); sys.exit(r.returncode)\n"
        "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, wall]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *cmd], capture_output=True, text=True, check=False, **kwargs
    )
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    import json

    kib, wall = json.loads(out.stdout.strip().splitlines()[-1])
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024
    return kib / scale, wall


def _corpus(path: Path, size_mb: float, text: str) -> Path:
    """``text`` repeated until the file holds ``size_mb`` MB (whole copies, then a cut at a newline)."""
    target = int(size_mb * 1_000_000)
    with open(path, "w", encoding="utf-8") as f:
        written = 0
        while written + len(text) <= target:
            f.write(text)
            written += len(text)
        rest = text[: max(0, target - written)]
        f.write(rest[: rest.rfind("\n") + 1])
    return path


def run(quick: bool = True) -> list[Row]:
    text = (SHARED_DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")
    # The first few MB fill prepare's fixed reading window; flat means no growth after that, so the
    # verdict compares the two largest sizes (the smallest is reported too).
    sizes = (1, 5, 10) if quick else (1, 10, 100)
    small_mb, mid_mb, big_mb = sizes
    rows: list[Row] = []
    env = {**os.environ, "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory(prefix="scratchllm-bench-mem-") as tmp:
        tmp = Path(tmp)
        tok = tmp / "char.json"
        subprocess.run(
            [*SCRATCHLLM, "tokenizer", "train", "--kind", "char", "--special-tokens", "--quiet"]
            + ["--input", str(SHARED_DATA / "tinyshakespeare.txt"), "--out", str(tok)],
            check=True,
            capture_output=True,
            env=env,
        )
        rss: dict[float, float] = {}
        walls: dict[float, float] = {}
        for mb in sizes:
            corpus = _corpus(tmp / f"corpus-{mb}mb.txt", mb, text)
            rss[mb], walls[mb] = child_peak_rss_mb(
                [*SCRATCHLLM, "prepare", "--tokenizer", str(tok), "--input", str(corpus)]
                + ["--out", str(tmp / f"data-{mb}mb"), "--workers", "1", "--quiet"],
                env=env,
            )
            corpus.unlink()
        rows.append(
            Row(
                name=f"prepare peak RSS, {big_mb} MB corpus (peer: {mid_mb} MB; {small_mb} MB: "
                f"{rss[small_mb]:.0f} MB)",
                ours=rss[big_mb],
                peer=rss[mid_mb],
                unit="MB",
                peer_name=f"prepare, {mid_mb} MB corpus",
                higher_is_better=False,
                target="flat: ratio ≥ 0.9",
                met=rss[mid_mb] / rss[big_mb] >= 0.9,
                extra={
                    "peak_rss_mb": {f"{k} MB": round(v, 1) for k, v in rss.items()},
                    "wall_s": {f"{k} MB": round(v, 2) for k, v in walls.items()},
                    "workers": 1,
                },
            )
        )

        # Training the small preset for a few steps, from the 1 MB corpus's shards.
        steps = 10 if quick else 50
        train_rss, train_wall = child_peak_rss_mb(
            [*SCRATCHLLM, "train", "--data", str(tmp / f"data-{small_mb}mb"), "--out", str(tmp / "run")]
            + ["--preset", "char-shakespeare", "--quiet", "--set", f"max_steps={steps}"]
            + ["--set", "eval_steps=2", "--set", "sample_interval=0"],
            env=env,
        )
        torch_rss, _ = child_peak_rss_mb([sys.executable, "-c", "import torch"], env=env)
        rows.append(
            Row(
                name=f"train char-shakespeare preset, {steps} steps, peak RSS",
                ours=train_rss,
                peer=torch_rss,
                unit="MB",
                peer_name='python -c "import torch"',
                higher_is_better=False,
                extra={"wall_s": round(train_wall, 2), "steps": steps, "when": time.strftime("%H:%M:%S")},
            )
        )
    return rows


if __name__ == "__main__":
    from benchmarks.common import format_table

    print(format_table(run(quick="--full" not in sys.argv)))
