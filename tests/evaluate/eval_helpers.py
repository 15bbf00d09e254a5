"""Helpers of the evaluation tests: a hand-checkable bigram "model", tiny generated data, the CLI.

Nothing here reads ../shared: every number can be recomputed by hand or from another path.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn


class Bigram(nn.Module):
    """A "language model" whose next-token logits depend only on the current token: ``W[x_t]``.

    ``log p(next | ... , prev) = log_softmax(W[prev])[next]``, so any score can be computed by
    hand from ``W``.
    """

    def __init__(self, vocab_size: int, context_length: int = 64, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(vocab_size, vocab_size, generator=g))
        self.config = SimpleNamespace(context_length=context_length, vocab_size=vocab_size)

    def forward(self, idx: torch.Tensor, **_: object) -> torch.Tensor:
        return self.W[idx]

    def logp(self, prev: int, nxt: int) -> float:
        return float(torch.log_softmax(self.W[prev].detach().double(), -1)[nxt])


# ----------------------------------------------------------------------------- data

WORDS = {
    "cat": ["the cat sat on the mat", "a cat naps in the sun", "my cat likes milk", "cats purr softly"],
    "dog": ["the dog ran in the park", "a dog barks at night", "my dog likes bones", "dogs wag tails"],
}


def labelled_rows(n_per_label: int = 20, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for label, texts in WORDS.items():
        for i in range(n_per_label):
            rows.append((f"{rng.choice(texts)} {i}", label))
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def pairs_text(n: int = 100, seed: int = 0) -> str:
    """``source<TAB>target`` lines: reverse a short word."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        w = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))
        lines.append(f"{w}\t{w[::-1]}")
    return "\n".join(lines) + "\n"


TEXT = (
    "\n\n".join(" ".join(f"{t} {i}." for t in texts for i in range(3)) for texts in list(WORDS.values()) * 6)
    + "\n\nCount 0 1 2 3 4 5 6 7 8 9. Then stop.\n"
)


# ----------------------------------------------------------------------------- CLI


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def cli(*argv) -> Result:
    from scratchllm.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    return Result(rc, out.getvalue(), err.getvalue())


def ok(*argv) -> Result:
    res = cli(*argv)
    assert res.rc == 0, f"scratchllm {' '.join(map(str, argv))} -> {res.rc}\n{res.err[-3000:]}"
    return res


FAST = ["--set", "device=cpu", "--set", "batch_size=8", "--set", "eval_interval=0", "--set", "eval_steps=2"]
FAST += ["--set", "log_interval=1", "--quiet"]
TINY_MODEL = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16"]
