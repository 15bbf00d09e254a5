"""Fixtures for the server tests: small models made here, and real servers on loopback.

* ``char_run``: a character-level GPT trained for a few hundred steps on a short dialogue text
  (in the plain chat template's layout), so that greedy output is real, non-trivial text;
* ``instruct_run`` / ``lora_run``: the same weights recorded as an instruction-tuned run (with its
  template in config.json) and as a LoRA run;
* ``bpe_run``: a byte-level BPE tokenizer trained here on text with emoji and CJK, and a GPT that
  memorised that text — its greedy output spells characters over several tokens;
* ``main_server``: ``scratchllm serve`` in a subprocess (with an API key) on the char model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from serve_helpers import (
    API_KEY,
    EMOJI_TEXT,
    Server,
    ascii_tokenizer,
    dialogue_text,
    start_process,
    stop_process,
    train_tiny,
    wait_healthy,
)

from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel
from scratchllm.runs import save_run_files
from scratchllm.tokenizer import CharTokenizer


@pytest.fixture(scope="session")
def char_model_parts() -> tuple[GPTModel, CharTokenizer, GPTConfig]:
    tok = ascii_tokenizer()
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, context_length=128, n_layer=2, n_head=4, n_embd=32)
    model = train_tiny(GPTModel(cfg), tok.encode(dialogue_text()), 400, seq=48)
    return model, tok, cfg


@pytest.fixture(scope="session")
def char_run(tmp_path_factory, char_model_parts) -> Path:
    model, tok, cfg = char_model_parts
    out = tmp_path_factory.mktemp("serve") / "chatty"
    save_run_files(out, model, arch="gpt", model_config=cfg, tokenizer=tok)
    return out


@pytest.fixture(scope="session")
def instruct_run(tmp_path_factory, char_model_parts) -> Path:
    """The same weights, recorded as an instruction-tuned run with its own template."""
    model, tok, cfg = char_model_parts
    out = tmp_path_factory.mktemp("serve") / "instruct"
    template = {
        "name": "qa",
        "prompt": "Q: {instruction}\n{input}\nA: ",
        "prompt_no_input": "Q: {instruction}\nA: ",
    }
    save_run_files(
        out,
        model,
        arch="gpt",
        model_config=cfg,
        tokenizer=tok,
        extra={"finetune": {"task": "instruct", "template": template}},
    )
    return out


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, char_model_parts) -> Path:
    """A LoRA run on the same base (B = 0 after init: it must generate what the base generates)."""
    from scratchllm.model.finetuned import GPTLoRAConfig, GPTLoRAModel

    model, tok, cfg = char_model_parts
    lcfg = GPTLoRAConfig(**{**cfg.__dict__, "lora_r": 2, "lora_targets": ("qkv", "proj", "fc", "head")})
    lora = GPTLoRAModel(lcfg)
    missing, unexpected = lora.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all("lora_" in k for k in missing)
    out = tmp_path_factory.mktemp("serve") / "lora"
    save_run_files(out, lora, arch="gpt-lora", model_config=lcfg, tokenizer=tok)
    return out


@pytest.fixture(scope="session")
def bpe_run(tmp_path_factory) -> Path:
    from scratchllm.tokenizer.bpe import train_bpe

    tok = train_bpe(EMOJI_TEXT, 266)
    assert len(tok.encode("🍕")) > 1 and len(tok.encode("日")) > 1  # characters span several tokens
    torch.manual_seed(1)
    cfg = GPTConfig(vocab_size=tok.vocab_size, context_length=96, n_layer=2, n_head=2, n_embd=48)
    model = train_tiny(GPTModel(cfg), tok.encode(EMOJI_TEXT), 250, seq=48)
    out = tmp_path_factory.mktemp("serve") / "emoji"
    save_run_files(out, model, arch="gpt", model_config=cfg, tokenizer=tok)
    return out


@pytest.fixture(scope="session")
def main_server(char_run) -> Server:
    proc, url, lines = start_process(char_run, "--api-key", API_KEY, "--max-batch", "16")
    wait_healthy(url, proc)
    server = Server(url, lambda: stop_process(proc), lambda: "".join(lines))
    yield server
    server.stop()
    assert proc.returncode == 0, "".join(lines)[-3000:]


@pytest.fixture
def client(main_server):
    import openai

    return openai.OpenAI(base_url=main_server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
