"""`scratchllm inspect` and `scratchllm generate` end to end, on a tiny run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from scratchllm.cli.main import main
from scratchllm.generate import TextStreamer
from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel
from scratchllm.runs import save_run_files
from scratchllm.tokenizer.char import CharTokenizer

TEXT = "hello world, the quick brown fox jumps over the lazy dog.\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tok = CharTokenizer.train(TEXT)
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=tok.vocab_size, context_length=32, n_layer=2, n_head=2, n_embd=32, init_std=0.3
    )
    path = tmp_path_factory.mktemp("run") / "tiny"
    save_run_files(path, GPTModel(cfg), arch="gpt", model_config=cfg, tokenizer=tok)
    return path


def test_inspect_preset_json(capsys):
    assert main(["inspect", "--preset", "gpt2-medium", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 354_823_168
    assert info["params_if_untied"] == 354_823_168 + 50257 * 1024
    assert info["tied"] == [["tok_emb.weight", "out_head.weight"]]
    assert info["memory_bytes"]["bf16"] == 2 * 354_823_168
    assert info["flops_per_token"]["train"] == pytest.approx(3 * info["flops_per_token"]["forward"])
    qkv = next(r for r in info["layers"] if r["name"] == "blocks.*.attn.qkv.weight")
    assert qkv["count"] == 24 and qkv["shape"] == [3072, 1024]


def test_inspect_set_overrides_and_text_output(capsys):
    assert main(["inspect", "--preset", "tiny", "--set", "tie_weights=false", "--set", "lr=1e-3"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "FLOPs per token" in out and "out_head.weight" in out
    assert main(["inspect", "--list-presets"]) == 0
    assert "char-shakespeare" in capsys.readouterr().out
    assert main(["inspect", "--preset", "tiny", "--set", "n_head=3"]) == 2
    assert "divisible" in capsys.readouterr().err


def test_inspect_model_dir(run_dir, capsys):
    assert main(["inspect", "--model", str(run_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == GPTModel(GPTConfig(**info["config"])).num_params()
    assert "run directory" in info["source"]


def test_generate_streams_and_is_reproducible(run_dir, capsys):
    args = ["generate", "--model", str(run_dir), "--prompt", "the ", "--max-new-tokens", "12", "--seed", "3"]
    assert main(args + ["--device", "cpu"]) == 0
    first = capsys.readouterr()
    assert first.out.startswith("the ") and "tokens/s" in first.err
    assert main(args) == 0
    assert capsys.readouterr().out == first.out
    assert main(args + ["--json", "--temperature", "0", "--top-p", "0.9"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["new_tokens"] == 12 and res["stop_reason"] == "max_new_tokens" and len(res["text"]) == 12


def test_generate_json_reports_the_openmp_wait_policy(run_dir):
    """A fresh process: the CLI decides the policy before torch loads, and says which it ran with."""
    env = {**os.environ, "OMP_WAIT_POLICY": "ACTIVE"}
    cmd = [sys.executable, "-m", "scratchllm", "generate", "--model", str(run_dir), "--prompt", "a"]
    cmd += ["--max-new-tokens", "2", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    assert json.loads(proc.stdout)["omp_wait_policy"] == "active"


def test_generate_stop_string_and_int8(run_dir, capsys):
    base = ["generate", "--model", str(run_dir), "--prompt", "hello", "--temperature", "0", "--json"]
    assert main(base + ["--max-new-tokens", "20"]) == 0
    text = json.loads(capsys.readouterr().out)["text"]
    stop = text[5:7]
    assert main(base + ["--max-new-tokens", "20", "--stop", stop]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["stop_reason"] == "stop" and res["text"] == text[: text.index(stop)]
    assert res["fp32_decoder"] in ("cpp", "blas") and res["int8_kernel"] is None
    assert main(base + ["--max-new-tokens", "5", "--int8"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["int8"] is True and res["int8_kernel"] in ("cpp", "cpp-q8", "int8pack", "fp32")
    # with a C++ kernel both blocks of this small GPT decode a token in one C++ call each
    assert res["int8_fused_blocks"] == (2 if res["int8_kernel"] in ("cpp", "cpp-q8") else 0)
    # the fp32-math kernels compute the rounded weights' product: forcing one gives the same text
    assert main(base + ["--max-new-tokens", "5", "--int8", "--int8-kernel", "fp32"]) == 0
    forced = json.loads(capsys.readouterr().out)
    assert forced["int8_kernel"] == "fp32"
    if res["int8_kernel"] not in ("int8pack", "cpp-q8"):  # (they round activations as well)
        assert forced["text"] == res["text"]
    assert main(base + ["--max-new-tokens", "5", "--int8-kernel", "fp32"]) == 2
    assert "--int8-kernel needs --int8" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--prompt", "HELLO"], "not in this char tokenizer"),
        (["--prompt", "hi", "--max-new-tokens", "0"], "max_new_tokens"),
        (["--prompt", "hi", "--temperature", "-1"], "temperature"),
        (["--prompt", "hi", "--top-p", "0"], "top_p"),
        (["--prompt", "hi", "--top-k", "0"], "top_k"),
        (["--prompt", "hi", "--device", "tpu"], "device"),
    ],
)
def test_generate_user_errors(run_dir, capsys, extra, match):
    assert main(["generate", "--model", str(run_dir), *extra]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_generate_missing_model(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "not found" in capsys.readouterr().err


def test_text_streamer_multibyte_and_holdback(gpt2_files):
    from scratchllm.tokenizer import load_tokenizer

    tok = load_tokenizer(gpt2_files)
    text = "naïve café 日本語 🙂 done"
    ids = tok.encode(text)
    assert len(ids) > len(text.split())  # some characters span several tokens
    streamer = TextStreamer(tok, tok.encode("Q:"))
    pieces = [streamer.push(i) for i in ids]
    assert "".join(pieces) + streamer.finish() == text
    assert all("\ufffd" not in p for p in pieces)
    # stop string spanning tokens: nothing of it is ever released
    streamer = TextStreamer(tok, [], stop=["日本"])
    shown = "".join(streamer.push(i) for i in ids) + streamer.finish()
    assert shown == "naïve café " and streamer.stopped
