"""Data for the encoder–decoder transformer: parallel ``source → target`` pairs.

Two sources of pairs:

* :func:`read_parallel_tsv` — a user's file, one ``source<TAB>target`` pair per line;
* :func:`date_pairs` — a built-in task that needs no download: dates written the many ways people
  write them ("3rd of March 1998", "03/04/98", "Mar 3, 1998", "Tuesday, 3 March 1998", ...) to
  be normalised to ISO ``YYYY-MM-DD``. It is small enough to learn on a laptop CPU in minutes and
  has an unambiguous right answer, so exact-match accuracy means something.

Conventions of the date task (so every source has exactly one answer): slashes are American
month/day/year, dots and dashes with the day first are European day.month.year, two-digit years
``50``–``99`` are 19xx and ``00``–``49`` are 20xx. Years run 1950–2049.

Sequences are framed for the model as ``source + <eos>`` (encoder input) and
``<bos> + target + <eos>`` (decoder input/labels shifted by one), padded with ``<pad>``.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from pathlib import Path

from scratchllm.errors import ScratchLLMError
from scratchllm.io import read_text
from scratchllm.tokenizer.base import Tokenizer
from scratchllm.tokenizer.specials import (  # noqa: F401  (re-exported: the data's vocabulary)
    BOS,
    EOS,
    SEQ2SEQ_SPECIAL_TOKENS,
    Seq2SeqSpecialIds,
)

IGNORE_INDEX = -100

# ----------------------------------------------------------------------------- user TSV files


def read_parallel_tsv(path: str | Path) -> list[tuple[str, str]]:
    """Read ``source<TAB>target`` lines. Blank lines are skipped; anything else malformed is an error
    naming the line number."""
    path = Path(path)
    text = read_text(path, "parallel data file")
    pairs = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            what = "no tab" if len(parts) == 1 else f"{len(parts) - 1} tabs"
            raise ScratchLLMError(
                f"{path} line {n}: expected 'source<TAB>target' (exactly one tab), found {what}"
            )
        src, tgt = parts[0].strip(), parts[1].strip()
        if not src or not tgt:
            raise ScratchLLMError(f"{path} line {n}: the {'source' if not src else 'target'} is empty")
        pairs.append((src, tgt))
    if not pairs:
        raise ScratchLLMError(f"{path} holds no 'source<TAB>target' pairs")
    return pairs


def hold_out_pairs(
    pairs: Sequence[tuple[str, str]], *, where: str = "the data"
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train, held_out)``: the pairs shuffled with seed 0, 10 % of them (1 to 500) held out.

    ``train --arch seq2seq`` validates on the held-out part, and ``eval`` scores that same part
    when given the run's own training file.
    """
    if len(pairs) < 2:
        raise ScratchLLMError(f"{where} needs at least 2 pairs (one is held out for evaluation)")
    shuffled = list(pairs)
    random.Random(0).shuffle(shuffled)
    n_val = max(1, min(500, len(shuffled) // 10))
    return shuffled[n_val:], shuffled[:n_val]


# ----------------------------------------------------------------------------- the date task

_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]  # fmt: skip
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _formats(d: dt.date) -> list[str]:
    """Every way this module writes date ``d`` (each maps back to ``d`` by the module's rules)."""
    month, mon = _MONTHS[d.month - 1], _MONTHS[d.month - 1][:3]
    day, yy, wd = d.day, d.year % 100, _DAYS[d.weekday()]
    return [
        f"{_ordinal(day)} of {month} {d.year}",
        f"the {_ordinal(day)} of {month.lower()}, {d.year}",
        f"{month} {day}, {d.year}",
        f"{mon} {day}, {d.year}",
        f"{mon}. {_ordinal(day)} {d.year}",
        f"{day} {month} {d.year}",
        f"{day} {mon} {yy:02d}",
        f"{month.upper()} {day} {d.year}",
        f"{wd}, {month} {day}, {d.year}",
        f"{wd[:3]} {day} {mon} {d.year}",
        f"{d.month:02d}/{day:02d}/{d.year}",
        f"{d.month}/{day}/{yy:02d}",
        f"{day:02d}.{d.month:02d}.{d.year}",
        f"{day}-{d.month}-{d.year}",
        f"{d.year}.{d.month:02d}.{day:02d}",
        f"{d.year}/{d.month}/{day}",
        f"{d.year}-{d.month:02d}-{day:02d}",
        f"{d.year}{d.month:02d}{day:02d}",
    ]


#: How many formats :func:`date_pairs` draws from.
N_DATE_FORMATS = len(_formats(dt.date(2000, 1, 1)))
_FIRST, _SPAN = (
    dt.date(1950, 1, 1).toordinal(),
    dt.date(2049, 12, 31).toordinal() - dt.date(1950, 1, 1).toordinal(),
)


def date_pairs(n: int, seed: int = 0, *, exclude: set[str] | None = None) -> list[tuple[str, str]]:
    """``n`` seeded ``(human date, ISO date)`` pairs, e.g. ``("Mar 3, 1998", "1998-03-03")``.

    Sources listed in ``exclude`` are skipped (to keep a held-out split disjoint from training).
    """
    rng = random.Random(seed)
    pairs: list[tuple[str, str]] = []
    seen = set(exclude or ())
    while len(pairs) < n:
        d = dt.date.fromordinal(_FIRST + rng.randint(0, _SPAN))
        src = rng.choice(_formats(d))
        if src in seen:
            continue
        seen.add(src)
        pairs.append((src, d.isoformat()))
    return pairs


def date_task_splits(
    n_train: int = 20000, n_val: int = 500, seed: int = 0
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Disjoint train and held-out pairs of the date task."""
    train = date_pairs(n_train, seed)
    val = date_pairs(n_val, seed + 1, exclude={s for s, _ in train})
    return train, val


def date_task_alphabet() -> str:
    """Every character the date task can produce (so its char tokenizer covers any date)."""
    chars = set("0123456789")
    for k in range(366):  # every month, weekday and ordinal suffix appears in one leap year
        for text in _formats(dt.date(2000, 1, 1) + dt.timedelta(days=k)):
            chars.update(text)
    return "".join(sorted(chars))


# ----------------------------------------------------------------------------- framing & batching


def encode_pairs(
    pairs: Sequence[tuple[str, str]],
    src_tokenizer: Tokenizer,
    tgt_tokenizer: Tokenizer | None = None,
    *,
    max_len: int,
) -> list[tuple[list[int], list[int]]]:
    """Tokenize pairs: source ids + ``<eos>``; target ids (framing with bos/eos happens in batching).

    Pairs longer than the model's ``max_len`` are an error that names the first offender.
    """
    tgt_tokenizer = tgt_tokenizer or src_tokenizer
    src_eos = Seq2SeqSpecialIds(src_tokenizer).eos
    out = []
    for k, (src, tgt) in enumerate(pairs):
        s = src_tokenizer.encode(src) + [src_eos]
        t = tgt_tokenizer.encode(tgt)
        if len(s) > max_len or len(t) + 1 > max_len:
            raise ScratchLLMError(
                f"pair {k + 1} is longer than the model's context_length {max_len} "
                f"(source {len(s)}, target {len(t) + 1} tokens); raise context_length or shorten it"
            )
        out.append((s, t))
    return out


def collate_pairs(
    examples: Sequence[tuple[list[int], list[int]]], *, src_pad: int, tgt: Seq2SeqSpecialIds
) -> dict:
    """Pad a batch → ``src_ids``, ``src_mask`` (1 real / 0 pad), ``tgt_in`` (``<bos>`` + target) and
    ``labels`` (target + ``<eos>``, ``-100`` on padding) — all int64 ``[B, ·]``."""
    import torch

    S = max(len(s) for s, _ in examples)
    T = max(len(t) for _, t in examples) + 1
    src = [s + [src_pad] * (S - len(s)) for s, _ in examples]
    mask = [[1] * len(s) + [0] * (S - len(s)) for s, _ in examples]
    tgt_in = [[tgt.bos, *t] + [tgt.pad] * (T - 1 - len(t)) for _, t in examples]
    labels = [[*t, tgt.eos] + [IGNORE_INDEX] * (T - 1 - len(t)) for _, t in examples]
    return {
        "src_ids": torch.tensor(src),
        "src_mask": torch.tensor(mask),
        "tgt_in": torch.tensor(tgt_in),
        "labels": torch.tensor(labels),
    }
