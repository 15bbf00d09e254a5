"""``scratchllm convert`` both ways, and Hugging Face directories used directly via ``load_model``."""

from __future__ import annotations

import json

import pytest
import torch

from scratchllm.cli.main import main
from scratchllm.load import load_model
from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel
from scratchllm.runs import save_run_files
from scratchllm.tokenizer.gpt2 import load_gpt2_dir


def ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_from_hf_writes_a_run_dir_that_load_model_reads(tiny_hf, tmp_path, capsys):
    hf_dir, hf_model = tiny_hf
    run = tmp_path / "run"
    assert main(["convert", "--from-hf", str(hf_dir), "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "imported Hugging Face GPT-2" in out and str(run) in out
    doc = json.loads((run / "config.json").read_text())
    assert doc["architecture"] == "gpt" and doc["model"]["context_length"] == 64
    assert doc["converted_from"]["format"] == "huggingface-gpt2"
    loaded = load_model(run)
    assert "run directory" in loaded.source
    assert (loaded.model(ids()) - hf_model(ids()).logits).abs().max() < 1e-4
    assert loaded.tokenizer.encode("Hello world") == [15496, 995]

    # A populated --out is refused (one line, exit 2) unless --force.
    assert main(["convert", "--from-hf", str(hf_dir), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchllm convert: error:") and "--force" in err and err.count("\n") == 1
    assert main(["convert", "--from-hf", str(hf_dir), "--out", str(run), "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == loaded.model.num_params()


@torch.no_grad()
def test_to_hf_from_a_run_dir_loads_in_transformers(tiny_hf, tmp_path, capsys):
    from transformers import GPT2LMHeadModel

    hf_dir, _ = tiny_hf
    run, out = tmp_path / "run", tmp_path / "hf"
    assert main(["convert", "--from-hf", str(hf_dir), "--out", str(run)]) == 0
    assert main(["convert", "--to-hf", str(run), "--out", str(out)]) == 0
    assert "exported run directory" in capsys.readouterr().out
    ours = load_model(run).model
    theirs = GPT2LMHeadModel.from_pretrained(out).eval()
    assert (ours(ids(1)) - theirs(ids(1)).logits).abs().max() < 1e-4
    assert main(["convert", "--to-hf", str(run), "--out", str(out)]) == 2  # no overwrite without --force


def test_hf_dir_works_directly_as_model(tiny_hf):
    """What ``scratchllm generate --model HF_DIR`` relies on: load_model sees a Hugging Face dir."""
    hf_dir, hf_model = tiny_hf
    loaded = load_model(hf_dir)
    assert loaded.source.startswith("Hugging Face GPT-2 directory")
    assert loaded.arch == "gpt" and loaded.tokenizer.eot_id == 50256
    with torch.no_grad():
        assert (loaded.model(ids(2)) - hf_model(ids(2)).logits).abs().max() < 1e-4


@torch.no_grad()
def test_generate_cli_on_hf_dir_matches_transformers_greedy(tiny_hf, capsys):
    hf_dir, hf_model = tiny_hf
    tok = load_gpt2_dir(hf_dir)
    prompt = "Every effort moves you"
    ids_ = torch.tensor([tok.encode(prompt)])
    expected = hf_model.generate(
        ids_, attention_mask=torch.ones_like(ids_), do_sample=False, max_new_tokens=12, pad_token_id=50256
    )[0, ids_.shape[1] :].tolist()
    argv = ["generate", "--model", str(hf_dir), "--prompt", prompt, "--max-new-tokens", "12"]
    assert main([*argv, "--temperature", "0", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"].startswith("Hugging Face GPT-2 directory")
    assert result["text"] == tok.decode([t for t in expected if t != 50256]) != ""


def test_to_hf_refuses_a_rope_model(tmp_path, hf_tok_dir, capsys):
    cfg = GPTConfig(vocab_size=50257, context_length=16, n_layer=1, n_head=2, n_embd=8, pos_emb="rope")
    save_run_files(
        tmp_path / "run", GPTModel(cfg), arch="gpt", model_config=cfg, tokenizer=load_gpt2_dir(hf_tok_dir)
    )
    assert main(["convert", "--to-hf", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "pos_emb='rope'" in err and err.count("\n") == 1
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    "config, needle",
    [
        ({"model_type": "llama"}, "model_type 'llama'"),
        ({"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2}, "no weights in"),
    ],
)
def test_from_hf_errors_are_one_line(tmp_path, hf_tok_dir, capsys, config, needle):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(config))
    for name in ("vocab.json", "merges.txt"):
        (src / name).write_bytes((hf_tok_dir / name).read_bytes())
    assert main(["convert", "--from-hf", str(src), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_direction_is_required(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["convert", "--out", "x"])
    assert exc.value.code == 2
    assert "--from-hf" in capsys.readouterr().err
