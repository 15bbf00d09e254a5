"""LoRA on the GPT: peft parity, exact resume, adapter files, merge, mismatched bases."""

from __future__ import annotations

import json

import pytest
import torch

from scratchllm.data.instruction import get_template
from scratchllm.finetune.common import resolve_train_config
from scratchllm.finetune.instruct import finetune_instruct
from scratchllm.load import load_model
from scratchllm.model.config import GPTConfig
from scratchllm.model.finetuned import lora_model_from_base
from scratchllm.model.gpt import GPTModel
from scratchllm.model.lora import LoRAConfig, LoRALinear
from scratchllm.runs import save_run_files
from scratchllm.tasks.instruct import load_instruction_data
from scratchllm.weights import read_safetensors


def _gpt(seed: int = 0, tie: bool = True) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(
        GPTConfig(vocab_size=40, context_length=16, n_layer=2, n_head=2, n_embd=16, tie_weights=tie)
    )


def test_gpt_lora_starts_equal_and_matches_peft():
    peft = pytest.importorskip("peft")
    base = _gpt().eval()
    x = torch.randint(0, 40, (2, 10))
    ours = lora_model_from_base(base, LoRAConfig(r=4, alpha=8, targets=("qkv", "proj", "fc"))).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), base(x), rtol=0, atol=0)  # B = 0
        g = torch.Generator().manual_seed(1)
        for name, p in ours.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    ref = peft.get_peft_model(
        _gpt(), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["qkv", "proj", "fc"])
    ).eval()
    n_wrapped = 0
    with torch.no_grad():
        for name, layer in ours.named_modules():
            if isinstance(layer, LoRALinear):
                target = ref.base_model.model.get_submodule(name)
                target.lora_A["default"].weight.copy_(layer.lora_A)
                target.lora_B["default"].weight.copy_(layer.lora_B)
                n_wrapped += 1
        assert n_wrapped == 2 * 4  # qkv, attn.proj, ffn.fc, ffn.proj in each of 2 blocks
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)


def _lora_run(inst_files, out, *, stop_at=None, resume=False):
    data = load_instruction_data(
        inst_files / "train.json", val=inst_files / "val.json", test=inst_files / "test.jsonl"
    )
    rc = resolve_train_config(
        overrides=[
            "device=cpu",
            "batch_size=8",
            "max_steps=6",
            "eval_interval=3",
            "eval_steps=1",
            "save_interval=3",
            "log_interval=1",
        ],
        lora=True,
    )
    return finetune_instruct(
        inst_files / "base",
        data,
        out,
        train_cfg=rc.train,
        epochs=None,
        resume=resume,
        stop_at=stop_at,
        template=get_template(json.loads((inst_files / "template.json").read_text())),
        lora=LoRAConfig(r=4, alpha=8, targets=("qkv", "fc", "head")),
        max_new_tokens=4,
        progress=False,
    )


def test_lora_run_resume_adapter_and_merge(inst_files, tmp_path, cli):
    full = _lora_run(inst_files, tmp_path / "full")
    assert full.steps == 6 and full.adapter is not None
    assert full.trainable < full.total / 5  # only the adapters train
    # Resume: stop at step 3, continue to 6 -> the same adapter weights as one uninterrupted run.
    part = _lora_run(inst_files, tmp_path / "part", stop_at=3)
    assert part.train_result.interrupted == "stop_at" and part.adapter is None
    resumed = _lora_run(inst_files, tmp_path / "part", resume=True)
    assert resumed.train_result.resumed_from == 3 and resumed.steps == 6
    a, _ = read_safetensors(tmp_path / "full" / "adapter" / "adapter.safetensors")
    b, _ = read_safetensors(tmp_path / "part" / "adapter" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(".lora_" in k for k in a)  # the adapter holds no base weights
    info = json.loads((tmp_path / "full" / "adapter" / "adapter_config.json").read_text())
    assert info["r"] == 4 and info["targets"] == ["qkv", "fc", "head"] and info["base_fingerprint"]

    # Merge from the run (base weights inside) and from the bare adapter + --base: same model.
    rc, out, err = cli(["lora", "merge", "--model", tmp_path / "full", "--out", tmp_path / "m1"])
    assert rc == 0, err
    assert "untied" in out  # the head adapter sat on the tied embedding
    rc, _, err = cli(
        [
            "lora",
            "merge",
            "--model",
            tmp_path / "full" / "adapter",
            "--base",
            inst_files / "base",
            "--out",
            tmp_path / "m2",
        ]
    )
    assert rc == 0, err
    lora_model = load_model(tmp_path / "full")
    assert lora_model.arch == "gpt-lora"
    x = torch.randint(0, lora_model.tokenizer.vocab_size, (2, 20))
    with torch.no_grad():
        want = lora_model.model(x)
        for m in ("m1", "m2"):
            merged = load_model(tmp_path / m)
            assert merged.arch == "gpt" and merged.model.config.tie_weights is False
            assert not any(".lora_" in k for k in merged.model.state_dict())
            torch.testing.assert_close(merged.model(x), want, rtol=0, atol=1e-5)
    rc, _, err = cli(["lora", "merge", "--model", tmp_path / "full", "--out", tmp_path / "m1"])
    assert rc == 2 and "--force" in err

    # The same shapes with other weights is another base: the adapter refuses it.
    other = load_model(inst_files / "base")
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(0.01)
    save_run_files(
        tmp_path / "other",
        other.model,
        arch="gpt",
        model_config=other.model.config,
        tokenizer=other.tokenizer,
    )
    rc, _, err = cli(
        [
            "lora",
            "merge",
            "--model",
            tmp_path / "full" / "adapter",
            "--base",
            tmp_path / "other",
            "--out",
            tmp_path / "m3",
        ]
    )
    assert rc == 2 and "trained on a different base model" in err
    assert not (tmp_path / "m3").exists()


def test_merge_classifier_adapter(cls_files, tmp_path, cli):
    run = tmp_path / "run"
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
            "--lora-r",
            "2",
            "--lora-targets",
            "qkv,proj",
            "--set",
            "max_steps=3",
            "--set",
            "device=cpu",
            "--set",
            "eval_interval=0",
            "--quiet",
        ]
    )
    assert rc == 0, err
    cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert cfg["architecture"] == "gpt-classifier" and cfg["extra_params"] == ["out_head"]
    rc, _, err = cli(
        ["lora", "merge", "--model", run / "adapter", "--base", cls_files / "base", "--out", tmp_path / "m"]
    )
    assert rc == 0, err
    rc, _, err = cli(["lora", "merge", "--model", run, "--out", tmp_path / "m_run"])
    assert rc == 0, err
    texts = ["Thou art a villain, my lord.", "It was a cheap genius after all."]
    text_args = [a for t in texts for a in ("--text", t)]
    rc, out, _ = cli(["classify", "--model", run, "--json", *text_args])
    want = json.loads(out)
    for merged in ("m", "m_run"):
        rc, out, err = cli(["classify", "--model", tmp_path / merged, "--json", *text_args])
        assert rc == 0, err
        got = json.loads(out)
        assert [r["label"] for r in got] == [r["label"] for r in want]
        assert all(abs(a["probability"] - b["probability"]) < 1e-5 for a, b in zip(got, want))
        assert load_model(tmp_path / merged).model.config.lora_r == 0
