"""A tiny run trained here with the real CLI (tokenizer, prepare, train keeping every checkpoint)
and ``scratchllm serve`` on it: what the playground tests look at."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_helpers import API_KEY, Server, dialogue_text, start_process, stop_process, wait_healthy  # noqa: E402

#: Long enough for a 256-token attention map.
CONTEXT = 288


@pytest.fixture(scope="session")
def play_run(tmp_path_factory) -> Path:
    from scratchllm.cli.main import main

    root = tmp_path_factory.mktemp("playground")
    text = root / "text.txt"
    text.write_text(dialogue_text() * 6, encoding="utf-8")
    assert (
        main(["tokenizer", "train", "--kind", "char", "--input", str(text), "--out", str(root / "char.json")])
        == 0
    )
    assert (
        main(
            [
                "prepare",
                "--tokenizer",
                str(root / "char.json"),
                "--input",
                str(text),
                "--out",
                str(root / "data"),
            ]
        )
        == 0
    )
    run = root / "run"
    sets = {
        "context_length": CONTEXT,
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "batch_size": 4,
        "max_steps": 60,
        "save_interval": 20,
        "eval_interval": 20,
        "eval_steps": 2,
        "keep_checkpoints": 10,
        "threads": 1,
        "lr": 0.006,
    }
    args = ["train", "--data", str(root / "data"), "--out", str(run), "--preset", "tiny"]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    assert main(args) == 0
    return run


def _serve(run: Path, *args: str) -> Server:
    proc, url, lines = start_process(run, *args, env={"OMP_NUM_THREADS": "1"})
    wait_healthy(url, proc)
    return Server(url, lambda: stop_process(proc), lambda: "".join(lines))


@pytest.fixture(scope="session")
def play_server(play_run) -> Server:
    """No API key: what a learner runs on their laptop."""
    server = _serve(play_run)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def keyed_server(play_run) -> Server:
    server = _serve(play_run, "--api-key", API_KEY)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    """Where screenshots go: $SCRATCHLLM_ARTIFACTS/playground, else a pytest temp directory."""
    base = os.environ.get("SCRATCHLLM_ARTIFACTS")
    out = Path(base) / "playground" if base else tmp_path_factory.mktemp("playground-shots")
    out.mkdir(parents=True, exist_ok=True)
    return out
