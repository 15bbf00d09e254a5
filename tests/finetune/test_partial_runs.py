"""Fine-tunes that train a part of the model (LoRA, the head, the last blocks) are stored on top
of their base: only what trained goes to disk, and loading combines it with the base again."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_finetune_lora import _lora_run

from scratchllm.errors import ScratchLLMError
from scratchllm.load import load_model
from scratchllm.weights import is_partial, read_safetensors


def test_a_lora_run_stores_only_the_adapters_and_loads_with_its_base(inst_files, tmp_path):
    run = tmp_path / "lora"
    res = _lora_run(inst_files, run)
    tensors, meta = read_safetensors(run / "model.safetensors")
    assert is_partial(meta) and tensors and all(".lora_" in k for k in tensors)
    info = json.loads((run / "config.json").read_text())["finetune"]
    assert info["stored"] == "trainable" and info["base_model_path"].endswith("base")
    # the adapter is the same bytes on disk (a hard link), the checkpoint too
    assert (run / "adapter" / "adapter.safetensors").stat().st_ino == (
        run / "model.safetensors"
    ).stat().st_ino
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step-{res.steps:08d}"]  # finished: 1 kept
    weights_bytes = sum(p.stat().st_size for p in run.rglob("*.safetensors") if p.stat().st_nlink == 1)
    weights_bytes += (run / "model.safetensors").stat().st_size
    base_bytes = (inst_files / "base" / "model.safetensors").stat().st_size
    assert weights_bytes < 0.5 * base_bytes, (weights_bytes, base_bytes)  # a tiny model; GPT-2: ~3 %

    loaded = load_model(run)
    assert loaded.arch == "gpt-lora"
    x = torch.randint(0, loaded.model.config.vocab_size, (1, 12))
    with torch.no_grad():
        ours = loaded.model(x)
    base = load_model(inst_files / "base").model
    with torch.no_grad():
        assert not torch.allclose(ours, base(x))  # the adapters do something...
    merged = load_model(run).model
    for name, p in base.named_parameters():  # ...and the frozen weights are exactly the base's
        if name in dict(merged.named_parameters()):
            assert torch.equal(dict(merged.named_parameters())[name], p), name


def test_a_partial_run_without_its_base_says_what_to_do(inst_files, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(inst_files / "base", base)
    run = tmp_path / "lora"
    res = _lora_run_from(inst_files, base, run)
    assert res.steps > 0
    shutil.move(base, tmp_path / "moved")
    with pytest.raises(ScratchLLMError, match="base model .* is not where it was .*lora merge"):
        load_model(run)
    shutil.move(tmp_path / "moved", base)
    # a different base of the same shape is refused by its fingerprint
    other = load_model(base)
    with torch.no_grad():
        other.model.blocks[0].attn.qkv.weight.add_(1.0)
    from scratchllm.runs import save_run_files

    shutil.rmtree(base)
    save_run_files(base, other.model, arch="gpt", model_config=other.model.config, tokenizer=other.tokenizer)
    with pytest.raises(ScratchLLMError, match="not the one .* was fine-tuned from"):
        load_model(run)


def _lora_run_from(inst_files, base, out):
    from scratchllm.data.instruction import get_template
    from scratchllm.finetune.common import resolve_train_config
    from scratchllm.finetune.instruct import finetune_instruct
    from scratchllm.model.lora import LoRAConfig
    from scratchllm.tasks.instruct import load_instruction_data

    data = load_instruction_data(
        inst_files / "train.json", val=inst_files / "val.json", test=inst_files / "test.jsonl"
    )
    rc = resolve_train_config(
        overrides=["device=cpu", "batch_size=8", "max_steps=2", "eval_steps=1"], lora=True
    )
    return finetune_instruct(
        base,
        data,
        out,
        train_cfg=rc.train,
        epochs=None,
        lora=LoRAConfig(r=2, alpha=4),
        template=get_template(json.loads((inst_files / "template.json").read_text())),
        progress=False,
        max_new_tokens=4,
    )
