"""`scratchllm compare`: variants parsed, trained through the one loop, table + plot written."""

from __future__ import annotations

import json

import pytest

from scratchllm.cli.main import main
from scratchllm.errors import ScratchLLMError
from scratchllm.train.compare import DEFAULT_VARIANTS, parse_variants


def test_parse_variants() -> None:
    assert parse_variants("base:;rope:pos_emb=rope,n_kv_head=1; moe : n_experts=2") == {
        "base": {},
        "rope": {"pos_emb": "rope", "n_kv_head": "1"},
        "moe": {"n_experts": "2"},
    }
    with pytest.raises(ScratchLLMError, match="key=value"):
        parse_variants("a:pos_emb")
    with pytest.raises(ScratchLLMError, match="twice"):
        parse_variants("a:;a:")
    assert {"gpt2", "rope", "alibi", "llama-style", "post-norm", "gqa", "moe"} <= set(DEFAULT_VARIANTS)


def test_compare_writes_table_and_plot(tmp_path, shared_data, capsys) -> None:
    from scratchllm.data import prepare
    from scratchllm.tokenizer import CharTokenizer

    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    src = tmp_path / "verdict.txt"
    src.write_text(text, encoding="utf-8")
    prepare(CharTokenizer.train(text), [src], tmp_path / "data", progress=False, workers=1)
    out = tmp_path / "cmp"
    args = [
        "compare",
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(out),
        "--max-steps",
        "4",
        "--variants",
        "base:;llama:pos_emb=rope,norm=rmsnorm,activation=swiglu;moe:n_experts=2,moe_top_k=1",
        "--set",
        "n_embd=32",
        "--set",
        "context_length=32",
        "--set",
        "eval_steps=1",
        "--set",
        "batch_size=4",
    ]
    assert main(args) == 0
    table = (out / "compare.md").read_text()
    assert table.count("\n") == 5 and "| llama |" in table and "n_experts=2" in table
    doc = json.loads((out / "compare.json").read_text())
    assert [r["name"] for r in doc["variants"]] == ["base", "llama", "moe"]
    assert all(
        r["val_loss"] is not None and r["params"] > 0 and len(r["val_curve"]) == 4 for r in doc["variants"]
    )
    assert (out / "val_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "runs" / "moe" / "model.safetensors").is_file()
    # An existing comparison is not overwritten without --force.
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
