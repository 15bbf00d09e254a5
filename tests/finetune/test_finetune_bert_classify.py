"""Classification fine-tuning of a BERT: [CLS] pooling, padding mask, trainable parts, a real task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scratchllm.data.mlm import BERT_SPECIAL_TOKENS, BertSpecialIds, with_special_tokens
from scratchllm.errors import ScratchLLMError
from scratchllm.finetune.common import select_trainable
from scratchllm.load import load_model
from scratchllm.model.bert import BertConfig, BertModel
from scratchllm.model.finetuned import BertClassifier, classifier_from_base
from scratchllm.model.lora import LoRAConfig
from scratchllm.runs import save_run_files
from scratchllm.tokenizer.char import CharTokenizer


def _tiny_bert(seed: int = 0, **kw) -> BertModel:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=50, context_length=32, n_layer=3, n_head=2, n_embd=16, dropout=0.0)
    return BertModel(BertConfig(**{**cfg, **kw}))


@pytest.fixture(scope="module")
def bert_base(cls_files: Path, cls_rows) -> Path:
    """A randomly initialised tiny BERT run whose char tokenizer (+ BERT specials) covers the task."""
    tok = with_special_tokens(CharTokenizer.train("".join(t for t, _ in cls_rows)), BERT_SPECIAL_TOKENS)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size, context_length=96, n_layer=2, n_head=2, n_embd=32, dropout=0.0
    )
    out = cls_files / "bert-base"
    if not out.exists():
        save_run_files(out, BertModel(cfg), arch="bert", model_config=cfg, tokenizer=tok)
    return out


def test_reads_the_cls_vector_and_masks_the_padding():
    base = _tiny_bert()
    model = classifier_from_base(base, ["a", "b", "c"]).eval()
    assert isinstance(model, BertClassifier) and model.arch == "bert-classifier"
    # The pretraining heads are gone; the encoder and the pooler are the base's.
    names = set(model.state_dict())
    assert not any(n.startswith(("mlm_", "nsp_head")) for n in names) and "out_head.weight" in names
    assert torch.equal(model.tok_emb.weight, base.tok_emb.weight)
    assert torch.equal(model.pooler.weight, base.pooler.weight)

    short = torch.tensor([[1, 5, 6, 7, 2]])
    padded = torch.tensor([[1, 5, 6, 7, 2, 0, 0], [1, 3, 4, 5, 6, 7, 2]])
    with torch.no_grad():
        alone = model(short)
        both = model(padded, lengths=torch.tensor([5, 7]))
        unmasked = model(padded)  # without lengths the padding is attended to
    assert both.shape == (2, 3)
    torch.testing.assert_close(both[0], alone[0], rtol=0, atol=1e-5)
    assert not torch.allclose(unmasked[0], alone[0], atol=1e-5)
    # The logits are the head on the pooled [CLS] (position 0) vector.
    with torch.no_grad():
        expected = model.out_head(model.pooled(model.encode(short)))
    torch.testing.assert_close(alone, expected)


def test_trainable_modes_include_the_pooler():
    model = classifier_from_base(_tiny_bert(norm_position="pre"), ["a", "b"])
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    head, block = count(model.out_head), count(model.blocks[0])
    top = count(model.pooler) + count(model.final_norm)
    t, total = select_trainable(model, "head")
    assert t == head
    t, _ = select_trainable(model, "last", last_blocks=2)
    assert t == head + 2 * block + top
    assert not model.blocks[0].attn.qkv.weight.requires_grad and model.pooler.weight.requires_grad
    t, _ = select_trainable(model, "all")
    assert t == total
    with pytest.raises(ScratchLLMError, match="LoRA fine-tuning is for GPT"):
        classifier_from_base(_tiny_bert(), ["a", "b"], LoRAConfig(r=2))


def test_bert_classify_end_to_end(bert_base, cls_files, tmp_path, cli, fast_set):
    run = tmp_path / "run"
    common = ["--model", bert_base, "--data", cls_files / "data.csv", "--out", run, "--quiet", *fast_set]
    # A random-init BERT must first learn to gather the text into [CLS]: after 3 epochs it still
    # predicts one class, after 6 it separates the two (the GPT test needs 3).
    rc, out, err = cli(["finetune", "classify", *common, "--trainable", "all", "--epochs", "6"])
    assert rc == 0, err
    assert "test: accuracy" in out
    metrics = json.loads((run / "test_metrics.json").read_text())
    # Two balanced classes: chance is 0.5; held-out test rows.
    assert metrics["test"]["accuracy"] >= 0.7, metrics["test"]
    assert metrics["test"]["n"] >= 30

    loaded = load_model(run)
    assert loaded.arch == "bert-classifier" and loaded.model.config.labels == ("shakespeare", "verdict")
    text = "I had always thought him rather a cheap genius."
    rc, out, _ = cli(["classify", "--model", run, "--text", text])
    assert rc == 0
    label, prob = out.strip().split("\t")
    assert label in ("shakespeare", "verdict") and 0.5 <= float(prob) <= 1.0

    # The inputs really are [CLS] text [SEP] padded with [PAD].
    fmt = loaded.model.text_format(loaded.tokenizer)
    special = BertSpecialIds.of(loaded.tokenizer)
    assert fmt.wrap([9, 9]) == [special.cls, 9, 9, special.sep] and fmt.pad_id == special.pad


def test_bert_classify_refuses_lora_and_resumes(bert_base, cls_files, tmp_path, cli, fast_set):
    rc, _, err = cli(
        [
            "finetune",
            "classify",
            "--model",
            bert_base,
            "--data",
            cls_files / "data.csv",
            "--out",
            tmp_path / "lora",
            "--lora-r",
            "4",
            "--quiet",
            *fast_set,
        ]
    )
    assert rc == 2 and "LoRA fine-tuning is for GPT" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "lora").exists()

    from scratchllm.finetune.classify import finetune_classify
    from scratchllm.finetune.common import resolve_train_config
    from scratchllm.tasks.classify import load_classification_data

    data = load_classification_data(cls_files / "data.csv")
    cfg = resolve_train_config(overrides=["device=cpu", "batch_size=16", "max_steps=4", "save_interval=2"])
    kw = dict(train_cfg=cfg.train, epochs=None, progress=False)
    first = finetune_classify(bert_base, data, tmp_path / "r", stop_at=2, **kw)
    assert first.train_result.interrupted == "stop_at"
    done = finetune_classify(None, data, tmp_path / "r", resume=True, **kw)
    assert done.train_result.resumed_from == 2 and done.steps == 4
    assert json.loads((tmp_path / "r" / "config.json").read_text())["architecture"] == "bert-classifier"
