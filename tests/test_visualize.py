"""Attention-map and embedding pictures (scratchllm.visualize and `scratchllm inspect`)."""

from __future__ import annotations

import pytest
import torch

from scratchllm.cli.main import main
from scratchllm.errors import ScratchLLMError
from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel
from scratchllm.runs import save_run_files
from scratchllm.tokenizer import CharTokenizer
from scratchllm.visualize import attention_maps, plot_attention, plot_embeddings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def tiny(tmp_path):
    tok = CharTokenizer.train("the quick brown fox jumps over the lazy dog.\n")
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, context_length=32, n_layer=2, n_head=2, n_embd=16)
    model = GPTModel(cfg).eval()
    run = tmp_path / "run"
    save_run_files(run, model, arch="gpt", model_config=cfg, tokenizer=tok)
    return model, tok, run


def test_attention_maps_are_causal_probability_rows(tiny):
    model, tok, _ = tiny
    ids = tok.encode("the lazy dog")
    weights, layer = attention_maps(model, ids)
    assert layer == 1 and weights.shape == (2, len(ids), len(ids))
    assert torch.allclose(weights.sum(-1), torch.ones(2, len(ids)), atol=1e-5)  # each row is a distribution
    assert torch.all(weights.triu(diagonal=1) == 0)  # nothing attends to the future


def test_plots_are_png_files(tiny, tmp_path):
    model, tok, _ = tiny
    info = plot_attention(model, tok, "the fox", tmp_path / "a.png", layer=0)
    assert info["heads"] == 2 and info["layer"] == 0
    assert (tmp_path / "a.png").read_bytes().startswith(PNG_MAGIC)
    info = plot_embeddings(model, tok, tmp_path / "e.png")
    assert info["tokens"] == tok.vocab_size and 0 < sum(info["explained_variance"]) <= 1.0 + 1e-6
    assert (tmp_path / "e.png").read_bytes().startswith(PNG_MAGIC)


def test_bad_layer_and_empty_text_are_user_errors(tiny):
    model, tok, _ = tiny
    with pytest.raises(ScratchLLMError, match="--layer"):
        attention_maps(model, tok.encode("the"), layer=5)
    with pytest.raises(ScratchLLMError, match="empty"):
        attention_maps(model, [])


def test_inspect_cli_writes_pictures_and_refuses_to_overwrite(tiny, tmp_path, capsys):
    _, _, run = tiny
    a, e = tmp_path / "attn.png", tmp_path / "emb.png"
    args = ["inspect", "--model", str(run), "--attention-plot", str(a), "--text", "the dog"]
    assert main([*args, "--embedding-plot", str(e)]) == 0
    assert a.read_bytes().startswith(PNG_MAGIC) and e.read_bytes().startswith(PNG_MAGIC)
    before = a.read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err
    assert a.read_bytes() == before
    assert main(["inspect", "--preset", "tiny", "--embedding-plot", str(tmp_path / "x.png")]) == 2
