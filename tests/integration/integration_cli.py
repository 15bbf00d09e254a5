"""Helpers for the CLI integration tests: run ``scratchllm`` in-process and capture its output.

In-process (``scratchllm.cli.main.main``) so torch is imported once for the whole area.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

# The smallest GPT that still exercises every code path; keeps each CLI call under a few seconds
# on a busy 2-core machine.
TINY = [
    "--preset", "tiny",
    "--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16", "--set", "context_length=32",
    "--set", "batch_size=2", "--set", "max_steps=2", "--set", "eval_interval=0",
    "--set", "eval_steps=2", "--set", "sample_interval=0", "--set", "log_interval=1",
]  # fmt: skip


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def cli(*argv: str | Path, stdin: str | None = None) -> Result:
    """Run ``scratchllm ARGV`` in this process and capture its exit code, stdout and stderr."""
    from scratchllm.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main([str(a) for a in argv])
            except SystemExit as exc:  # argparse errors and --help
                rc = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdin = old_stdin
    return Result(rc, out.getvalue(), err.getvalue())


def ok(*argv: str | Path, stdin: str | None = None) -> Result:
    res = cli(*argv, stdin=stdin)
    assert res.rc == 0, f"scratchllm {' '.join(map(str, argv))} -> {res.rc}\n{res.err[-2000:]}"
    return res
