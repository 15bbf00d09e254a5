"""Labelled text for classification fine-tuning: read, check, balance, split, encode, batch.

A classification file is a table with a text column and a label column, as CSV, TSV or JSON
Lines (one object per line; a ``.json`` file holding a list of objects works too)::

    label,text
    ham,"Are we still on for lunch?"
    spam,"WINNER!! Claim your prize now"

Column names are configurable (``--text-column`` / ``--label-column``). Labels are strings; the
class ids are the training labels in sorted order (``ham`` = 0, ``spam`` = 1, as in the book's
spam example), and a val/test row with a label the training data never had is an error.

Batches are right-padded with ``<|endoftext|>`` and carry each row's real length, because the
classifier reads the model's output at the **last real token** — with causal attention that is
the only position that has seen the whole text, and padding after it cannot change it.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.io import read_text

TABLE_FORMATS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_EXTRA = "\0extra fields"
JSON_FORMATS = (".jsonl", ".ndjson", ".json")


@dataclass
class Example:
    text: str
    label: str


# ----------------------------------------------------------------------------- reading


def _read_rows(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows as dicts plus the column names seen, for any supported format."""
    suffix = path.suffix.lower()
    raw = read_text(path, "data file")  # read_text drops a BOM from spreadsheet exports
    if suffix in TABLE_FORMATS:
        tab = TABLE_FORMATS[suffix] == "\t"
        # TSV has no quoting: a `"` inside a text is just a character (with CSV quoting one stray
        # quote would swallow the rows after it). Every line must then have the header's fields.
        reader = csv.DictReader(
            raw.splitlines(),
            delimiter=TABLE_FORMATS[suffix],
            quoting=csv.QUOTE_NONE if tab else csv.QUOTE_MINIMAL,
            restkey=_EXTRA,
        )
        try:
            rows = list(reader)
        except csv.Error as err:
            raise ScratchLLMError(f"{path} is not valid {suffix[1:].upper()}: {err}") from None
        columns = list(reader.fieldnames or [])
        if tab:
            for n, row in enumerate(rows, start=2):
                extras = row.get(_EXTRA) or []
                missing = [k for k in columns if row.get(k) is None]
                if extras or missing:
                    got = len(columns) + len(extras) - len(missing)
                    raise ScratchLLMError(
                        f"{path} line {n} has {got} tab-separated fields but the header has {len(columns)}"
                        " (a TAB inside a text? TSV texts cannot contain tabs)"
                    )
        return rows, columns
    if suffix in JSON_FORMATS:
        rows = []
        stripped = raw.lstrip()
        if suffix == ".json" and stripped.startswith("["):
            try:
                rows = json.loads(raw)
            except json.JSONDecodeError as err:
                raise ScratchLLMError(f"{path} is not valid JSON ({err})") from None
        else:
            for n, line in enumerate(raw.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ScratchLLMError(f"{path} line {n} is not valid JSON ({err.msg})") from None
        for n, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise ScratchLLMError(f"{path} record {n} is not a JSON object")
        columns: list[str] = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        return rows, columns
    raise ScratchLLMError(
        f"cannot tell the format of {path}: use a .csv, .tsv, .jsonl or .json file "
        "(CSV with a header row; JSON Lines with one object per line)"
    )


def read_labelled_file(
    path: str | Path, *, text_column: str = "text", label_column: str = "label"
) -> list[Example]:
    """Read a labelled file, checking that both columns exist and no text or label is empty."""
    path = Path(path)
    rows, columns = _read_rows(path)
    for col, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
        if col not in columns:
            raise ScratchLLMError(
                f"{path} has no column {col!r}; its columns are: {', '.join(columns) or '(none)'} "
                f"(choose with {flag})"
            )
    if not rows:
        raise ScratchLLMError(f"{path} has no rows")
    examples = []
    for n, row in enumerate(rows, start=1):
        text, label = row.get(text_column), row.get(label_column)
        if text is None or not str(text).strip():
            raise ScratchLLMError(f"{path} row {n}: empty text in column {text_column!r}")
        if label is None or not str(label).strip():
            raise ScratchLLMError(f"{path} row {n}: empty label in column {label_column!r}")
        examples.append(Example(str(text), str(label).strip()))
    return examples


def label_names(examples: Sequence[Example]) -> list[str]:
    """The classes, in sorted order: class id i is ``label_names(...)[i]``."""
    names = sorted({e.label for e in examples})
    if len(names) < 2:
        raise ScratchLLMError(f"classification needs at least 2 labels; the training data has only {names}")
    return names


def check_labels(examples: Sequence[Example], labels: Sequence[str], *, where: str) -> None:
    """Refuse val/test rows whose label the classifier cannot output."""
    known = set(labels)
    for n, e in enumerate(examples, start=1):
        if e.label not in known:
            raise ScratchLLMError(
                f"{where} row {n} has label {e.label!r}, which the training data does not have "
                f"(labels: {', '.join(labels)})"
            )


# ----------------------------------------------------------------------------- balancing, splitting


def balance_undersample(examples: Sequence[Example], *, seed: int = 0) -> list[Example]:
    """Keep an equal number of rows per class (the smallest class's count), chosen at random.

    The book does this to the SMS spam data (747 spam vs 4,825 ham): a classifier trained on the
    raw imbalance can score 87% accuracy by always answering "ham".
    """
    by_label: dict[str, list[Example]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    n = min(len(v) for v in by_label.values())
    rng = random.Random(seed)
    kept = [e for label in sorted(by_label) for e in rng.sample(by_label[label], n)]
    rng.shuffle(kept)
    return kept


def parse_split(spec: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.7,0.1,0.2"`` → (train, val, test) fractions; they must be >= 0 and sum to 1."""
    try:
        parts = [float(x) for x in (spec.split(",") if isinstance(spec, str) else spec)]
    except ValueError:
        raise ScratchLLMError(f"--split expects three fractions like 0.7,0.1,0.2; got {spec!r}") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1) > 1e-6 or parts[0] == 0:
        raise ScratchLLMError(
            f"--split expects train,val,test fractions >= 0 summing to 1 (train > 0); got {spec!r}"
        )
    return parts[0], parts[1], parts[2]


def split_list(
    items: Sequence[Any], fractions: tuple[float, float, float], *, seed: int = 0
) -> tuple[list, list, list]:
    """Shuffle (with ``seed``) and cut into train/val/test by ``fractions``."""
    items = list(items)
    random.Random(seed).shuffle(items)
    n_train = int(len(items) * fractions[0])
    n_val = int(len(items) * fractions[1])
    if fractions[2] == 0:  # no test split requested: give the rounding remainder to val
        n_val = len(items) - n_train
    return items[:n_train], items[n_train : n_train + n_val], items[n_train + n_val :]


def make_splits(
    read: Callable[[str | Path], list[Any]],
    train: str | Path,
    *,
    val: str | Path | None,
    test: str | Path | None,
    split: str,
    seed: int,
    prepare: Callable[[list[Any]], list[Any]] | None = None,
) -> tuple[list, list, list, dict[str, Any]]:
    """Train/val/test rows from one file cut by ``split``, or from separate files.

    With only ``train`` given, its rows are (``prepare``d, e.g. balanced, then) shuffled with
    ``seed`` and cut by the ``split`` fractions. With ``val``/``test`` files the training file is
    used whole (after ``prepare``). Also returns a description of where each split came from, which
    a run saves so that ``--resume`` can check it is given the same data.
    """
    rows = read(train)
    if prepare is not None:
        rows = prepare(rows)
    one_file = val is None and test is None
    if one_file:
        tr, va, te = split_list(rows, parse_split(split), seed=seed)
    else:
        tr = rows
        va = read(val) if val is not None else []
        te = read(test) if test is not None else []
    description = {
        "train_file": str(train),
        "val_file": str(val) if val else None,
        "test_file": str(test) if test else None,
        "split": split if one_file else None,
    }
    return tr, va, te, description


def label_counts(examples: Sequence[Example]) -> dict[str, int]:
    return dict(sorted(Counter(e.label for e in examples).items()))


@dataclass
class ClassificationData:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    labels: list[str]
    #: how the splits were made, saved in config.json (so --resume can check it is the same data)
    description: dict[str, Any] = field(default_factory=dict)


def load_classification_data(
    train: str | Path,
    *,
    val: str | Path | None = None,
    test: str | Path | None = None,
    split: str = "0.7,0.1,0.2",
    text_column: str = "text",
    label_column: str = "label",
    balance: bool = False,
    seed: int = 0,
) -> ClassificationData:
    """Read the labelled files and produce train/val/test splits.

    With only ``train`` given, that file is (balanced, then) shuffled and cut by ``split`` — the
    book's 70/10/20 by default. With ``val``/``test`` files, the training file is used whole and
    ``balance`` applies to it alone.
    """
    tr, va, te, description = make_splits(
        lambda p: read_labelled_file(p, text_column=text_column, label_column=label_column),
        train,
        val=val,
        test=test,
        split=split,
        seed=seed,
        prepare=(lambda rows: balance_undersample(rows, seed=seed)) if balance else None,
    )
    if val is None and test is None and not va:
        raise ScratchLLMError(f"the split {split} leaves no validation rows; use a bigger val fraction")
    labels = label_names(tr)
    check_labels(va, labels, where=f"val file {val}" if val else "val split")
    check_labels(te, labels, where=f"test file {test}" if test else "test split")
    return ClassificationData(
        tr,
        va,
        te,
        labels,
        {
            **description,
            "balance": balance,
            "text_column": text_column,
            "label_column": label_column,
            "counts": {"train": label_counts(tr), "val": label_counts(va), "test": label_counts(te)},
        },
    )


# ----------------------------------------------------------------------------- encoding, batching


@dataclass
class EncodedExample:
    ids: list[int]
    label: int


def encode_examples(
    examples: Sequence[Example], tokenizer: Any, labels: Sequence[str], *, max_length: int
) -> tuple[list[EncodedExample], int]:
    """Token ids and class ids; texts longer than ``max_length`` tokens keep their first part.

    Returns the encoded examples and how many were truncated (so the caller can warn).
    """
    index = {name: i for i, name in enumerate(labels)}
    out, truncated = [], 0
    for e in examples:
        ids = tokenizer.encode(e.text)
        if not ids:
            raise ScratchLLMError(f"text {e.text!r} encodes to no tokens")
        if len(ids) > max_length:
            ids, truncated = ids[:max_length], truncated + 1
        out.append(EncodedExample(ids, index[e.label]))
    return out, truncated


def collate_classification(batch: Sequence[EncodedExample], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch to its longest row: ``input_ids [B, T]``, ``lengths [B]``, ``labels [B]``."""
    import torch

    T = max(len(e.ids) for e in batch)
    input_ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    for i, e in enumerate(batch):
        input_ids[i, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
    return {
        "input_ids": input_ids,
        "lengths": torch.tensor([len(e.ids) for e in batch], dtype=torch.long),
        "labels": torch.tensor([e.label for e in batch], dtype=torch.long),
    }
