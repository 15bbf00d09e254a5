"""Serving: aggregate tokens/s of ``scratchllm serve`` at 1, 4 and 16 concurrent streams.

    python -m benchmarks.run --only serve            # quick: 2-layer GPT-2 shape, 8 tokens each
    python -m benchmarks.run --full --only serve     # GPT-2 124M shape, 64 tokens each

A real server process (``scratchllm serve --max-batch 16``, fp32 and ``--int8``) on a run directory
with random GPT-2-shaped weights and a character tokenizer of GPT-2's vocabulary size (50,257
ids: the output head costs what GPT-2's costs; no tokenizer file download is needed). The client
sends 16 streamed ``/v1/completions`` requests (an 8-token prompt given as ids, greedy,
``logit_bias`` banning ``<|endoftext|>`` so every request generates exactly ``max_tokens``):

* **peer**: the same 16 requests one after another (concurrency 1) — what a server without
  batching would give, at best;
* **ours**: the same requests with 4 and with 16 in flight at once; continuous batching advances
  all running streams in one forward pass per step, so the weights are read once for all rows.

Aggregate tokens/s = all generated tokens / wall time of the 16 requests. Levels take turns
(1, 4, 16, 1, 4, 16, …) and the median of the repeats is reported; time to first token (TTFT) is
the median over the requests of a level, from sending the request to its first text chunk.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import Row

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (1, 4, 16)


def _make_run(out: Path, n_layer: int, context_length: int) -> None:
    import torch

    from scratchllm.model.config import GPTConfig, get_preset
    from scratchllm.model.gpt import GPTModel
    from scratchllm.runs import save_run_files
    from scratchllm.tokenizer import CharTokenizer

    torch.manual_seed(0)
    cfg = GPTConfig(**{**get_preset("gpt2")["model"], "n_layer": n_layer, "context_length": context_length})
    # 50,256 printable characters + <|endoftext|> = GPT-2's 50,257 ids
    tok = CharTokenizer([chr(0x100 + i) for i in range(cfg.vocab_size - 1)])
    save_run_files(out, GPTModel(cfg), arch="gpt", model_config=cfg, tokenizer=tok)


class _ServerProcess:
    def __init__(self, run: Path, *flags: str) -> None:
        cmd = [sys.executable, "-m", "scratchllm", "serve", "--model", str(run), "--port", "0"]
        cmd += ["--max-batch", "16", "--log-level", "warning", *flags]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
        )
        self.port = 0
        self.lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stderr:
                self.lines.append(line)
                m = re.search(r"listening on http://[^:]+:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                if "ready:" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(600) or self.proc.poll() is not None:
            raise RuntimeError("server did not start:\n" + "".join(self.lines[-20:]))

    def stream(self, body: dict[str, Any]) -> tuple[float, int]:
        """One streamed completion: (seconds to its first text, completion tokens)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        t0 = time.perf_counter()
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
        ttft, tokens = None, 0
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif ttft is None and chunk["choices"] and chunk["choices"][0]["text"]:
                ttft = time.perf_counter() - t0
        conn.close()
        return ttft or 0.0, tokens

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _level(server: _ServerProcess, bodies: list[dict[str, Any]], concurrency: int) -> tuple[float, float]:
    """(aggregate tokens/s, median TTFT) of all ``bodies`` with ``concurrency`` in flight."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(server.stream, bodies))
    wall = time.perf_counter() - t0
    tokens = sum(n for _, n in results)
    expected = sum(b["max_tokens"] for b in bodies)
    if tokens != expected:
        raise RuntimeError(f"generated {tokens} tokens, expected {expected}")
    return tokens / wall, statistics.median(t for t, _ in results)


def _measure(server: _ServerProcess, new_tokens: int, repeat: int) -> dict[int, dict[str, float]]:
    bodies = [
        {
            "model": "bench",
            "prompt": [1 + k, 2, 3, 4, 5, 6, 7, 8],
            "max_tokens": new_tokens,
            "temperature": 0,
            "logit_bias": {"50256": -100},
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for k in range(16)
    ]
    _level(server, bodies[:4], 4)  # warm-up
    runs: dict[int, list[tuple[float, float]]] = {c: [] for c in LEVELS}
    for _ in range(repeat):
        for c in LEVELS:
            runs[c].append(_level(server, bodies, c))
    return {
        c: {
            "tokens_per_s": statistics.median(r[0] for r in rs),
            "ttft_s": statistics.median(r[1] for r in rs),
            "runs_tokens_per_s": [round(r[0], 2) for r in rs],
        }
        for c, rs in runs.items()
    }


def run(quick: bool = True) -> list[Row]:
    n_layer, ctx, new_tokens, repeat = (2, 128, 8, 1) if quick else (12, 1024, 64, 2)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "bench"
        _make_run(run_dir, n_layer, ctx)
        for label, flags in (("fp32", ()), ("int8", ("--int8",))):
            server = _ServerProcess(run_dir, *flags)
            try:
                m = _measure(server, new_tokens, repeat)
            finally:
                server.close()
            what = f"GPT-2 124M shape ({n_layer} layers), 16 requests × {new_tokens} tokens, greedy"
            extra = {
                "n_layer": n_layer,
                "new_tokens": new_tokens,
                "levels": {str(c): v for c, v in m.items()},
                "ttft_s": {str(c): round(v["ttft_s"], 3) for c, v in m.items()},
            }
            for c, target in ((4, ""), (16, "≥ 6×")):
                rows.append(
                    Row(
                        name=f"serve {label}, {c} concurrent streams, {what}",
                        ours=m[c]["tokens_per_s"],
                        peer=m[1]["tokens_per_s"],
                        unit="aggregate tokens/s (median)",
                        peer_name="same requests one after another",
                        target=target,
                        met=(m[16]["tokens_per_s"] >= 6 * m[1]["tokens_per_s"]) if c == 16 else None,
                        extra=extra,
                    )
                )
    return rows


if __name__ == "__main__":
    from benchmarks.common import format_table

    print(format_table(run(quick="--full" not in sys.argv)))
