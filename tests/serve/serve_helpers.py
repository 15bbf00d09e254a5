"""Helpers of the server tests: tiny training, tokenizers, starting and talking to servers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch

from scratchllm.model.gpt import GPTModel, lm_loss
from scratchllm.tokenizer import CharTokenizer

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-123"

DIALOGUE = [
    ("hello", "hello there, how are you?"),
    ("what colour is the sky?", "the sky is blue."),
    ("name a fruit", "an apple is a fruit."),
    ("count to five", "one, two, three, four, five."),
    ("what is water?", "water is wet."),
    ("say something nice", "you are doing well."),
    ("where do fish live?", "fish live in the sea."),
    ("what do cats say?", "cats say meow."),
]
PROSE = (
    "The quick brown fox jumps over the lazy dog. A small model learns to spell one character at a "
    "time, and it writes the same words again and again. The river runs to the sea, and the sea is "
    "wide and deep. "
)


def dialogue_text() -> str:
    lines = []
    for q, a in DIALOGUE:
        lines.append(f"User: {q}\nAssistant: {a}\n")
    return "".join(lines) * 3 + PROSE * 4


def train_tiny(model: GPTModel, ids: list[int], steps: int, *, seq: int = 64, seed: int = 0) -> GPTModel:
    """A few hundred AdamW steps on random windows of ``ids`` (the test's own tiny loop)."""
    data = torch.tensor(ids, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (16,), generator=g)
        x = torch.stack([data[s : s + seq] for s in starts])
        y = torch.stack([data[s + 1 : s + seq + 1] for s in starts])
        loss = lm_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


EMOJI_TEXT = "I like 🍕 and 😀, 日本語 too. " * 30


def ascii_tokenizer() -> CharTokenizer:
    return CharTokenizer([chr(c) for c in range(32, 127)] + ["\n"])


# ============================================================================ servers
class Server:
    """A running ``scratchllm serve``; ``url`` is its base address."""

    def __init__(self, url: str, stop, log=lambda: "") -> None:
        self.url, self._stop, self.log = url, stop, log
        self.errors: list[BaseException] = []

    def get(self, path: str, key: str | None = API_KEY) -> tuple[int, dict | str]:
        return http("GET", self.url + path, key=key)

    def post(self, path: str, body, key: str | None = API_KEY, headers=None) -> tuple[int, dict | str]:
        return http("POST", self.url + path, body, key=key, headers=headers)

    def metric(self, name: str) -> float:
        _, text = self.get("/metrics")
        m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
        assert m, f"{name} not in /metrics"
        return float(m.group(1))

    def wait_metric(self, name: str, value: float, within: float) -> float:
        """Seconds until ``name`` reads ``value`` (fails after ``within`` seconds)."""
        t0 = time.monotonic()
        while self.metric(name) != value:
            assert time.monotonic() - t0 < within, f"{name} is {self.metric(name)}, not {value}"
            time.sleep(0.02)
        return time.monotonic() - t0

    def stop(self) -> None:
        self._stop()


def http(method: str, url: str, body=None, *, key: str | None = None, headers=None, timeout: float = 60):
    """One request with the standard library: (status, parsed JSON or text)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw, ctype = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as err:
        status, raw, ctype = err.code, err.read(), err.headers.get("content-type", "")
    text = raw.decode("utf-8")
    return status, json.loads(text) if "json" in ctype else text


def wait_healthy(url: str, proc=None, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if http("GET", url + "/health", timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not become healthy")


def start_process(
    model: Path, *args: str, env: dict | None = None
) -> tuple[subprocess.Popen, str, list[str]]:
    """``python -m scratchllm serve --model MODEL --port 0 ARGS``; returns (process, url, stderr lines)."""
    cmd = [sys.executable, "-m", "scratchllm", "serve", "--model", str(model), "--port", "0", *args]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=full_env)
    lines: list[str] = []
    url: list[str] = []
    got = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m and not url:
                url.append(m.group(1))
                got.set()
        got.set()

    threading.Thread(target=read, daemon=True).start()
    got.wait(120)
    if not url:
        proc.kill()
        raise RuntimeError("server did not start:\n" + "".join(lines))
    return proc, url[0], lines


def stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_thread_server(model: Path, *, load=None, wait: bool = True, settings=None, **options) -> Server:
    """``serve()`` in a thread of the test process (cheaper than a process; still real HTTP).

    ``load`` replaces the model loader, ``settings`` the :class:`ServeSettings`; ``wait=False``
    returns before the model is ready."""
    from scratchllm.architectures import names_where
    from scratchllm.cli.common import load_model_for
    from scratchllm.serve.app import ServeSettings
    from scratchllm.serve.server import EngineOptions, serve

    port: list[int] = []
    started = threading.Event()
    stop = threading.Event()
    errors: list[BaseException] = []

    def default_load():
        return load_model_for(
            str(model), verb="serve", archs=names_where(generates_text=True), verb_hint="serve needs a GPT"
        )

    def run() -> None:
        try:
            serve(
                settings or ServeSettings(model_name=model.name),
                load or default_load,
                model,
                EngineOptions(**options),
                port=0,
                log_level="warning",
                on_started=lambda h, p: (port.append(p), started.set()),
                stop=stop,
            )
        except BaseException as err:  # noqa: BLE001 - reported to the test
            errors.append(err)
            started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(60)
    if errors:
        raise errors[0]
    url = f"http://127.0.0.1:{port[0]}"
    if wait:
        wait_healthy(url)

    def halt() -> None:
        stop.set()
        thread.join(20)

    server = Server(url, halt)
    server.errors = errors
    return server
