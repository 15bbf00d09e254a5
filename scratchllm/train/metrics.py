"""What a run remembers about itself: ``metrics.jsonl`` and the ``loss.png`` plot.

``metrics.jsonl`` holds one JSON object per line, one line per event: ``"train"`` (every
``log_interval`` steps: loss, lr, tokens/s ...), ``"eval"`` (val_loss, perplexity, a sample),
``"skip"`` (a step thrown away because its loss or gradient was not finite, or spiked) and
``"stop"``. JSON Lines is append-only by design: each event is one ``write`` + ``flush``, so a
crash can at worst leave a torn *last* line, which :func:`read_metrics` ignores. On ``--resume``
the file is rewritten atomically without the events after the resumed step (they belonged to
the lost future), so the curves stay continuous.

Every ``train`` line also carries ``mfu``, the *model FLOPs utilisation*: the FLOPs the model's
arithmetic needs per second at the measured tokens/s (``6N + 12 L C T`` per token, see
``GPTModel.estimate_flops_per_token``) divided by the device's peak — a GPU's published dense
bf16/fp32 peak, or on a CPU the fp32 matmul throughput measured once per process (so 100 % means
"as fast as a big matmul on this machine").

``loss.png`` is re-drawn from that file with matplotlib (Agg, no display needed) and written
atomically: at the end of training, and at an evaluation when a minute has passed since the last
drawing (so short runs do not pay for plots they will redraw anyway).
"""

from __future__ import annotations

import functools
import io
import json
import math
import time
from pathlib import Path
from typing import Any

from scratchllm.device import peak_rss_mb  # noqa: F401  (logged with every train line)
from scratchllm.io import atomic_write_bytes, atomic_write_text
from scratchllm.runs import read_metrics  # the reader lives with the other run files

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"

#: Published dense peak FLOP/s (bf16 tensor cores; what training under autocast can reach).
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "A10": 125e12,
    "L4": 121e12,
    "L40": 181e12,
    "4090": 165e12,
    "3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


@functools.cache
def peak_flops(device_type: str, device_name: str = "") -> float | None:
    """The peak FLOP/s that MFU is measured against (None when unknown, e.g. MPS)."""
    if device_type == "cuda":
        for key, value in GPU_PEAK_FLOPS.items():
            if key in device_name:
                return value
        return None
    if device_type != "cpu":
        return None
    import torch

    n = 512
    g = torch.Generator().manual_seed(0)  # a private generator: training's random streams stay untouched
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - t0) / 4)
    return 2 * n**3 / best


def mfu(achieved_flops: float, device: Any) -> float | None:
    """Model FLOPs utilisation (0-1) of ``achieved_flops`` per second on ``device``."""
    import torch

    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = peak_flops(device.type, name)
    return round(achieved_flops / peak, 4) if peak else None


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so the file stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    """Append events to ``run_dir/metrics.jsonl``. Does nothing when ``enabled`` is False (ranks > 0)."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self._file = None

    def truncate_after(self, step: int) -> None:
        """Drop events after ``step`` (and any torn line): used when resuming from that step."""
        if not self.enabled or not self.path.exists():
            return
        self.close()  # the file is replaced: later events must go to the new one
        kept = [json.dumps(e) for e in read_metrics(self.path) if e.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def log(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        record = {"event": event, **{k: _clean(v) for k, v in fields.items()}}
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def plot_losses(metrics_path: str | Path, out_path: str | Path, *, title: str | None = None) -> bool:
    """Draw train and val loss against the step into ``out_path`` (PNG). False if nothing to plot."""
    events = read_metrics(metrics_path)
    train = [(e["step"], _number(e.get("loss"))) for e in events if e.get("event") == "train"]
    val = [(e["step"], _number(e.get("val_loss"))) for e in events if e.get("event") == "eval"]
    train = [(s, v) for s, v in train if v is not None]
    val = [(s, v) for s, v in val if v is not None]
    if not train and not val:
        return False

    # A bare Figure (no pyplot): renders with Agg straight to PNG bytes, needs no display and keeps
    # no global state, so it is safe to call from a training loop.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", linewidth=1.5, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title or "training curves")
    ax.grid(alpha=0.3)
    ax.legend()
    # Classification runs also log accuracy (train batches and val): a second y axis on the right.
    acc = {
        name: [(e["step"], _number(e.get("accuracy"))) for e in events if e.get("event") == event]
        for name, event in (("train accuracy", "train"), ("val accuracy", "eval"))
    }
    acc = {name: [(s, v) for s, v in pts if v is not None] for name, pts in acc.items()}
    if any(acc.values()):
        ax2 = ax.twinx()
        for (name, pts), style in zip(acc.items(), (":", "s--")):
            if pts:
                ax2.plot(*zip(*pts), style, label=name, color="tab:green" if "val" in name else "tab:olive")
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(0, 1.02)
        ax2.legend(loc="center right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(out_path, buf.getvalue())
    return True
