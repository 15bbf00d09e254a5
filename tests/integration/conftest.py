"""Shared workspace for the CLI integration tests: tokenizers, shards and tiny trained runs.

Everything goes through the real CLI. The workspace is built once per session and shared by the
journey and error tests; tests that need a run of their own create it under the workspace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from integration_cli import TINY, ok


@dataclass
class Workspace:
    root: Path
    char_tok: Path
    bpe_tok: Path
    char_data: Path
    bpe_data: Path
    char_text: Path
    run: Path  # a tiny GPT trained on bpe_data (byte-level BPE, so it can be exported to HF)
    char_run: Path  # a tiny GPT trained on char_data


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, shared_data: Path) -> Workspace:
    root = tmp_path_factory.mktemp("journey")
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20_000]
    char_text = root / "shakespeare.txt"
    char_text.write_text(text, encoding="utf-8")
    verdict = shared_data / "the-verdict.txt"

    ok("tokenizer", "train", "--kind", "char", "--input", char_text, "--out", root / "char.json")
    ok("tokenizer", "train", "--kind", "bpe", "--vocab-size", "300", "--input", verdict, "--out",
       root / "bpe.json")  # fmt: skip
    ok("prepare", "--tokenizer", root / "char.json", "--input", char_text, "--out", root / "data-char")
    ok("prepare", "--tokenizer", root / "bpe.json", "--input", verdict, "--out", root / "data-bpe")
    ok("train", "--data", root / "data-bpe", "--out", root / "run", *TINY, "--quiet")
    ok("train", "--data", root / "data-char", "--out", root / "run-char", *TINY, "--quiet")
    return Workspace(
        root=root,
        char_tok=root / "char.json",
        bpe_tok=root / "bpe.json",
        char_data=root / "data-char",
        bpe_data=root / "data-bpe",
        char_text=char_text,
        run=root / "run",
        char_run=root / "run-char",
    )
