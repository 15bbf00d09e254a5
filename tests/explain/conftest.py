"""Fixtures for the explain tests: tiny run directories of every family, made in the test session.

The runs are untrained (saved right after initialisation): every topic's numbers must hold for any
weights, and loading them goes through the real loader (:func:`scratchllm.load.load_model`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scratchllm.explain.context import corpus_char_tokenizer


def _save(path: Path, model, arch: str, config, tokenizer) -> Path:
    from scratchllm.runs import save_run_files

    return save_run_files(path, model, arch=arch, model_config=config, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    """``{"gpt", "gpt-rope", "moe", "lora", "bert", "seq2seq"}`` → run directories."""
    from scratchllm.data.seq2seq import date_task_alphabet
    from scratchllm.model.bert import BertConfig, BertModel
    from scratchllm.model.config import GPTConfig
    from scratchllm.model.finetuned import GPTLoRAConfig, GPTLoRAModel
    from scratchllm.model.gpt import GPTModel
    from scratchllm.model.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
    from scratchllm.tokenizer import CharTokenizer
    from scratchllm.tokenizer.specials import (
        BERT_SPECIAL_TOKENS,
        SEQ2SEQ_SPECIAL_TOKENS,
        Seq2SeqSpecialIds,
        with_special_tokens,
    )

    root = tmp_path_factory.mktemp("explain-runs")
    tok = corpus_char_tokenizer()
    V = tok.vocab_size
    out = {}
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=V, context_length=32, n_layer=2, n_head=2, n_embd=32)
    out["gpt"] = _save(root / "gpt", GPTModel(cfg), "gpt", cfg, tok)
    cfg = GPTConfig(
        vocab_size=V,
        context_length=32,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=32,
        pos_emb="rope",
        norm="rmsnorm",
        activation="swiglu",
        bias=False,
        tie_weights=False,
    )
    out["gpt-rope"] = _save(root / "gpt-rope", GPTModel(cfg), "gpt", cfg, tok)
    cfg = GPTConfig(vocab_size=V, context_length=32, n_layer=1, n_head=2, n_embd=32, n_experts=4, moe_top_k=2)
    out["moe"] = _save(root / "moe", GPTModel(cfg), "gpt", cfg, tok)
    cfg = GPTLoRAConfig(vocab_size=V, context_length=32, n_layer=1, n_head=2, n_embd=32, lora_r=2)
    lora_model = GPTLoRAModel(cfg)
    with torch.no_grad():
        for name, p in lora_model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05)  # as if trained
    out["lora"] = _save(root / "lora", lora_model, "gpt-lora", cfg, tok)
    btok = with_special_tokens(tok, BERT_SPECIAL_TOKENS)
    cfg = BertConfig(vocab_size=btok.vocab_size, context_length=128, n_layer=1, n_head=2, n_embd=32)
    out["bert"] = _save(root / "bert", BertModel(cfg), "bert", cfg, btok)
    stok = with_special_tokens(
        CharTokenizer.train(date_task_alphabet(), special_tokens=()), SEQ2SEQ_SPECIAL_TOKENS
    )
    sp = Seq2SeqSpecialIds(stok)
    cfg = Seq2SeqConfig(
        context_length=40,
        n_layer=1,
        n_head=2,
        n_embd=32,
        src_vocab_size=stok.vocab_size,
        tgt_vocab_size=stok.vocab_size,
        pad_id=sp.pad,
        bos_id=sp.bos,
        eos_id=sp.eos,
        src_pad_id=sp.pad,
    )
    out["seq2seq"] = _save(root / "seq2seq", Seq2SeqTransformer(cfg), "seq2seq", cfg, stok)
    return out


@pytest.fixture(scope="session")
def explain(tmp_path_factory):
    """``explain(topic, **kwargs)`` → the topic's Explanation, run once per session with its pictures
    written to a session directory (``explain.out / topic``)."""
    from scratchllm.explain import run_topic

    root = tmp_path_factory.mktemp("explain-out")
    cache: dict = {}

    def run(name: str, **kwargs):
        key = (name, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
        if key not in cache:
            out = root / f"{name}-{len(cache)}"
            cache[key] = run_topic(name, out_dir=out, **kwargs)
            cache[key].out_dir = out
        return cache[key]

    return run
