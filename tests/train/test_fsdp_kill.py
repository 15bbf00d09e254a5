"""The real ``torchrun ... scratchllm train --strategy fsdp`` on 2 gloo CPU processes, killed with
SIGKILL (agent and both workers at once) at random instants and resumed: every kill leaves a
committed, manifest-valid sharded checkpoint, and the resumed run ends with weights and optimizer
shards bit-identical to one uninterrupted run — which is itself launched as "two nodes" (two
torchrun agents on 127.0.0.1, one process each), so the multi-node launch is checked too.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scratchllm import runs, weights
from scratchllm.train import checkpoint as ckpt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train_ddp import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MAX_STEPS = 14
KILLS = 2
TRAIN_ARGS = [
    "--preset", "tiny",
    "--strategy", "fsdp",
    "--set", f"max_steps={MAX_STEPS}",
    "--set", "save_interval=1",
    "--set", "eval_steps=0",
    "--set", "n_layer=2",
    "--set", "n_embd=32",
    "--set", "batch_size=2",
    "--set", "context_length=32",
    "--set", "dropout=0.1",
    "--seed", "3",
    "--device", "cpu",
    "--quiet",
    "--yes",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
for _key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(_key, None)

pytestmark = pytest.mark.slow


def torchrun(*launch: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "scratchllm", "train"]


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (torchrun's agent and its workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from scratchllm.data.prepare import prepare
    from scratchllm.tokenizer import CharTokenizer

    rng = random.Random(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "runs", "away"]
    text = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(400))
    root = tmp_path_factory.mktemp("fsdpdata")
    (root / "input.txt").write_text(text, encoding="utf-8")
    prepare(CharTokenizer.train(text), [root / "input.txt"], root / "data", workers=0, progress=False)
    return root / "data"


@pytest.fixture(scope="module")
def two_nodes(data_dir, tmp_path_factory) -> Path:
    """The uninterrupted reference, launched as two torchrun agents (static rendezvous on 127.0.0.1)."""
    run = tmp_path_factory.mktemp("two_nodes") / "run"
    port = str(free_port())
    agents = [
        subprocess.Popen(
            torchrun(
                "--nnodes",
                "2",
                "--node-rank",
                str(node),
                "--nproc-per-node",
                "1",
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                port,
            )  # fmt: skip
            + ["--data", str(data_dir), "--out", str(run), *TRAIN_ARGS],
            env=ENV,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    logs = [a.communicate(timeout=300)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], "\n".join(log[-3000:] for log in logs)
    return run


def _start(data_dir: Path, run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        torchrun("--standalone", "--nproc-per-node", "2")
        + ["--data", str(data_dir), "--out", str(run), *([] if extra else TRAIN_ARGS), *extra],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _newest_step(run: Path) -> int:
    ckpts = runs.list_checkpoints(run) if (run / "checkpoints").is_dir() else []
    return ckpts[-1][0] if ckpts else 0


def _saving(run: Path) -> bool:
    try:
        return any(e.name.startswith(".tmp-step") for e in os.scandir(run / "checkpoints"))
    except FileNotFoundError:
        return False


def _final_state(run: Path) -> tuple[dict, dict]:
    final = run / "checkpoints" / runs.step_dir_name(MAX_STEPS)
    opt = runs.checkpoint_tensors(final, "optimizer")
    return weights.read_safetensors(run / "model.safetensors")[0], {n: opt.read(n) for n in opt.names()}


def test_fsdp_sigkill_then_resume_is_bit_exact_and_equals_a_two_node_run(data_dir, two_nodes, tmp_path):
    rng = random.Random(20261201)
    run = tmp_path / "run"
    last, resumed, during_save = 0, [], 0
    for kill in range(KILLS):
        proc = _start(data_dir, run, *(("--resume", "--quiet") if kill else ()))
        t0 = time.monotonic()
        while proc.poll() is None and _newest_step(run) <= last + 1 and time.monotonic() - t0 < 240:
            time.sleep(0.01)
        if kill % 2:  # strike while a sharded save is being written (its .tmp- directory exists)
            while proc.poll() is None and not _saving(run) and time.monotonic() - t0 < 240:
                time.sleep(0.0005)
        else:
            time.sleep(rng.uniform(0.0, 0.4))
        assert proc.poll() is None, f"finished before kill #{kill + 1}: raise MAX_STEPS"
        for pid in descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=60)
        time.sleep(0.5)  # the workers are gone too (they were SIGKILLed, not waited for by us)
        during_save += any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())
        path, skipped = ckpt.find_resumable_checkpoint(run)
        assert path is not None and skipped == [], f"kill #{kill + 1}: {skipped}"
        assert runs.is_sharded_checkpoint(path)
        state = ckpt.read_trainer_state(path)
        assert state["step"] >= last
        last = state["step"]
        resumed.append(last)
    proc = _start(data_dir, run, "--resume", "--quiet")
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, out[-3000:]
    assert during_save >= 1, "no kill landed inside a sharded save"
    a, oa = _final_state(run)
    b, ob = _final_state(two_nodes)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ"
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa), "optimizer differs"
    print(f"\n{KILLS} SIGKILLs of the whole torchrun job ({during_save} inside a save), resumed at {resumed}")


@pytest.mark.parametrize("arch", ["bert", "seq2seq"])
def test_bert_and_seq2seq_train_under_fsdp_and_consolidate(arch, tmp_path):
    """The other families shard the same way (their blocks + root); evaluation and samples, which
    call more than ``forward`` (encode, KV-cached decode_step), run on the gathered model."""
    from scratchllm.data.seq2seq import date_pairs

    if arch == "seq2seq":
        data = tmp_path / "pairs.tsv"
        data.write_text("".join(f"{s}\t{t}\n" for s, t in date_pairs(200, seed=1)), encoding="utf-8")
    else:
        rng = random.Random(1)
        words = ["a", "cat", "sat", "on", "the", "mat", "and", "dog", "ran", "far"]
        data = tmp_path / "book.txt"
        sentence = lambda: " ".join(rng.choice(words) for _ in range(8)).capitalize() + "."  # noqa: E731
        data.write_text("\n\n".join(" ".join(sentence() for _ in range(6)) for _ in range(30)))
    run = tmp_path / "run"
    argv = ["--arch", arch, "--data", str(data), "--out", str(run), "--strategy", "fsdp", "--seed", "1"]
    for kv in (
        "n_layer=1", "n_embd=32", "n_head=2", "context_length=48", "batch_size=4", "max_steps=2",
        "eval_steps=1", "eval_interval=2", "save_interval=2", "sample_interval=2",
        "activation_checkpointing=true",
    ):  # fmt: skip
        argv += ["--set", kv]
    proc = subprocess.run(
        torchrun("--standalone", "--nproc-per-node", "2") + [*argv, "--device", "cpu", "--quiet", "--yes"],
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    step = run / "checkpoints" / "step-00000002"
    assert runs.is_sharded_checkpoint(step)
    out = tmp_path / "one"
    runs.consolidate_checkpoint(step, out)
    a, b = runs.load_run(out).model.state_dict(), runs.load_run(step).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert "eval" in [json.loads(line)["event"] for line in lines]
