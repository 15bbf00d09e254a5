"""The tokenizer of a Hugging Face GPT-2 directory gives the ids ``GPT2TokenizerFast`` gives."""

from __future__ import annotations

import pytest

from scratchllm.convert.hf_gpt2 import export_hf_gpt2
from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel
from scratchllm.tokenizer.gpt2 import load_gpt2_dir

TRICKY = [
    "Hello world<|endoftext|>  And   then\n\n\tsome   tabs and 1234567 numbers, it's 'quoted' I'VE ",
    "naïve café — “smart quotes” 日本語のテキスト 🤖🚀 émoji\u00a0nbsp",
    "   leading spaces and trailing   \n",
]


@pytest.fixture(scope="module")
def hf_fast(hf_tok_dir):
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(hf_tok_dir)


@pytest.fixture(scope="module")
def ours(hf_tok_dir):
    return load_gpt2_dir(hf_tok_dir)


def test_same_ids_as_transformers_on_the_verdict(ours, hf_fast, shared_data):
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    ids = ours.encode(text)
    assert ids == hf_fast.encode(text)
    assert len(ids) == 5145  # the book's figure
    assert ours.decode(ids) == text


@pytest.mark.parametrize("text", TRICKY)
def test_same_ids_as_transformers_on_tricky_text(ours, hf_fast, text):
    # transformers reads "<|endoftext|>" in text as the special token: our opt-in reading
    assert ours.encode(text, allowed_special="all") == hf_fast.encode(text)
    # ... and ours by default is its split_special_tokens reading (the characters as text)
    assert ours.encode(text) == hf_fast.encode(text, split_special_tokens=True)


def test_exported_tokenizer_files_load_in_transformers(tmp_path, ours, hf_fast, shared_data):
    """Our export writes vocab.json/merges.txt from the tokenizer's ranks; transformers reads them
    (through AutoTokenizer, i.e. via tokenizer_config.json/config.json) to the same ids."""
    from transformers import AutoTokenizer

    tok = ours
    cfg = GPTConfig(vocab_size=50257, context_length=32, n_layer=1, n_head=1, n_embd=8)
    export_hf_gpt2(GPTModel(cfg), tok, tmp_path)
    auto = AutoTokenizer.from_pretrained(tmp_path)
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")[:3000] + "".join(TRICKY)
    assert auto.encode(text) == hf_fast.encode(text) == tok.encode(text, allowed_special="all")
    assert auto.eos_token == "<|endoftext|>" and auto.eos_token_id == 50256
    assert auto.model_max_length == 32
