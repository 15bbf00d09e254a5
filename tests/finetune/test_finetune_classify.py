"""Classification fine-tuning: last-token pooling, trainable parts, a real task end to end, errors."""

from __future__ import annotations

import json

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.finetune.common import select_trainable
from scratchllm.load import load_model
from scratchllm.model.config import GPTConfig
from scratchllm.model.finetuned import classifier_from_base
from scratchllm.model.gpt import GPTModel
from scratchllm.model.lora import LoRAConfig


def _tiny_gpt(seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(GPTConfig(vocab_size=50, context_length=32, n_layer=3, n_head=2, n_embd=16))


def test_reads_the_last_real_token_of_right_padded_rows():
    model = classifier_from_base(_tiny_gpt(), ["a", "b", "c"]).eval()
    short = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[5, 6, 7, 49, 49], [1, 2, 3, 4, 5]])
    with torch.no_grad():
        alone = model(short)  # no lengths: the last position
        both = model(padded, lengths=torch.tensor([3, 5]))
    assert both.shape == (2, 3)
    torch.testing.assert_close(both[0], alone[0], rtol=0, atol=1e-6)
    # The body is the base's: the token embedding survived the head swap.
    assert torch.equal(model.tok_emb.weight, _tiny_gpt().tok_emb.weight)


def test_trainable_modes():
    model = classifier_from_base(_tiny_gpt(), ["a", "b"])
    head = sum(p.numel() for p in model.out_head.parameters())
    block = sum(p.numel() for p in model.blocks[0].parameters())
    norm = sum(p.numel() for p in model.final_norm.parameters())
    t, total = select_trainable(model, "head")
    assert t == head
    t, _ = select_trainable(model, "last", last_blocks=2)
    assert t == head + 2 * block + norm
    assert not model.blocks[0].attn.qkv.weight.requires_grad and model.blocks[2].attn.qkv.weight.requires_grad
    t, _ = select_trainable(model, "all")
    assert t == total
    lora_model = classifier_from_base(_tiny_gpt(), ["a", "b"], LoRAConfig(r=2, targets=("qkv",)))
    t, _ = select_trainable(lora_model, "lora")
    assert t == head + 3 * 2 * (16 + 48)  # the new head + A [2,16] and B [48,2] per block
    assert {n for n, p in lora_model.named_parameters() if p.requires_grad} >= {
        "out_head.weight",
        "out_head.bias",
    }


def test_classify_end_to_end(cls_files, tmp_path, cli, fast_set):
    run = tmp_path / "run"
    rc, out, err = cli(
        [
            "finetune",
            "classify",
            "--model",
            cls_files / "base",
            "--data",
            cls_files / "data.csv",
            "--out",
            run,
            "--trainable",
            "all",
            "--epochs",
            "3",
            "--quiet",
            *fast_set,
        ]
    )
    assert rc == 0, err
    assert "test: accuracy" in out and "true\\pred" in out
    metrics = json.loads((run / "test_metrics.json").read_text())
    # Two balanced classes: chance is 0.5. A 2-layer char model learns prose vs. verse quickly.
    assert metrics["test"]["accuracy"] >= 0.7, metrics["test"]
    assert metrics["test"]["n"] >= 30 and len(metrics["test"]["confusion_matrix"]) == 2
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(e["event"] == "eval" and "accuracy" in e for e in events)
    assert (run / "loss.png").stat().st_size > 0

    loaded = load_model(run)
    assert loaded.arch == "gpt-classifier" and loaded.model.config.labels == ("shakespeare", "verdict")
    rc, out, _ = cli(
        ["classify", "--model", run, "--text", "I had always thought him rather a cheap genius."]
    )
    assert rc == 0
    label, prob = out.strip().split("\t")
    assert label in ("shakespeare", "verdict") and 0.5 <= float(prob) <= 1.0
    rc, out, _ = cli(["classify", "--model", run, "--text", "a", "--text", "b", "--json"])
    assert rc == 0 and len(json.loads(out)) == 2

    # Nothing is overwritten without --force.
    rc, _, err = cli(
        [
            "finetune",
            "classify",
            "--model",
            cls_files / "base",
            "--data",
            cls_files / "data.csv",
            "--out",
            run,
            "--quiet",
            *fast_set,
        ]
    )
    assert rc == 2 and "--force" in err


@pytest.mark.parametrize(
    ("files", "extra", "message"),
    [
        ({"t.csv": "label,body\nham,hi\nspam,yo\n"}, [], "no column 'text'; its columns are: label, body"),
        ({"t.csv": "label,text\nham,hi\nspam,\n"}, [], "row 2: empty text"),
        (
            {"t.csv": "label,text\nham,hi\nspam,yo\n", "v.csv": "label,text\nmaybe,hm\n"},
            ["--val", "v.csv"],
            "label 'maybe', which the training data does not have",
        ),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, cli, cls_files, files, extra, message):
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    extra = [str(tmp_path / x) if x.endswith(".csv") else x for x in extra]
    rc, _, err = cli(
        [
            "finetune",
            "classify",
            "--model",
            cls_files / "base",
            "--data",
            tmp_path / "t.csv",
            *extra,
            "--out",
            tmp_path / "run",
        ]
    )
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_classify_resume_continues_the_run(cls_files, tmp_path):
    from scratchllm.finetune.classify import finetune_classify
    from scratchllm.finetune.common import resolve_train_config
    from scratchllm.tasks.classify import load_classification_data

    data = load_classification_data(cls_files / "data.csv")
    overrides = ["device=cpu", "batch_size=16", "max_steps=4", "save_interval=2"]
    cfg = resolve_train_config(overrides=overrides).train
    kw = dict(train_cfg=cfg, epochs=None, progress=False)
    first = finetune_classify(cls_files / "base", data, tmp_path / "r", stop_at=2, **kw)
    assert first.train_result.interrupted == "stop_at" and not (tmp_path / "r" / "test_metrics.json").exists()
    done = finetune_classify(None, data, tmp_path / "r", resume=True, **kw)
    assert done.train_result.resumed_from == 2 and done.steps == 4
    assert json.loads((tmp_path / "r" / "test_metrics.json").read_text())["step"] == 4
    other = load_classification_data(cls_files / "data.csv", balance=True, split="0.5,0.25,0.25")
    other.labels = ["a", "b"]
    with pytest.raises(ScratchLLMError, match="labels"):
        finetune_classify(None, other, tmp_path / "r", resume=True, **kw)
