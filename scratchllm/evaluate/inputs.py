"""What ``scratchllm eval --data`` can be, and which part of it gets scored.

``--data`` is whatever the model takes:

=================================  =======================================================
``sniff`` kind                     what it is
=================================  =======================================================
``shards``                         a ``scratchllm prepare`` directory (``meta.json``)
``text``                           ``default`` (the embedded corpus), a text file, a directory of ``*.txt``
``dates``                          the built-in date-normalisation task of the seq2seq family
``labelled``                       a CSV / TSV / JSONL table with a text and a label column
``instruct``                       Alpaca-style ``{instruction, input, output}`` records (JSON / JSONL)
``choice``                         multiple-choice ``{question, choices, answer}`` records (JSON / JSONL)
=================================  =======================================================

(A seq2seq model reads any file as ``source<TAB>target`` pairs, whatever its name.)

**Which rows.** A table or a list of records is scored whole (split ``all``) unless it is cut
into train/val/test the way fine-tuning cuts it (:func:`select`): the same fractions, the same
seed, the same balancing, so ``--split test`` is exactly the test split a fine-tuned run held
out. The recipe comes from the ``config.json`` of a run that was fine-tuned on this very file
(its ``finetune.data`` record and ``train.seed``) — then ``auto`` means ``test`` — else from
``--split-fractions`` / ``--split-seed``, whose defaults are fine-tuning's defaults. A file is
"this very file" when it is the same file on disk, or — when the recorded path does not exist
from here (a run made in another directory) — when the file names match.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError

SPLITS = ("auto", "all", "train", "val", "test")
#: ``TrainConfig.seed``'s default: a fine-tune run with default flags cut its data with it.
DEFAULT_SPLIT_SEED = 1337
#: fine-tuning's default train,val,test fractions per kind of file.
DEFAULT_FRACTIONS = {"labelled": "0.7,0.1,0.2", "choice": "0.7,0.1,0.2", "instruct": "0.85,0.05,0.1"}
_TABLES = (".csv", ".tsv", ".tab")
_RECORDS = (".jsonl", ".ndjson", ".json")


def _first_record(path: Path) -> dict[str, Any] | None:
    """The first JSON object of a JSON-lines or JSON-list file (None if there is none)."""
    from scratchllm.io import read_text

    raw = read_text(path, "data file").lstrip()
    try:
        if raw.startswith("["):
            data = json.loads(raw)
            first = data[0] if isinstance(data, list) and data else None
        else:
            line = next((ln for ln in raw.splitlines() if ln.strip()), "")
            first = json.loads(line) if line else None
    except json.JSONDecodeError as err:
        raise ScratchLLMError(f"{path} is not valid JSON ({err.msg})") from None
    return first if isinstance(first, dict) else None


def sniff(data: str | os.PathLike) -> str:
    """The kind of ``--data`` (see the table above); missing paths are an error."""
    if str(data) == "default":
        return "text"
    if str(data) == "dates":
        return "dates"
    path = Path(data)
    if not path.exists():
        raise ScratchLLMError(
            f"data not found: {path} (give prepared shards, a text file, a labelled CSV/TSV/JSONL, "
            "instruction or multiple-choice JSON, or 'default' / 'dates')"
        )
    if path.is_dir():
        return "shards" if (path / "meta.json").is_file() or (path / "train.bin").exists() else "text"
    suffix = path.suffix.lower()
    if suffix in _TABLES:
        return "labelled"
    if suffix in _RECORDS:
        first = _first_record(path) or {}
        if "instruction" in first:
            return "instruct"
        if "question" in first and "choices" in first:
            return "choice"
        return "labelled"
    return "text"


def same_file(recorded: str | None, given: str | os.PathLike) -> bool:
    """Is ``given`` the file a run recorded as ``recorded``? (See the module docstring.)"""
    if not recorded:
        return False
    a, b = Path(recorded), Path(given)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.name == b.name


# ----------------------------------------------------------------------------- split recipes


@dataclass(frozen=True)
class Recipe:
    """How one file is cut into train/val/test: :func:`scratchllm.data.classification.make_splits`
    with these settings (plus, for labelled files, the columns and balancing)."""

    fractions: str
    seed: int
    balance: bool = False
    text_column: str = "text"
    label_column: str = "label"
    origin: str = "defaults"

    def same_cut(self, other: Recipe) -> bool:
        return (self.fractions, self.seed, self.balance) == (other.fractions, other.seed, other.balance)


@dataclass
class RunRecord:
    """What a fine-tuned run says about its data (``config.json``: ``finetune.data``, ``train.seed``)."""

    name: str
    data: dict[str, Any]
    seed: int

    @classmethod
    def of(cls, name: str, config: dict[str, Any]) -> RunRecord | None:
        info = (config.get("finetune") or {}).get("data")
        if not isinstance(info, dict) or "train_file" not in info:
            return None
        seed = (config.get("train") or {}).get("seed", DEFAULT_SPLIT_SEED)
        return cls(name, info, int(seed))

    def role(self, path: str | os.PathLike) -> str | None:
        """``cut`` (the run cut this file into its splits), ``train`` (trained on all of it),
        ``val``/``test`` (its separate val/test file), or None."""
        d = self.data
        if same_file(d.get("train_file"), path):
            return "cut" if d.get("split") else "train"
        if same_file(d.get("test_file"), path):
            return "test"
        if same_file(d.get("val_file"), path):
            return "val"
        return None

    def recipe(self) -> Recipe:
        d = self.data
        return Recipe(
            str(d["split"]),
            self.seed,
            bool(d.get("balance", False)),
            str(d.get("text_column") or "text"),
            str(d.get("label_column") or "label"),
            origin=f"the config.json of {self.name}",
        )


@dataclass
class Selection:
    """The rows to score, the pool few-shot examples come from, and how they were chosen."""

    rows: list[Any]
    pool: list[Any]
    split: str
    description: dict[str, Any] = field(default_factory=dict)


def _read(kind: str, path: str | os.PathLike, recipe: Recipe) -> list[Any]:
    from scratchllm.data.classification import read_labelled_file
    from scratchllm.data.instruction import load_instruction_records
    from scratchllm.evaluate.prompting import read_choices

    if kind == "labelled":
        return read_labelled_file(path, text_column=recipe.text_column, label_column=recipe.label_column)
    if kind == "instruct":
        return load_instruction_records(path)
    return read_choices(path)


def _cut(kind: str, path: str | os.PathLike, recipe: Recipe) -> tuple[list, list, list]:
    """Train/val/test exactly as fine-tuning makes them from one file."""
    from scratchllm.data.classification import load_classification_data, make_splits

    if kind == "labelled":
        d = load_classification_data(
            path,
            split=recipe.fractions,
            text_column=recipe.text_column,
            label_column=recipe.label_column,
            balance=recipe.balance,
            seed=recipe.seed,
        )
        return d.train, d.val, d.test
    tr, va, te, _ = make_splits(
        lambda p: _read(kind, p, recipe), path, val=None, test=None, split=recipe.fractions, seed=recipe.seed
    )
    return tr, va, te


def select(
    kind: str,
    path: str | os.PathLike,
    *,
    split: str = "auto",
    records: Sequence[RunRecord] = (),
    fractions: str | None = None,
    seed: int | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    need_pool: bool = False,
    shots_from: str | os.PathLike | None = None,
    limit: int | None = None,
) -> Selection:
    """Choose the rows of ``path`` (a ``labelled``, ``instruct`` or ``choice`` file) to score.

    ``records`` are the fine-tuned runs being evaluated (their recorded recipes decide the cut of
    their own training file; two runs that cut it differently are an error). ``need_pool``: the
    evaluation needs training examples (``--shots`` > 0); they come from ``shots_from`` when
    given, else from the train part of the cut. ``limit`` keeps the first rows of the selection.
    """
    if split not in SPLITS:
        raise ScratchLLMError(f"--split {split!r}: choose from {', '.join(SPLITS)} for this data")
    roles = [(r, r.role(path)) for r in records]
    cuts = [r.recipe() for r, role in roles if role == "cut"]
    for other in cuts[1:]:
        if not other.same_cut(cuts[0]):
            raise ScratchLLMError(
                f"the runs cut {path} differently ({cuts[0].origin}: {cuts[0].fractions} seed "
                f"{cuts[0].seed}; {other.origin}: {other.fractions} seed {other.seed}), so no test split "
                "is common to them; compare runs fine-tuned on the same split"
            )
    recorded = cuts[0] if cuts else None
    base = recorded or Recipe(DEFAULT_FRACTIONS[kind], DEFAULT_SPLIT_SEED)
    flagged = fractions is not None or seed is not None
    recipe = Recipe(
        fractions if fractions is not None else base.fractions,
        seed if seed is not None else base.seed,
        base.balance,
        text_column or base.text_column,
        label_column or base.label_column,
        origin="--split-fractions/--split-seed" if flagged else base.origin,
    )
    note = None
    if split == "auto":
        if recorded is not None or (need_pool and shots_from is None):
            split = "test"
        else:
            split = "all"
            role = next((role for _, role in roles if role), None)
            if role in ("test", "val"):
                note = f"the {role} file of {next(r.name for r, ro in roles if ro == role)}"
            elif role == "train":
                note = f"what {next(r.name for r, ro in roles if ro == 'train')} was trained on"
    if split == "all":
        rows = _read(kind, path, recipe)
        train_part: list[Any] = []
    else:
        tr, va, te = _cut(kind, path, recipe)
        rows = {"train": tr, "val": va, "test": te}[split]
        train_part = tr if split != "train" else []
        if not rows:
            raise ScratchLLMError(
                f"the {split} split of {path} ({recipe.fractions}) is empty; choose other --split-fractions "
                "or --split all"
            )
    pool: list[Any] = []
    if shots_from is not None:
        pool = _read(kind, shots_from, recipe)
    elif need_pool:
        if not train_part:
            raise ScratchLLMError(
                "few-shot examples must not come from the rows being scored; with --split "
                f"{split} pass --shots-from TRAIN_FILE (or use --split test)"
            )
        pool = train_part
    if limit is not None:
        rows = rows[:limit]
    description: dict[str, Any] = {
        "data": str(path),
        "split": split,
        "rows": len(rows),
        "recipe": None if split == "all" else {k: v for k, v in asdict(recipe).items()},
    }
    if shots_from is not None or need_pool:
        description["pool"] = {"from": str(shots_from) if shots_from else f"the train split of {path}"}
        description["pool"]["rows"] = len(pool)
    if note:
        description["note"] = note
    return Selection(rows, pool, split, description)
