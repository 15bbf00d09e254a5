"""Progress for anything that takes more than a few seconds, readable on a terminal *and* in a log.

On a terminal a tqdm bar redraws itself in place. Written to a file (a log, CI, ``nohup``), the
same bar would be a stream of carriage returns nobody can read — or nothing at all until the
end. So :func:`track` shows a bar only when stderr is a terminal, and otherwise prints one plain
line every ``interval`` seconds (``eval val: 120/400 batches, 31 s``) and one at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def track(
    iterable: Iterable[T],
    desc: str,
    *,
    total: int | None = None,
    unit: str = "batches",
    enabled: bool = True,
    interval: float = 30.0,
) -> Iterator[T]:
    """Iterate ``iterable`` with progress on stderr (a bar on a terminal, plain lines elsewhere;
    ``unit`` is plural, e.g. "batches")."""
    if not enabled:
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        yield from tqdm(
            iterable, desc=desc, total=total, unit=unit.rstrip("es") or unit, leave=False, dynamic_ncols=True
        )
        return
    start = last = time.perf_counter()
    n = 0
    of = f"/{total}" if total is not None else ""
    for item in iterable:
        yield item
        n += 1
        now = time.perf_counter()
        if now - last >= interval:
            last = now
            print(f"{desc}: {n}{of} {unit}, {now - start:.0f} s", file=sys.stderr, flush=True)
    if time.perf_counter() - start >= interval:
        print(f"{desc}: {n}{of} {unit} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def tracker(
    enabled: bool, interval: float = 30.0
) -> Callable[[str], Callable[[Iterable[Any]], Iterator[Any]] | None]:
    """``make(desc)`` -> a function wrapping an iterable in :func:`track` (None when disabled), the
    form the scoring functions take as their ``progress`` argument."""

    def make(desc: str) -> Callable[[Iterable[Any]], Iterator[Any]] | None:
        if not enabled:
            return None
        return lambda it: track(it, desc, interval=interval)

    return make
