"""LoRALinear: step 0 equals the base, parity with Hugging Face peft, merge, adapter files."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scratchllm.adapters import AdapterInfo, load_adapter, save_adapter
from scratchllm.errors import ScratchLLMError
from scratchllm.model.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    base_fingerprint,
    count_parameters,
    merge_lora,
)


class TinyNet(nn.Module):
    """Two blocks named like the GPT's layers, so the target aliases apply."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"attn": nn.ModuleDict({"qkv": nn.Linear(8, 24), "proj": nn.Linear(8, 8)})})
            for _ in range(2)
        )
        self.out_head = nn.Linear(8, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            q, _, _ = b["attn"]["qkv"](x).split(8, dim=-1)
            x = x + torch.tanh(b["attn"]["proj"](q))
        return self.out_head(x)


def _randomise_b(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_step_zero_equals_base_and_only_lora_trains():
    torch.manual_seed(0)
    net = TinyNet()
    x = torch.randn(3, 8)
    before = net(x)
    names = apply_lora(net, LoRAConfig(r=2, alpha=4, targets=("qkv", "proj")))
    assert names == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.attn.qkv", "blocks.1.attn.proj"]
    assert torch.equal(net(x), before)  # B = 0
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    t, total = count_parameters(net)
    assert t == 2 * (2 * 8 + 24 * 2) + 2 * (2 * 8 + 8 * 2)
    assert total == t + sum(p.numel() for p in TinyNet().parameters())
    # Names of the base weights are unchanged: a base checkpoint still loads.
    assert "blocks.0.attn.qkv.weight" in net.state_dict()


def test_matches_peft_with_same_weights():
    peft = pytest.importorskip("peft")
    torch.manual_seed(1)
    base = TinyNet()
    ref = TinyNet()
    ref.load_state_dict(base.state_dict())
    apply_lora(base, LoRAConfig(r=4, alpha=8, targets=("qkv", "proj", "head")))
    _randomise_b(base)
    pcfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["qkv", "proj", "out_head"])
    pm = peft.get_peft_model(ref, pcfg)
    with torch.no_grad():
        for name, layer in base.named_modules():
            if isinstance(layer, LoRALinear):
                target = pm.base_model.model.get_submodule(name)
                target.lora_A["default"].weight.copy_(layer.lora_A)
                target.lora_B["default"].weight.copy_(layer.lora_B)
    x = torch.randn(4, 8)
    torch.testing.assert_close(base(x), pm(x), rtol=0, atol=1e-6)
    ours = sum(p.numel() for p in base.parameters() if p.requires_grad)
    theirs = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    assert ours == theirs


def test_merge_equals_unmerged():
    torch.manual_seed(2)
    net = TinyNet()
    apply_lora(net, LoRAConfig(r=2, alpha=16, targets=("qkv", "proj", "head")))
    _randomise_b(net, seed=3)
    x = torch.randn(5, 8)
    y = net(x)
    merge_lora(net)
    assert not any(isinstance(m, LoRALinear) for m in net.modules())
    assert all(".lora_" not in k for k in net.state_dict())
    torch.testing.assert_close(net(x), y, rtol=0, atol=1e-5)


def test_merge_tied_weight_refused_or_untied():
    torch.manual_seed(5)
    net = TinyNet()
    net.out_head = nn.Linear(8, 24, bias=False)
    net.out_head.weight = net.blocks[0]["attn"]["qkv"].weight
    apply_lora(net, LoRAConfig(r=2, targets=("head",)))
    _randomise_b(net)
    with pytest.raises(ScratchLLMError, match="shared"):
        merge_lora(net)
    x = torch.randn(3, 8)
    y = net(x)
    qkv_before = net.blocks[0]["attn"]["qkv"].weight.detach().clone()
    assert merge_lora(net, untie=True) == ["out_head"]
    assert torch.equal(net.blocks[0]["attn"]["qkv"].weight, qkv_before)  # the other user is untouched
    torch.testing.assert_close(net(x), y, rtol=0, atol=1e-5)


def test_unknown_target_is_a_clear_error():
    with pytest.raises(ScratchLLMError, match="matches no linear layer"):
        apply_lora(TinyNet(), LoRAConfig(targets=("query",)))
    with pytest.raises(ScratchLLMError, match="rank"):
        LoRAConfig(r=0)


def test_adapter_roundtrip_and_mismatched_base(tmp_path):
    torch.manual_seed(4)
    base = TinyNet()
    fp = base_fingerprint(base)
    trained = TinyNet()
    trained.load_state_dict(base.state_dict())
    cfg = LoRAConfig(r=2, alpha=2, targets=("qkv",))
    apply_lora(trained, cfg)
    _randomise_b(trained, seed=5)
    save_adapter(trained, tmp_path / "ad", AdapterInfo(lora=cfg, base_fingerprint=fp, base_model="base-run"))
    size = (tmp_path / "ad" / "adapter.safetensors").stat().st_size
    assert size < 4096  # only the adapter, not the base weights

    fresh = TinyNet()
    fresh.load_state_dict(base.state_dict())
    load_adapter(fresh, tmp_path / "ad")
    x = torch.randn(2, 8)
    torch.testing.assert_close(fresh(x), trained(x), rtol=0, atol=0)

    other = TinyNet()  # same shapes, different weights
    with pytest.raises(ScratchLLMError, match="different base model"):
        load_adapter(other, tmp_path / "ad")


def test_damaged_or_missing_adapter_is_a_clear_error(tmp_path):
    net = TinyNet()
    cfg = LoRAConfig(r=2, targets=("qkv",))
    trained = TinyNet()
    trained.load_state_dict(net.state_dict())
    apply_lora(trained, cfg)
    save_adapter(trained, tmp_path / "ad", AdapterInfo(lora=cfg, base_fingerprint=base_fingerprint(net)))
    weights = tmp_path / "ad" / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ScratchLLMError, match="not a valid safetensors file"):
        load_adapter(net, tmp_path / "ad")
    with pytest.raises(ScratchLLMError, match="no LoRA adapter"):
        load_adapter(net, tmp_path)
