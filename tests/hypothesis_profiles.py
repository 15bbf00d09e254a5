"""Hypothesis profiles: a fixed-seed run for ``make test``/CI, a long random search for ``make fuzz``.

* ``ci`` (the default): ``derandomize=True`` — every run tries the same examples (derived from each
  test's source), so the suite passes or fails the same way on every machine; no example database.
* ``fuzz`` (``make fuzz``, or ``SCRATCHLLM_HYPOTHESIS_PROFILE=fuzz``): fresh random examples every
  run, 20x the examples, the failure database on (a failure found once is replayed first next time).

Tests that need a different number of examples than the default use :func:`examples` instead of
``@settings(max_examples=N)``, so ``fuzz`` scales them too.
"""

from __future__ import annotations

import os

from hypothesis import settings

#: Examples per test in the ``ci`` profile (hypothesis' own default) and how much more ``fuzz`` runs.
CI_EXAMPLES = 100
FUZZ_FACTOR = 20
PROFILE_ENV = "SCRATCHLLM_HYPOTHESIS_PROFILE"

settings.register_profile(
    "ci", max_examples=CI_EXAMPLES, derandomize=True, database=None, deadline=None, print_blob=True
)
settings.register_profile(
    "fuzz", max_examples=CI_EXAMPLES * FUZZ_FACTOR, derandomize=False, deadline=None, print_blob=True
)


def load() -> str:
    """Load the profile named by ``$SCRATCHLLM_HYPOTHESIS_PROFILE`` (default ``ci``); return its name."""
    name = os.environ.get(PROFILE_ENV, "ci")
    settings.load_profile(name)
    return name


def examples(n: int) -> settings:
    """``@examples(300)``: 300 examples under ``ci``, proportionally more under ``fuzz``.

    The scale is read from the loaded profile's ``max_examples`` when the test module is imported
    (``pytest --hypothesis-profile=fuzz`` works too).
    """
    return settings(max_examples=max(1, n * settings.default.max_examples // CI_EXAMPLES), deadline=None)
