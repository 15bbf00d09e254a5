"""Two-process (gloo, CPU) DDP runs for tests/train/test_train_ddp.py.

Usage: python train_ddp_worker.py OUT_DIR PORT. Writes OUT_DIR/equiv (2 ranks x batch 2, one step)
and OUT_DIR/nan (rank 1 alone returns a NaN loss at the only step).
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


def worker(rank: int, out: str, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    # a native abort (SIGABRT) prints where every Python thread was, not only "terminate called"
    faulthandler.enable(all_threads=True)
    torch.set_num_threads(1)
    from scratchllm.tasks.lm import LanguageModelingTask
    from scratchllm.train.distributed import DistEnv, shutdown_distributed
    from scratchllm.train.loop import train

    out_dir = Path(out)
    shards = make_shards(out_dir)
    cfg = make_cfg(max_steps=1, batch_size=2, eval_steps=0)
    model = make_model(dropout=0.0)
    train(model, LanguageModelingTask(shards, 16, 2), cfg, out_dir / "equiv", progress=False)
    task = Flaky(LanguageModelingTask(shards, 16, 2), bad={0} if rank == 1 else ())
    train(make_model(dropout=0.0), task, cfg, out_dir / "nan", progress=False)
    shutdown_distributed(DistEnv(world_size=2))


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], int(sys.argv[2])), nprocs=2, join=True)
