"""Two-process (gloo, CPU) FSDP runs for tests/train/test_train_fsdp.py.

Usage: python train_fsdp_worker.py OUT_DIR PORT. Every run trains the tiny GPT of
test_train_loop.py with ``strategy="fsdp"`` on 2 ranks:

* ``equiv``     one step, batch 2 per rank, no dropout (the test compares it with one process, batch 4);
* ``nan``       rank 1 alone returns a NaN loss at the only step (every rank must skip it);
* ``full``      6 steps with dropout, evaluation, samples and a checkpoint every 2 steps;
* ``paused``    the same run paused at step 3 (``stop_at``), then resumed in a fresh model;
* ``ckpt_on``   ``full`` with activation checkpointing (the test compares it with ``full``);
* ``accum_fsdp`` / ``accum_ddp``  one step of 2 micro-batches, FSDP and DDP (must agree);
* ``grown``     a one-process run (made by the test before) resumed on 2 ranks under FSDP;
* ``forced``    a 1-step run, then ``--force`` over it with a 2-step run (rank 0 trains in a staging
                directory until the first checkpoint; every rank must write its shards there).

``live-full.safetensors`` holds ``full``'s live weights at the end, gathered with
``DTensor.full_tensor()`` — what the consolidated checkpoint must equal.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_train_loop import Flaky, make_cfg, make_model, make_shards  # noqa: E402


def fsdp_cfg(**kw):
    return make_cfg(strategy="fsdp", **kw)


def worker(rank: int, out: str, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_WORLD_SIZE="2",
    )
    # a native abort (SIGABRT) prints where every Python thread was, not only "terminate called"
    faulthandler.enable(all_threads=True)
    torch.set_num_threads(1)
    from scratchllm.tasks.lm import LanguageModelingTask
    from scratchllm.train.distributed import DistEnv, shutdown_distributed
    from scratchllm.train.loop import train
    from scratchllm.weights import write_safetensors

    out_dir = Path(out)
    shards = make_shards(out_dir)

    def task(batch: int = 2) -> LanguageModelingTask:
        return LanguageModelingTask(shards, 16, batch)

    quiet = {"progress": False}
    train(
        make_model(dropout=0.0),
        task(),
        fsdp_cfg(max_steps=1, batch_size=2, eval_steps=0),
        out_dir / "equiv",
        **quiet,
    )

    flaky = Flaky(task(), bad={0} if rank == 1 else ())
    train(
        make_model(dropout=0.0),
        flaky,
        fsdp_cfg(max_steps=1, batch_size=2, eval_steps=0),
        out_dir / "nan",
        **quiet,
    )

    long = dict(max_steps=6, batch_size=2, eval_interval=2, eval_steps=2, save_interval=2, sample_interval=3)
    model = make_model()
    train(model, task(), fsdp_cfg(**long), out_dir / "full", **quiet)
    live = {n: p.full_tensor().detach().clone() for n, p in model.state_dict().items()}
    if rank == 0:
        with open(out_dir / "live-full.safetensors", "wb") as f:
            write_safetensors(f, {k: v for k, v in live.items() if k != "out_head.weight"})

    train(make_model(), task(), fsdp_cfg(**long), out_dir / "paused", stop_at=3, **quiet)
    train(make_model(), task(), fsdp_cfg(**long), out_dir / "paused", resume=True, **quiet)

    train(make_model(), task(), fsdp_cfg(**long, activation_checkpointing=True), out_dir / "ckpt_on", **quiet)

    accum = dict(max_steps=1, batch_size=1, grad_accum_steps=2, eval_steps=0)
    train(make_model(dropout=0.0), task(1), fsdp_cfg(**accum), out_dir / "accum_fsdp", **quiet)
    train(make_model(dropout=0.0), task(1), make_cfg(**accum), out_dir / "accum_ddp", **quiet)

    if (out_dir / "grown").is_dir():
        train(
            make_model(seed=5),
            task(),
            fsdp_cfg(max_steps=4, batch_size=2, eval_steps=0, save_interval=2),
            out_dir / "grown",
            resume=True,
            allow_world_size_change=True,
            **quiet,
        )
    one = dict(batch_size=2, eval_steps=0, save_interval=1)
    train(make_model(dropout=0.0), task(), fsdp_cfg(max_steps=1, **one), out_dir / "forced", **quiet)
    train(make_model(seed=4), task(), fsdp_cfg(max_steps=2, **one), out_dir / "forced", force=True, **quiet)
    shutdown_distributed(DistEnv(world_size=2))


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], int(sys.argv[2])), nprocs=2, join=True)
