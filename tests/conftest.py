"""Shared test fixtures.

Reference data (tinyshakespeare, the-verdict, GPT-2's encoder.json/vocab.bpe, instruction data)
lives in ../shared/data beside the checkout; CI always has it there.
"""

from __future__ import annotations

import os
from pathlib import Path

# The tests use tiny models, which run fastest on one thread (and a shared or loaded machine does
# not slow them down by thread contention). Set before torch is imported, so every subprocess the
# tests start (CLI runs, DDP workers, kill tests) inherits it too. Results do not depend on it.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"reference data not found at {SHARED_DATA} (CI puts ../shared beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gpt2_files(shared_data: Path) -> Path:
    return shared_data / "gpt2"
