"""Shared test fixtures.

Reference data lives in ``../shared/data`` beside the checkout (``$SCRATCHLLM_SHARED_DATA``
overrides the place). A fresh clone without it still passes: every test that needs the files asks
for the ``shared_data`` (or ``gpt2_files``) fixture, which skips the test with a reason saying how
to get them. CI sets ``SCRATCHLLM_REQUIRE_SHARED=1`` (``.ci/run``), which turns those skips into
failures, so nothing is silently skipped there. The files and where they come from:

* ``tinyshakespeare.txt`` — karpathy/char-rnn, ``data/tinyshakespeare/input.txt`` (1,115,394 bytes)
* ``the-verdict.txt`` — rasbt/LLMs-from-scratch, chapter 2 (Edith Wharton, public domain)
* ``instruction-data.json`` — rasbt/LLMs-from-scratch, chapter 7 (1,100 Alpaca-style records)
* ``gpt2/encoder.json``, ``gpt2/vocab.bpe`` — OpenAI's GPT-2 vocabulary and merges

Hypothesis runs with a fixed seed here (profile ``ci``); ``make fuzz`` runs the long random
search (see ``tests/hypothesis_profiles.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

# The tests use tiny models, which run fastest on one thread (and a shared or loaded machine does
# not slow them down by thread contention). Set before torch is imported, so every subprocess the
# tests start (CLI runs, DDP workers, kill tests) inherits it too. Results do not depend on it.
os.environ["OMP_NUM_THREADS"] = "1"

import hypothesis_profiles  # noqa: E402  (registers and loads the hypothesis profiles)
import pytest  # noqa: E402

hypothesis_profiles.load()

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SCRATCHLLM_SHARED_DATA") or ROOT.parent / "shared" / "data")
SHARED_FILES = (
    "tinyshakespeare.txt",
    "the-verdict.txt",
    "instruction-data.json",
    "gpt2/encoder.json",
    "gpt2/vocab.bpe",
)
REQUIRE_ENV = "SCRATCHLLM_REQUIRE_SHARED"


def missing_shared_files(root: Path = SHARED_DATA) -> list[str]:
    """The reference files that are not under ``root`` (all of them when it does not exist)."""
    return [name for name in SHARED_FILES if not (root / name).is_file()]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    missing = missing_shared_files()
    if missing:
        reason = (
            f"reference data missing under {SHARED_DATA} ({', '.join(missing)}): put the project's "
            "shared/ folder beside the checkout (../shared/data) or point SCRATCHLLM_SHARED_DATA at a "
            "copy; the sources of each file are listed in tests/conftest.py"
        )
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_ENV}=1: fixtures are required here)", pytrace=False)
        pytest.skip(reason)
    return SHARED_DATA


@pytest.fixture(scope="session")
def gpt2_files(shared_data: Path) -> Path:
    return shared_data / "gpt2"
