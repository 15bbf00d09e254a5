"""What an explainer returns: an :class:`Explanation` made of :class:`Step` s, printable as text or JSON.

A step is one idea: a title, a few sentences a learner can follow, the real numbers the project's
code produced (small tensors as nested lists, with optional row/column labels), and *checks* —
statements about those numbers that hold, such as ``rows sum to 1: True``. The CLI prints
:func:`to_text`; ``--json`` (and the playground) use :meth:`Explanation.to_dict`.

Values are stored as plain Python (tensors are converted with ``tolist()`` when added), so a test
can recompute them with the formula written out and compare.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from typing import Any

#: Longer vectors, matrices and tables are shortened in the text view (JSON keeps everything).
MAX_SHOWN = 12
MAX_ITEMS = 40
MAX_ROWS = 20


def _plain(value: Any) -> Any:
    """Tensors and numpy arrays → nested lists; numpy scalars → Python numbers; tuples → lists."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if value.dtype.is_floating_point:
            value = value.float()
        return value.tolist()
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple, dict, str)):  # numpy
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class Check:
    """A statement about the step's numbers and whether it holds."""

    name: str
    ok: bool


@dataclass
class Step:
    """One idea of a topic: title, explanation, numbers, checks."""

    title: str
    explanation: str
    values: dict[str, Any] = field(default_factory=dict)
    #: per value: {"rows": [...], "cols": [...]} labels for the text view.
    labels: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def value(
        self, name: str, value: Any, *, rows: list[str] | None = None, cols: list[str] | None = None
    ) -> Step:
        """Record a number, a vector, a matrix (``rows``/``cols`` label it), a table or a string."""
        self.values[name] = _plain(value)
        if rows is not None or cols is not None:
            self.labels[name] = {k: [str(x) for x in v] for k, v in (("rows", rows), ("cols", cols)) if v}
        return self

    def tokens(self, name: str, pieces: list[str]) -> Step:
        """Record a list of token pieces; the text view shows them as a strip ``[He][llo][,]``."""
        self.values[name] = list(pieces)
        self.labels[name] = {"style": ["tokens"]}
        return self

    def check(self, name: str, ok: Any) -> Step:
        """Record a statement and whether it holds (``ok`` is turned into a bool)."""
        self.checks.append(Check(name, bool(ok)))
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "explanation": self.explanation,
            "values": {k: _rounded(v) for k, v in self.values.items()},
            "labels": self.labels,
            "checks": [{"name": c.name, "ok": c.ok} for c in self.checks],
        }


@dataclass
class Explanation:
    """Everything one topic showed: its steps, where its numbers came from, its pictures."""

    topic: str
    title: str
    #: where the numbers come from ("a tiny GPT trained on the spot ...", "model runs/demo").
    source: str
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: PNGs written: {"path": ..., "caption": ...}.
    figures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def step(self, title: str, explanation: str) -> Step:
        """Start a new step (returned for chaining ``.value(...)`` and ``.check(...)``)."""
        s = Step(title, " ".join(explanation.split()))
        self.steps.append(s)
        return s

    def note(self, text: str) -> None:
        self.notes.append(" ".join(text.split()))

    def figure(self, path: Any, caption: str) -> None:
        self.figures.append({"path": str(path), "caption": caption})

    def find(self, title: str) -> Step:
        """The step with this title (tests and the playground look steps up by title)."""
        for s in self.steps:
            if s.title == title:
                return s
        raise KeyError(
            f"no step titled {title!r} in topic {self.topic}; have {[s.title for s in self.steps]}"
        )

    @property
    def all_checks_hold(self) -> bool:
        return all(c.ok for s in self.steps for c in s.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "title": self.title,
            "source": self.source,
            "steps": [s.to_dict() for s in self.steps],
            "notes": self.notes,
            "figures": self.figures,
            "all_checks_hold": self.all_checks_hold,
            "seconds": round(self.seconds, 3),
        }


# ----------------------------------------------------------------------------- JSON


def _rounded(v: Any, digits: int = 6) -> Any:
    """Floats to ``digits`` significant digits (float32 noise helps no reader); non-finite → strings."""
    if isinstance(v, float):
        if not math.isfinite(v):
            return "inf" if v > 0 else "-inf" if v < 0 else "nan"
        return float(f"{v:.{digits}g}")
    if isinstance(v, list):
        return [_rounded(x, digits) for x in v]
    if isinstance(v, dict):
        return {k: _rounded(x, digits) for k, x in v.items()}
    return v


# ----------------------------------------------------------------------------- text


def fmt_number(v: Any) -> str:
    """A number the way a reader wants it: ints with separators, floats with 4 significant digits."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if math.isinf(v):
            return "-inf" if v < 0 else "inf"
        if v == 0:
            return "0"
        if 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_matrix(v: Any) -> bool:
    return (
        isinstance(v, list)
        and bool(v)
        and all(isinstance(r, list) for r in v)
        and all(_is_number(x) for r in v for x in r)
    )


def _is_records(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(r, dict) for r in v)


def _cell(v: Any, *, plain_ints: bool = False) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return "[" + " ".join(_cell(x, plain_ints=True) for x in v) + "]"
    if plain_ints and isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return fmt_number(v)


def _shown(items: list[Any]) -> tuple[list[Any], int]:
    return (items, 0) if len(items) <= MAX_SHOWN else (items[:MAX_SHOWN], len(items) - MAX_SHOWN)


def _matrix_lines(m: list[list[Any]], rows: list[str] | None, cols: list[str] | None) -> list[str]:
    shown_rows, more_rows = _shown(m)
    ncols = max(len(r) for r in m)
    col_idx = list(range(min(ncols, MAX_SHOWN)))
    more_cols = ncols - len(col_idx)
    rlabels = [(rows[i] if rows and i < len(rows) else str(i)) for i in range(len(shown_rows))]
    clabels = [(cols[j] if cols and j < len(cols) else str(j)) for j in col_idx]
    cells = [[_cell(r[j]) if j < len(r) else "" for j in col_idx] for r in shown_rows]
    width = max([len(c) for c in clabels] + [len(x) for row in cells for x in row] + [1])
    lw = max([len(x) for x in rlabels] + [0])
    lines = [" " * lw + "  " + " ".join(c.rjust(width) for c in clabels) + (" …" if more_cols else "")]
    for label, row in zip(rlabels, cells):
        lines.append(
            label.ljust(lw) + "  " + " ".join(x.rjust(width) for x in row) + (" …" if more_cols else "")
        )
    if more_rows:
        lines.append(f"… {more_rows} more rows")
    return lines


def _clip(text: str, width: int = 64) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _records_lines(recs: list[dict[str, Any]]) -> list[str]:
    shown, more = (recs, 0) if len(recs) <= MAX_ROWS else (recs[:MAX_ROWS], len(recs) - MAX_ROWS)
    keys = list(dict.fromkeys(k for r in shown for k in r))
    cells = [[_clip(_cell(r.get(k, ""))) for k in keys] for r in shown]
    numeric = [all(_is_number(r.get(k)) or r.get(k) is None for r in shown) for k in keys]
    widths = [max([len(k)] + [len(row[i]) for row in cells]) for i, k in enumerate(keys)]

    def line(parts: list[str]) -> str:
        return "  ".join(
            p.rjust(w) if num else p.ljust(w) for p, w, num in zip(parts, widths, numeric)
        ).rstrip()

    out = [line(keys)] + [line(row) for row in cells]
    if more:
        out.append(f"… {more} more rows")
    return out


def _value_lines(name: str, v: Any, labels: dict[str, list[str]]) -> list[str]:
    if labels.get("style") == ["tokens"]:
        limit = 4 * MAX_ITEMS
        lines, line = [], f"{name}: "
        for p in v[:limit]:
            if len(line) + len(p) + 2 > 96:
                lines.append(line)
                line = "  "
            line += f"[{p}]"
        lines.append(line + (f" … ({len(v)} in all)" if len(v) > limit else ""))
        return lines
    if _is_matrix(v):
        return [f"{name}  [{len(v)}x{max(len(r) for r in v)}]"] + [
            "  " + x for x in _matrix_lines(v, labels.get("rows"), labels.get("cols"))
        ]
    if _is_records(v):
        return [f"{name}:"] + ["  " + x for x in _records_lines(v)]
    if isinstance(v, dict) and not any(isinstance(x, dict) for x in v.values()):
        width = max(len(k) for k in v) if v else 0
        return [f"{name}:"] + [f"  {k.ljust(width)}  {_cell(x)}" for k, x in v.items()]
    if isinstance(v, list):
        shown, more = (v, 0) if len(v) <= MAX_ITEMS else (v[:MAX_ITEMS], len(v) - MAX_ITEMS)
        if labels.get("cols") and all(_is_number(x) for x in v):
            pairs = [f"{c}={_cell(x)}" for c, x in zip(labels["cols"], shown)]
            return [f"{name}: " + "  ".join(pairs) + (f"  … ({len(v)} in all)" if more else "")]
        if all(isinstance(x, str) for x in v) and sum(map(len, shown)) > 12 * len(shown):
            return [f"{name}:"] + [f"  {x}" for x in shown] + ([f"  … ({len(v)} in all)"] if more else [])
        body = ", ".join(repr(x) if isinstance(x, str) else _cell(x, plain_ints=True) for x in shown)
        return [f"{name}: [{body}{f', … ({len(v)} in all)' if more else ''}]"]
    if isinstance(v, str) and "\n" in v:
        return [f"{name}:"] + ["  | " + line for line in v.split("\n")]
    return [f"{name}: {_cell(v)}"]


def to_text(exp: Explanation, *, width: int = 100) -> str:
    """The explanation as a terminal reads it."""
    out = [f"== {exp.topic}: {exp.title} ==", f"source: {exp.source}", ""]
    for i, s in enumerate(exp.steps, start=1):
        out.append(f"{i}. {s.title}")
        out += textwrap.wrap(s.explanation, width, initial_indent="   ", subsequent_indent="   ")
        for name, v in s.values.items():
            out += ["   " + line for line in _value_lines(name, v, s.labels.get(name, {}))]
        for c in s.checks:
            out.append(f"   check  {c.name}: {c.ok}")
        out.append("")
    for n in exp.notes:
        out += textwrap.wrap(n, width, initial_indent="note: ", subsequent_indent="      ")
    for f in exp.figures:
        out.append(f"wrote {f['path']}  ({f['caption']})")
    return "\n".join(out).rstrip() + "\n"
