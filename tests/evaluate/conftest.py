"""Fixtures for the evaluation tests: the bigram stub and a session workspace of tiny runs.

The runs are made through the real CLI (a random GPT, then a few fine-tuning/pretraining steps),
so ``eval`` can be checked against the numbers the training commands themselves wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from eval_helpers import FAST, TEXT, TINY_MODEL, Bigram, labelled_rows, ok, pairs_text, write_csv


@pytest.fixture
def bigram():
    return Bigram


@dataclass
class Workspace:
    root: Path
    text: Path
    csv: Path
    mc: Path
    inst: Path
    pairs: Path
    shards: Path
    base: Path  # a tiny GPT (context 256, char tokenizer covering every file above)
    cls: Path  # finetune classify on csv
    lora: Path  # finetune classify --lora-r 2 on csv
    bert: Path  # train --arch bert on text
    bert_cls: Path  # finetune classify of the bert
    s2s: Path  # train --arch seq2seq on pairs
    instruct: Path  # finetune instruct on inst


@pytest.fixture(scope="session")
def ws(tmp_path_factory) -> Workspace:
    from scratchllm.data.instruction import TEMPLATES
    from scratchllm.model.config import GPTConfig
    from scratchllm.model.gpt import GPTModel
    from scratchllm.runs import save_run_files
    from scratchllm.tokenizer.char import CharTokenizer

    root = tmp_path_factory.mktemp("evalx")
    (root / "text.txt").write_text(TEXT, encoding="utf-8")
    write_csv(root / "data.csv", labelled_rows())
    mc = [
        {"question": f"which animal says {s} {i}", "choices": ["cat", "dog", "cow"], "answer": a}
        for i in range(10)
        for s, a in (("meow", 0), ("woof", 1), ("moo", "cow"))
    ]
    (root / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc), encoding="utf-8")
    inst = [
        {"instruction": f"name the animal {i}", "input": t, "output": label}
        for i, (t, label) in enumerate(labelled_rows(10, seed=1))
    ]
    (root / "inst.json").write_text(json.dumps(inst), encoding="utf-8")
    (root / "pairs.tsv").write_text(pairs_text(), encoding="utf-8")
    every = TEXT + (root / "data.csv").read_text() + (root / "mc.jsonl").read_text()
    every += (root / "inst.json").read_text() + pairs_text() + TEMPLATES["alpaca"].prompt + "LQTXYZ"
    tok = CharTokenizer.train(every)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, context_length=256, n_layer=1, n_head=2, n_embd=16)
    base = save_run_files(root / "base", GPTModel(cfg), arch="gpt", model_config=cfg, tokenizer=tok)
    tok.save(root / "char.json")
    ok("prepare", "--tokenizer", root / "char.json", "--input", root / "text.txt", "--out", root / "shards")
    ft = [*FAST, "--set", "max_steps=3"]
    ok("finetune", "classify", "--model", base, "--data", root / "data.csv", "--out", root / "cls", *ft)
    ok("finetune", "classify", "--model", base, "--data", root / "data.csv", "--out", root / "lora", *ft,
       "--lora-r", "2")  # fmt: skip
    pre = [*FAST, *TINY_MODEL, "--set", "max_steps=2", "--set", "context_length=64"]
    ok("train", "--arch", "bert", "--data", root / "text.txt", "--out", root / "bert", *pre)
    ok("finetune", "classify", "--model", root / "bert", "--data", root / "data.csv", "--out",
       root / "bert-cls", *ft, "--set", "batch_size=8")  # fmt: skip
    ok("train", "--arch", "seq2seq", "--data", root / "pairs.tsv", "--out", root / "s2s", *pre)
    ok("finetune", "instruct", "--model", base, "--data", root / "inst.json", "--out", root / "instruct",
       *ft, "--max-new-tokens", "8")  # fmt: skip
    return Workspace(
        root=root,
        text=root / "text.txt",
        csv=root / "data.csv",
        mc=root / "mc.jsonl",
        inst=root / "inst.json",
        pairs=root / "pairs.tsv",
        shards=root / "shards",
        base=base,
        cls=root / "cls",
        lora=root / "lora",
        bert=root / "bert",
        bert_cls=root / "bert-cls",
        s2s=root / "s2s",
        instruct=root / "instruct",
    )
