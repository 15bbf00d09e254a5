"""Fixtures for the fine-tuning tests: small real tasks built from ../shared/data, tiny GPT bases.

Everything is tiny (a 2-layer, 32-wide GPT over characters) so a fine-tune takes seconds.
"""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import pytest
import torch

from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel
from scratchllm.runs import save_run_files
from scratchllm.tokenizer.char import CharTokenizer

#: Fast settings for every test run (CPU, frequent enough evals to exercise them).
FAST = ["device=cpu", "batch_size=16", "lr=3e-3", "eval_interval=10", "eval_steps=2", "log_interval=2"]


def make_base(out: Path, text: str, *, context_length: int = 96, n_embd: int = 32, seed: int = 0) -> Path:
    """A randomly initialised tiny GPT run dir whose char tokenizer covers ``text``."""
    tok = CharTokenizer.train(text)
    torch.manual_seed(seed)
    cfg = GPTConfig(
        vocab_size=tok.vocab_size, context_length=context_length, n_layer=2, n_head=2, n_embd=n_embd
    )
    save_run_files(out, GPTModel(cfg), arch="gpt", model_config=cfg, tokenizer=tok)
    return out


@pytest.fixture(scope="session")
def cls_rows(shared_data: Path) -> list[tuple[str, str]]:
    """Sentences of 'The Verdict' (prose) vs. lines of Shakespeare (verse): a real two-class task."""
    verdict = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    prose = [s.strip().replace("\n", " ") for s in re.split(r"(?<=[.!?])\s+", verdict)]
    prose = [s for s in prose if 25 <= len(s) <= 90]
    lines = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:100_000].splitlines()
    verse = [ln.strip() for ln in lines if 25 <= len(ln.strip()) <= 90 and not ln.strip().endswith(":")]
    random.Random(0).shuffle(verse)
    n = min(len(prose), 100)
    return [(s, "verdict") for s in prose[:n]] + [(s, "shakespeare") for s in verse[:n]]


@pytest.fixture(scope="session")
def cls_files(tmp_path_factory, cls_rows) -> Path:
    d = tmp_path_factory.mktemp("cls")
    with open(d / "data.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        w.writerows((label, text) for text, label in cls_rows)
    make_base(d / "base", "".join(t for t, _ in cls_rows))
    return d


@pytest.fixture(scope="session")
def inst_files(tmp_path_factory, shared_data: Path) -> Path:
    """Short records of the book's instruction data, a short template, and a tiny base model."""
    records = json.loads((shared_data / "instruction-data.json").read_text(encoding="utf-8"))
    short = [r for r in records if len(r["instruction"]) + len(r["input"]) + len(r["output"]) < 70][:48]
    d = tmp_path_factory.mktemp("inst")
    (d / "train.json").write_text(json.dumps(short[:40]), encoding="utf-8")
    (d / "val.json").write_text(json.dumps(short[40:44]), encoding="utf-8")
    (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in short[44:48]), encoding="utf-8")
    template = {"prompt": "Q: {instruction} {input}\nA: ", "prompt_no_input": "Q: {instruction}\nA: "}
    (d / "template.json").write_text(json.dumps(template), encoding="utf-8")
    text = "".join(r["instruction"] + r["input"] + r["output"] for r in records) + "QA: \n"
    make_base(d / "base", text)
    return d


@pytest.fixture
def cli(capsys):
    """Run ``scratchllm ARGV...`` in-process: returns (exit code, stdout, stderr)."""
    from scratchllm.cli.main import main

    def run(argv: list[str]) -> tuple[int, str, str]:
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


@pytest.fixture(scope="session")
def fast_set() -> list[str]:
    """``--set`` arguments that keep a fine-tuning run small and quick."""
    return [x for kv in FAST for x in ("--set", kv)]
