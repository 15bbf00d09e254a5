"""Helpers of the explain tests (imported by name: pytest puts this directory on sys.path)."""

from __future__ import annotations


def value(exp, step: str, name: str):
    """A value of one step of an explanation (the numbers the CLI prints)."""
    return exp.find(step).values[name]


def assert_checks_hold(exp) -> None:
    failed = [(s.title, c.name) for s in exp.steps for c in s.checks if not c.ok]
    assert not failed, failed


def step_starting(exp, prefix: str):
    """The first step whose title starts with ``prefix``."""
    return next(s for s in exp.steps if s.title.startswith(prefix))


def close(a, b, tol: float = 1e-5) -> bool:
    """Numbers, or nested lists of them, equal within ``tol``."""
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    return abs(a - b) < tol or a == b
