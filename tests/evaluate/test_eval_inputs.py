"""Which rows are scored: sniffing --data, and cutting a file exactly as fine-tuning cut it."""

from __future__ import annotations

import json

import pytest
from eval_helpers import labelled_rows, write_csv

from scratchllm.architectures import ARCHITECTURES
from scratchllm.data.classification import load_classification_data
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluate import inputs
from scratchllm.evaluate.run import tasks_for


def test_every_architecture_has_an_evaluation():
    """The registry decides what eval measures: every record names exactly one kind of model."""
    for rec in ARCHITECTURES.values():
        kinds = [rec.generates_text, rec.masked_lm, rec.translates, rec.is_classifier]
        assert sum(kinds) == 1, rec.name
        assert tasks_for(rec), rec.name


def test_default_split_seed_is_fine_tunings():
    from scratchllm.train.config import TrainConfig

    assert TrainConfig().seed == inputs.DEFAULT_SPLIT_SEED


def test_sniff(tmp_path):
    write_csv(tmp_path / "a.csv", [("x", "y")])
    (tmp_path / "i.jsonl").write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    (tmp_path / "m.json").write_text(json.dumps([{"question": "q", "choices": ["a", "b"], "answer": 0}]))
    (tmp_path / "l.jsonl").write_text(json.dumps({"text": "a", "label": "b"}) + "\n")
    (tmp_path / "t.txt").write_text("hello")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "meta.json").write_text("{}")
    got = {
        p: inputs.sniff(tmp_path / p) for p in ("a.csv", "i.jsonl", "m.json", "l.jsonl", "t.txt", "shards")
    }
    assert got == {
        "a.csv": "labelled",
        "i.jsonl": "instruct",
        "m.json": "choice",
        "l.jsonl": "labelled",
        "t.txt": "text",
        "shards": "shards",
    }
    assert inputs.sniff("default") == "text" and inputs.sniff("dates") == "dates"
    with pytest.raises(ScratchLLMError, match="data not found"):
        inputs.sniff(tmp_path / "nope.csv")


def _record(path, split="0.6,0.2,0.2", seed=5, balance=False):
    return inputs.RunRecord(
        "runs/x",
        {"train_file": str(path), "val_file": None, "test_file": None, "split": split, "balance": balance,
         "text_column": "text", "label_column": "label"},
        seed,
    )  # fmt: skip


def test_select_reproduces_the_fine_tuning_test_split(tmp_path):
    path = write_csv(tmp_path / "d.csv", labelled_rows(15))
    for balance in (False, True):
        want = load_classification_data(path, split="0.6,0.2,0.2", seed=5, balance=balance)
        sel = inputs.select("labelled", path, records=[_record(path, balance=balance)])
        assert sel.split == "test" and sel.rows == want.test
        assert sel.description["recipe"]["origin"] == "the config.json of runs/x"
        val = inputs.select("labelled", path, split="val", records=[_record(path, balance=balance)])
        assert val.rows == want.val
    # no record: the whole file, unless few-shot examples are needed (then fine-tuning's defaults)
    assert len(inputs.select("labelled", path).rows) == 30
    sel = inputs.select("labelled", path, need_pool=True)
    want = load_classification_data(path, split="0.7,0.1,0.2", seed=1337)
    assert sel.rows == want.test and sel.pool == want.train
    flags = inputs.select("labelled", path, split="test", fractions="0.5,0.25,0.25", seed=2)
    assert flags.rows == load_classification_data(path, split="0.5,0.25,0.25", seed=2).test
    assert len(inputs.select("labelled", path, split="test", limit=2, records=[_record(path)]).rows) == 2


def test_select_errors(tmp_path):
    path = write_csv(tmp_path / "d.csv", labelled_rows(15))
    with pytest.raises(ScratchLLMError, match="cut .* differently"):
        inputs.select("labelled", path, records=[_record(path), _record(path, seed=6)])
    with pytest.raises(ScratchLLMError, match="must not come from the rows being scored"):
        inputs.select("labelled", path, split="all", need_pool=True)
    other = write_csv(tmp_path / "pool.csv", labelled_rows(3, seed=9))
    sel = inputs.select("labelled", path, split="all", need_pool=True, shots_from=other)
    assert len(sel.pool) == 6 and len(sel.rows) == 30
    with pytest.raises(ScratchLLMError, match="choose from"):
        inputs.select("labelled", path, split="dev")


def test_same_file_and_roles(tmp_path, monkeypatch):
    path = write_csv(tmp_path / "d.csv", labelled_rows(2))
    assert inputs.same_file(str(path), path)
    assert inputs.same_file("elsewhere/d.csv", path)  # recorded path not reachable from here: by name
    assert not inputs.same_file(str(write_csv(tmp_path / "e.csv", [])), path)
    rec = inputs.RunRecord("r", {"train_file": "t.csv", "val_file": "v.csv", "test_file": "d.csv"}, 0)
    assert rec.role(path) == "test"
    sel = inputs.select("labelled", path, records=[rec])
    assert sel.split == "all" and sel.description["note"] == "the test file of r"
