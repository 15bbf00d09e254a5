"""Classification and instruction data: reading, errors, balancing, splitting, collation."""

from __future__ import annotations

import json

import pytest
import torch

from scratchllm.data.classification import (
    Example,
    balance_undersample,
    check_labels,
    collate_classification,
    encode_examples,
    label_names,
    parse_split,
    read_labelled_file,
    split_list,
)
from scratchllm.data.instruction import (
    IGNORE_INDEX,
    TEMPLATES,
    collate_instruction,
    encode_instructions,
    get_template,
    load_instruction_records,
)
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.char import CharTokenizer


def test_read_csv_tsv_jsonl(tmp_path):
    (tmp_path / "a.csv").write_text('label,text\nham,"hi, there"\nspam,WIN\n')
    (tmp_path / "a.tsv").write_text("txt\tcls\nhi there\tham\n")
    (tmp_path / "a.jsonl").write_text('{"text": "x", "label": 1}\n\n{"text": "y", "label": 0}\n')
    assert read_labelled_file(tmp_path / "a.csv") == [Example("hi, there", "ham"), Example("WIN", "spam")]
    assert read_labelled_file(tmp_path / "a.tsv", text_column="txt", label_column="cls")[0].label == "ham"
    assert [e.label for e in read_labelled_file(tmp_path / "a.jsonl")] == ["1", "0"]


def test_read_errors_are_clear(tmp_path):
    (tmp_path / "a.csv").write_text("label,body\nham,hi\n")
    with pytest.raises(ScratchLLMError, match=r"no column 'text'; its columns are: label, body"):
        read_labelled_file(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("label,text\nham,hi\nspam,  \n")
    with pytest.raises(ScratchLLMError, match="row 2: empty text"):
        read_labelled_file(tmp_path / "b.csv")
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(ScratchLLMError, match="cannot tell the format"):
        read_labelled_file(tmp_path / "c.txt")
    with pytest.raises(ScratchLLMError, match="not found"):
        read_labelled_file(tmp_path / "missing.csv")
    with pytest.raises(ScratchLLMError, match="label 'maybe', which the training data does not have"):
        check_labels([Example("t", "maybe")], ["ham", "spam"], where="val file v.csv")
    with pytest.raises(ScratchLLMError, match="at least 2 labels"):
        label_names([Example("a", "x")])


def test_balance_and_split():
    data = [Example(f"h{i}", "ham") for i in range(30)] + [Example(f"s{i}", "spam") for i in range(10)]
    bal = balance_undersample(data, seed=1)
    assert sorted(e.label for e in bal).count("ham") == 10 and len(bal) == 20
    assert balance_undersample(data, seed=1) == bal  # deterministic
    tr, va, te = split_list(bal, parse_split("0.7,0.1,0.2"), seed=0)
    assert (len(tr), len(va), len(te)) == (14, 2, 4)
    assert sorted(e.text for e in tr + va + te) == sorted(e.text for e in bal)
    with pytest.raises(ScratchLLMError, match="--split"):
        parse_split("0.5,0.5,0.5")


def test_encode_and_collate_classification():
    tok = CharTokenizer.train("abcdef")
    enc, truncated = encode_examples(
        [Example("abc", "x"), Example("abcdef", "y")], tok, ["x", "y"], max_length=4
    )
    assert truncated == 1 and [len(e.ids) for e in enc] == [3, 4]
    batch = collate_classification(enc, tok.eot_id)
    assert batch["input_ids"].shape == (2, 4)
    assert batch["input_ids"][0, 3].item() == tok.eot_id
    assert batch["lengths"].tolist() == [3, 4] and batch["labels"].tolist() == [0, 1]


def test_alpaca_template_format():
    t = TEMPLATES["alpaca"]
    with_input = t.format("Rewrite it.", "The cat sat.")
    assert with_input.startswith("Below is an instruction that describes a task.")
    assert "### Instruction:\nRewrite it.\n\n### Input:\nThe cat sat.\n\n### Response:\n" in with_input
    assert "### Input" not in t.format("Name a colour.", "")


def test_custom_template_file(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"prompt": "Q: {instruction} [{input}]\nA: "}))
    t = get_template(str(p))
    assert t.format("hi", "x") == "Q: hi [x]\nA: " and t.format("hi") == "Q: hi []\nA: "
    p.write_text(json.dumps({"prompt": "Q: {question}"}))
    with pytest.raises(ScratchLLMError, match="must contain"):
        get_template(str(p))
    with pytest.raises(ScratchLLMError, match="unknown template"):
        get_template("nope")


def test_fixture_records_and_errors(shared_data, tmp_path):
    records = load_instruction_records(shared_data / "instruction-data.json")
    assert len(records) == 1100 and all(set(r) == {"instruction", "input", "output"} for r in records)
    (tmp_path / "bad.jsonl").write_text('{"instruction": "x", "output": "y"}\n{"instruction": "z"}\n')
    with pytest.raises(ScratchLLMError, match=r"record 2 has no 'output' string \(its keys: instruction\)"):
        load_instruction_records(tmp_path / "bad.jsonl")


def _tok():
    return CharTokenizer.train("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,:#\n!?'")


def test_collate_masks_prompt_and_padding():
    tok = _tok()
    tpl = get_template({"prompt": "{instruction}|{input}:", "prompt_no_input": "{instruction}:"})
    recs = [
        {"instruction": "ab", "input": "", "output": "cd"},
        {"instruction": "a", "input": "", "output": "bcdef"},
    ]
    enc, stats = encode_instructions(recs, tok, tpl, max_length=32)
    assert stats.truncated == 0 and enc[0].prompt_len == 3  # "ab:"
    batch = collate_instruction(enc, tok.eot_id)
    x, y = batch["input_ids"], batch["targets"]
    assert x.shape == y.shape == (2, 7)  # longest row "a:bcdef<eot>" has 8 tokens
    # row 0 = "ab:cd<eot>": inputs a b : c d, targets masked prompt then c d <eot>, then -100 padding
    assert tok.decode(x[0, :5].tolist()) == "ab:cd" and (x[0, 5:] == tok.eot_id).all()
    assert y[0].tolist() == [
        IGNORE_INDEX,
        IGNORE_INDEX,
        *tok.encode("cd"),
        tok.eot_id,
        IGNORE_INDEX,
        IGNORE_INDEX,
    ]
    unmasked = collate_instruction(enc, tok.eot_id, mask_prompt=False)["targets"]
    assert unmasked[0, :2].tolist() == tok.encode("b:")
    assert torch.equal(unmasked[0, 2:], y[0, 2:])
    assert unmasked[1].tolist() == [*tok.encode(":bcdef"), tok.eot_id]


def test_truncation_counts():
    tok = _tok()
    tpl = get_template({"prompt": "{instruction}:"})
    recs = [
        {"instruction": "abcdef", "input": "", "output": "xyz"},
        {"instruction": "a" * 20, "input": "", "output": "b"},
    ]
    enc, stats = encode_instructions(recs, tok, tpl, max_length=8)
    assert stats.truncated == 2 and stats.dropped == 1
    assert len(enc) == 1 and len(enc[0].ids) == 9
