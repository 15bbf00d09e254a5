"""Shared helpers for the benchmarks: robust timing, the machine's matmul peak, tables, results.

Machine noise is large on a shared 2-core box, so every measurement warms up first, repeats,
and reports the median (the typical cost) and the min (the cost without interference).
Every benchmark row compares scratchllm with a peer measured *in the same process run*.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: Set by ``benchmarks.run --results-dir`` (the test suite writes to a temporary directory).
RESULTS_ENV = "SCRATCHLLM_BENCH_RESULTS"
#: Reference data (tinyshakespeare, GPT-2's vocabulary): ../shared/data, or $SCRATCHLLM_SHARED_DATA.
SHARED_DATA = Path(
    os.environ.get("SCRATCHLLM_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)


@dataclass
class Timing:
    median: float
    min: float
    runs: list[float] = field(default_factory=list)
    #: median CPU seconds of this process per call (all threads): on a shared machine it shows the
    #: work done, which wall time blurs with waiting for a core.
    cpu_median: float | None = None


def time_it(fn: Callable[[], Any], *, repeat: int = 5, warmup: int = 1, min_time: float = 0.0) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeat`` timed calls (at least ``min_time`` s)."""
    for _ in range(warmup):
        fn()
    runs: list[float] = []
    start_all = time.perf_counter()
    while len(runs) < repeat or time.perf_counter() - start_all < min_time:
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
        if len(runs) >= 10 * repeat:
            break
    return Timing(statistics.median(runs), min(runs), runs)


def time_interleaved(
    fns: dict[str, Callable[[], Any]], *, repeat: int = 5, warmup: int = 1
) -> dict[str, Timing]:
    """Time several functions taking turns (a, b, a, b, ...) so load spikes hit each side alike.

    On a shared machine a burst of someone else's work can last seconds; timing all of ``a`` and
    then all of ``b`` would charge that burst to one side only.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    runs: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    out = {}
    for name, r in runs.items():
        out[name] = Timing(statistics.median(r), min(r), r, statistics.median(cpu[name]))
    return out


@dataclass
class Row:
    """One comparison: ``ratio`` is how many times better ours is (>1 is better for us)."""

    name: str
    ours: float
    peer: float
    unit: str
    peer_name: str
    higher_is_better: bool = True
    target: str = ""
    met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        if self.higher_is_better:
            return self.ours / self.peer if self.peer else float("inf")
        return self.peer / self.ours if self.ours else float("inf")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


def matmul_peak_gflops(n: int = 2048, repeat: int = 5) -> float:
    """This machine's fp32 matmul throughput (GFLOP/s) from a large ``torch.mm``, measured now."""
    import torch

    a = torch.randn(n, n)
    b = torch.randn(n, n)
    t = time_it(lambda: torch.mm(a, b), repeat=repeat, warmup=2)
    return 2 * n**3 / t.min / 1e9


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 1024 / 1024


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    # 1-minute load average at the time of the run: above the core count, timings are inflated.
    if hasattr(os, "getloadavg"):
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def format_table(rows: list[Row]) -> str:
    """A markdown table: what, ours, peer, ratio, unit, target."""
    lines = [
        "| benchmark | scratchllm | peer | peer value | ratio (×, >1 = ours better) | unit | target | met |",
        "|---|---:|---|---:|---:|---|---|---|",
    ]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(
            f"| {r.name} | {r.ours:,.3g} | {r.peer_name} | {r.peer:,.3g} | {r.ratio:.2f} | {r.unit} "
            f"| {r.target} | {met} |"
        )
    return "\n".join(lines)


def results_dir() -> Path:
    """Where results go: ``$SCRATCHLLM_BENCH_RESULTS`` if set, else ``benchmarks/results``."""
    d = Path(os.environ.get(RESULTS_ENV) or RESULTS_DIR)
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_results(name: str, rows: list[Row], extra: dict[str, Any] | None = None) -> Path:
    """Write ``<results dir>/<name>.json`` (machine info, rows, extra)."""
    path = results_dir() / f"{name}.json"
    payload = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "rows": [r.to_dict() for r in rows],
        **(extra or {}),
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path
