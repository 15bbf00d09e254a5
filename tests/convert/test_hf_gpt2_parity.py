"""Exactness against ``transformers`` itself: same logits both ways, same greedy generations.

Tiny models here; the real 124M shape is in test_hf_gpt2_parity_124m.py.
"""

from __future__ import annotations

import pytest
import torch
from hf_gpt2_helpers import (
    TOL,
    assert_same_greedy_generation,
    hf_gpt2_config,
    max_logit_diff,
    random_ids,
    randomize_,
)

from scratchllm.convert import hf_gpt2
from scratchllm.convert.hf_gpt2 import export_hf_gpt2, load_hf_gpt2
from scratchllm.errors import ScratchLLMError
from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel
from scratchllm.tokenizer.gpt2 import load_gpt2_dir


# ------------------------------------------------------------------------------------ import (tiny)
def test_import_tiny_matches_transformers(tiny_hf):
    hf_dir, hf_model = tiny_hf
    loaded = load_hf_gpt2(hf_dir)
    assert loaded.arch == "gpt" and "Hugging Face GPT-2 directory" in loaded.source
    assert loaded.config["architecture"] == "gpt" and loaded.config["model"]["n_embd"] == 32
    assert not loaded.model.training
    assert max_logit_diff(loaded.model, hf_model, random_ids(50257)) < TOL
    assert_same_greedy_generation(loaded.model, hf_model)


def test_import_pytorch_model_bin_openai_layout(tiny_hf, tmp_path, hf_tok_dir):
    """A ``pytorch_model.bin`` as OpenAI uploaded it: no ``transformer.`` prefix, mask buffers."""
    hf_dir, hf_model = tiny_hf
    sd = {k.removeprefix("transformer."): v.clone() for k, v in hf_model.state_dict().items()}
    sd.pop("lm_head.weight", None)
    for i in range(hf_model.config.n_layer):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_bytes((hf_dir / "config.json").read_bytes())
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((hf_tok_dir / name).read_bytes())
    loaded = load_hf_gpt2(tmp_path)
    assert max_logit_diff(loaded.model, hf_model, random_ids(50257, seed=1)) < TOL


def test_pickled_code_in_pytorch_model_bin_is_refused(tiny_hf, tmp_path, hf_tok_dir):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"wte.weight": Evil()}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_bytes((tiny_hf[0] / "config.json").read_bytes())
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((hf_tok_dir / name).read_bytes())
    with pytest.raises(ScratchLLMError, match="could not read .*pytorch_model.bin safely"):
        load_hf_gpt2(tmp_path)


def test_truncated_safetensors_is_a_clear_error(tiny_hf, tmp_path):
    import shutil

    hf_dir, _ = tiny_hf
    shutil.copytree(hf_dir, tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ScratchLLMError, match="model.safetensors is not a valid safetensors file"):
        load_hf_gpt2(tmp_path / "hf")


def test_import_sharded_safetensors(tiny_hf, tmp_path):
    from transformers import GPT2LMHeadModel

    hf_dir, hf_model = tiny_hf
    hf_model.save_pretrained(tmp_path, max_shard_size="1MB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((hf_dir / name).read_bytes())
    assert isinstance(hf_model, GPT2LMHeadModel)
    assert max_logit_diff(load_hf_gpt2(tmp_path).model, hf_model, random_ids(50257, seed=2)) < TOL


def test_forgetting_the_square_c_proj_transpose_is_caught(tiny_hf, monkeypatch):
    """The pitfall: attn.c_proj is [C, C], so loading it untransposed raises nothing — only logits
    reveal it. This proves the logits test above would fail on that bug."""
    hf_dir, hf_model = tiny_hf
    buggy = [
        (ours, hf, False if hf == "h.{i}.attn.c_proj.weight" else t, switch)
        for ours, hf, t, switch in hf_gpt2.BLOCK_PARAMS
    ]
    monkeypatch.setattr(hf_gpt2, "BLOCK_PARAMS", buggy)
    loaded = load_hf_gpt2(hf_dir)  # loads without complaint ...
    assert max_logit_diff(loaded.model, hf_model, random_ids(50257)) > 100 * TOL  # ... and is wrong


def test_untied_head_imports(tmp_path, hf_tok_dir):
    from transformers import GPT2LMHeadModel

    hf_model = randomize_(GPT2LMHeadModel(hf_gpt2_config(tie_word_embeddings=False)), seed=3).eval()
    assert not torch.equal(hf_model.lm_head.weight, hf_model.transformer.wte.weight)
    hf_model.save_pretrained(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((hf_tok_dir / name).read_bytes())
    loaded = load_hf_gpt2(tmp_path)
    assert loaded.model.config.tie_weights is False
    assert max_logit_diff(loaded.model, hf_model, random_ids(50257)) < TOL


# ------------------------------------------------------------------------------------ export (tiny)
def tiny_ours(seed: int = 0, **overrides) -> GPTModel:
    cfg = GPTConfig(**{"vocab_size": 50257, "context_length": 64, "n_layer": 2, "n_head": 2, "n_embd": 32,
                       **overrides})  # fmt: skip
    torch.manual_seed(seed)
    return randomize_(GPTModel(cfg), seed=seed).eval()


@pytest.mark.parametrize("overrides", [{}, {"tie_weights": False, "ffn_hidden": 48, "qkv_bias": False}])
def test_export_tiny_loads_in_transformers_with_same_logits(tmp_path, hf_tok_dir, overrides):
    from transformers import GPT2LMHeadModel

    ours = tiny_ours(**overrides)
    files = export_hf_gpt2(ours, load_gpt2_dir(hf_tok_dir), tmp_path / "hf")
    names = {p.name for p in files}
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "generation_config.json"} <= names
    hf_model = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert max_logit_diff(ours, hf_model, random_ids(50257, seed=4)) < TOL
    assert_same_greedy_generation(ours, hf_model)


def test_export_refuses_to_overwrite_without_force(tmp_path, hf_tok_dir):
    tok = load_gpt2_dir(hf_tok_dir)
    export_hf_gpt2(tiny_ours(), tok, tmp_path)
    with pytest.raises(ScratchLLMError, match="--force"):
        export_hf_gpt2(tiny_ours(seed=1), tok, tmp_path)
    export_hf_gpt2(tiny_ours(seed=1), tok, tmp_path, force=True)


def test_export_rope_model_is_refused_before_writing(tmp_path, hf_tok_dir):
    model = tiny_ours(pos_emb="rope")
    with pytest.raises(ScratchLLMError, match="pos_emb='rope'"):
        export_hf_gpt2(model, load_gpt2_dir(hf_tok_dir), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_export_needs_a_gpt2_style_tokenizer(tmp_path):
    from scratchllm.tokenizer.char import CharTokenizer

    tok = CharTokenizer("abc")
    with pytest.raises(ScratchLLMError, match="byte-level BPE"):
        export_hf_gpt2(tiny_ours(), tok, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
