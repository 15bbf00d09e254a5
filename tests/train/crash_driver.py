"""Run the real ``scratchllm train`` many times, fast, for the kill tests.

Starting Python and importing torch costs seconds, and the kill test needs a dozen runs. So this
driver is a *zygote*: it imports everything once, then for each request read from stdin (one JSON
line ``{"argv": [...], "log": PATH, "save_delay": SECONDS}``) it forks a child that runs
``scratchllm.cli.main.main(argv)`` with stdout/stderr going to ``log``. It answers ``pid N`` when
the child starts and ``exit RC`` when it ends (RC < 0: killed by signal -RC). The test kills the
child by pid; the zygote itself is never killed.

``save_delay`` makes each checkpoint file write sleep first, which widens the window in which a
SIGKILL lands *inside* a save (the interesting case) without changing any number the training
computes. Everything else is the real CLI and the real training loop.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import torch

from scratchllm.cli.main import main
from scratchllm.train import checkpoint, loop, metrics, pretrain  # noqa: F401

# The slow imports of a training run, done once here and inherited by every child: building an
# AdamW imports torch._dynamo (seconds), the loss plot imports matplotlib.
torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402, F401


def _slow_writes(delay: float) -> None:
    write = checkpoint._write_durably

    def write_slowly(path, data):
        time.sleep(delay)
        return write(path, data)

    checkpoint._write_durably = write_slowly


def _child(request: dict) -> None:
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    rc = 1
    try:
        if request.get("save_delay"):
            _slow_writes(float(request["save_delay"]))
        rc = main(request["argv"])
    except BaseException:  # report, never return into the zygote's loop
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    serve()
