"""Kill the real ``scratchllm train`` at random instants; it must always resume, bit-exactly.

The training runs in a child process forked by ``crash_driver.py`` (the real CLI and loop; the
driver only pre-imports torch so a dozen restarts stay cheap, and slows each checkpoint file write
by 30 ms so that many kills land inside a save). After every SIGKILL a committed,
manifest-valid checkpoint must exist; resuming after each kill and finishing the run must give
weights and optimizer state bit-identical to one uninterrupted run. SIGTERM must save a checkpoint
at the current step and exit 0.

Threads are pinned to 1 so that every process computes in the same order (the thread count is
part of what bit-exact resume needs; see the README section "What survives a crash").
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from scratchllm import load, runs, weights
from scratchllm.train import checkpoint as ckpt

DRIVER = Path(__file__).with_name("crash_driver.py")
ROOT = Path(__file__).resolve().parents[2]
MAX_STEPS = 40
KILLS = 10
SAVE_DELAY = 0.03
TRAIN_ARGS = [
    "--preset", "tiny",
    "--set", f"max_steps={MAX_STEPS}",
    "--set", "save_interval=1",
    "--set", "eval_steps=0",
    "--set", "n_layer=1",
    "--set", "n_embd=32",
    "--set", "batch_size=4",
    "--set", "context_length=32",
    "--set", "dropout=0.1",  # dropout draws from the torch RNG: its state must survive too
    "--set", "log_interval=1",
    "--seed", "3",
]  # fmt: skip
COMMON_ARGS = ["--device", "cpu", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

pytestmark = pytest.mark.slow


@dataclass
class Zygote:
    """The driver process: forks one training run at a time and reports its pid and exit code."""

    proc: subprocess.Popen
    logs: Path
    runs: int = 0

    def start(self, data: Path, run: Path, *extra: str, delay: float = SAVE_DELAY) -> int:
        """A new run, or with ``--resume`` a continued one (which reuses the run's saved config)."""
        config = [] if "--resume" in extra else TRAIN_ARGS
        argv = ["train", "--data", str(data), "--out", str(run), *config, *COMMON_ARGS, *extra]
        self.runs += 1
        self.log = self.logs / f"run-{self.runs}.log"
        request = {"argv": argv, "log": str(self.log), "save_delay": delay}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        kind, pid = self.proc.stdout.readline().split()
        assert kind == "pid", kind
        self.pid = int(pid)
        return self.pid

    def wait(self) -> tuple[int, str]:
        """Exit code (negative: killed by that signal) and the run's stdout+stderr."""
        line = self.proc.stdout.readline()
        assert line.startswith("exit "), f"the driver died: {line!r}"
        return int(line.split()[1]), self.log.read_text()

    def running(self) -> bool:
        """Whether the child still runs (it becomes a zombie until the driver reaps it: check /proc)."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().split(") ", 1)[1][0] not in "ZX"
        except FileNotFoundError:
            return False

    def run(self, data: Path, run: Path, *extra: str, delay: float = 0.0) -> tuple[int, str]:
        self.start(data, run, *extra, delay=delay)
        return self.wait()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER)],
        env=ENV,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    yield Zygote(proc, tmp_path_factory.mktemp("logs"))
    proc.stdin.close()
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def data_dir(shared_data, tmp_path_factory) -> Path:
    from scratchllm.data.prepare import prepare
    from scratchllm.tokenizer import CharTokenizer

    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20000]
    root = tmp_path_factory.mktemp("crashdata")
    (root / "input.txt").write_text(text, encoding="utf-8")
    tok = CharTokenizer.train(text)
    prepare(tok, [root / "input.txt"], root / "data", workers=0, progress=False)
    return root / "data"


@pytest.fixture(scope="module")
def reference(zygote, data_dir, tmp_path_factory) -> Path:
    """One uninterrupted run (no slowed saves: the delay changes timing, never numbers)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    rc, log = zygote.run(data_dir, run)
    assert rc == 0, log
    return run


def _assert_same_final_state(run: Path, reference: Path) -> None:
    a, _ = weights.read_safetensors(run / "model.safetensors")
    b, _ = weights.read_safetensors(reference / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ in {k}"
    final = runs.step_dir_name(MAX_STEPS)
    oa, _ = weights.read_safetensors(run / "checkpoints" / final / "optimizer.safetensors")
    ob, _ = weights.read_safetensors(reference / "checkpoints" / final / "optimizer.safetensors")
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa)


def _newest_step(run: Path) -> int:
    ckpts = runs.list_checkpoints(run)
    return ckpts[-1][0] if ckpts else 0


def _wait_for_checkpoint_after(zygote: Zygote, run: Path, step: int, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while zygote.running() and _newest_step(run) <= step and time.monotonic() - t0 < timeout:
        time.sleep(0.005)


def test_sigkill_at_random_instants_then_resume_is_bit_exact(zygote, data_dir, reference, tmp_path):
    rng = random.Random(20261123)
    run = tmp_path / "run"
    kills, during_save, resumed_steps = 0, 0, []
    resume: tuple[str, ...] = ()
    last = 0
    while kills < KILLS:
        pid = zygote.start(data_dir, run, *resume)
        # Wait for progress (a checkpoint newer than the one we resumed from), then strike at a
        # random instant within the next few steps: inside or outside a save, we don't choose.
        _wait_for_checkpoint_after(zygote, run, last)
        time.sleep(rng.uniform(0.0, 0.3))
        if not zygote.running():
            zygote.wait()
            break  # finished before we could kill it: the assertion below reports it
        os.kill(pid, signal.SIGKILL)
        rc, _ = zygote.wait()
        assert rc == -signal.SIGKILL
        kills += 1
        if any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir()):
            during_save += 1
        # Every restart must find a loadable checkpoint, and no committed checkpoint may be damaged
        # (a kill leaves at most an ignored .tmp- directory behind).
        path, skipped = ckpt.find_resumable_checkpoint(run)
        assert path is not None and skipped == [], f"kill #{kills}: {skipped}"
        assert load.load_model(path).source.startswith("checkpoint step")
        weights.read_safetensors(path / "optimizer.safetensors")
        state = ckpt.read_trainer_state(path)
        assert state["step"] >= last
        last = state["step"]
        resumed_steps.append(last)
        resume = ("--resume",)
    assert kills == KILLS, f"the run finished after only {kills} kills; raise MAX_STEPS"
    rc, log = zygote.run(data_dir, run, *resume)
    assert rc == 0, log
    assert during_save >= 2, f"only {during_save} of {kills} kills landed inside a save"
    _assert_same_final_state(run, reference)
    print(f"\n{kills} SIGKILLs ({during_save} inside a save), resumed at steps {resumed_steps}")


def test_sigterm_saves_current_step_and_exits_0(zygote, data_dir, reference, tmp_path):
    run = tmp_path / "run"
    pid = zygote.start(data_dir, run)
    _wait_for_checkpoint_after(zygote, run, 2)
    assert zygote.running(), "the run ended before it could be interrupted"
    os.kill(pid, signal.SIGTERM)
    rc, log = zygote.wait()
    assert rc == 0, log
    step = _newest_step(run)
    assert 3 <= step < MAX_STEPS
    assert f"saved a checkpoint at step {step}" in log
    assert not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())
    path, skipped = ckpt.find_resumable_checkpoint(run)
    assert path.name == runs.step_dir_name(step) and skipped == []
    # ... and continuing from there is indistinguishable from never having stopped.
    rc, log = zygote.run(data_dir, run, "--resume")
    assert rc == 0, log
    _assert_same_final_state(run, reference)
