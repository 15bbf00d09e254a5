"""GPT-2's tokenizer from local files: parity with tiktoken and Hugging Face, export and re-import."""

from __future__ import annotations

import json
import shutil

import pytest
import tiktoken

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import load_tokenizer
from scratchllm.tokenizer.bpe import BPETokenizer
from scratchllm.tokenizer.gpt2 import (
    bytes_to_unicode,
    load_gpt2_dir,
    load_hf_tokenizer_json,
    recover_merges,
    save_hf_vocab_merges,
)


@pytest.fixture(scope="module")
def reference_encoding(gpt2_files) -> tiktoken.Encoding:
    """tiktoken's own GPT-2 encoding, built from the local files with tiktoken's own loader."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = data_gym_to_mergeable_bpe_ranks(str(gpt2_files / "vocab.bpe"), str(gpt2_files / "encoder.json"))
    return tiktoken.Encoding(
        "gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )


def test_gpt2_ids_match_tiktoken(gpt2_tok, reference_encoding, verdict, shakespeare):
    assert gpt2_tok.vocab_size == 50257
    assert gpt2_tok.eot_id == 50256
    ids = gpt2_tok.encode(verdict)
    assert len(ids) == 5145  # the book's figure
    assert ids == reference_encoding.encode(verdict)
    assert gpt2_tok.encode(shakespeare) == reference_encoding.encode(shakespeare)
    # A special token's text is ordinary text unless allowed (tiktoken's encode_ordinary / allowed_special).
    literal = "Hello world<|endoftext|>"
    assert gpt2_tok.encode(literal) == reference_encoding.encode_ordinary(literal)
    assert gpt2_tok.encode(literal) == [15496, 995, 27, 91, 437, 1659, 5239, 91, 29]
    assert gpt2_tok.encode_reference(literal) == gpt2_tok.encode(literal)
    assert gpt2_tok.encode(literal, allowed_special="all") == [15496, 995, 50256]
    assert gpt2_tok.encode_reference(literal, allowed_special={"<|endoftext|>"}) == [15496, 995, 50256]
    assert gpt2_tok.decode([15496, 995, 50256]) == "Hello world<|endoftext|>"


def test_reference_encoder_matches_on_gpt2(gpt2_tok, verdict):
    assert gpt2_tok.encode_reference(verdict) == gpt2_tok.encode(verdict)


def test_byte_table_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())


def test_recovered_merges_are_gpt2s_published_merges(gpt2_tok, gpt2_files):
    table = bytes_to_unicode()
    lines = (gpt2_files / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
    published = [tuple(line.split(" ")) for line in lines if line]
    recovered = [
        ("".join(table[b] for b in a), "".join(table[b] for b in b_))
        for a, b_ in recover_merges(gpt2_tok.ranks)
    ]
    assert recovered == published


def test_export_writes_gpt2s_exact_files(gpt2_tok, gpt2_files, tmp_path):
    vocab_path, merges_path = save_hf_vocab_merges(gpt2_tok, tmp_path)
    assert merges_path.read_bytes() == (gpt2_files / "vocab.bpe").read_bytes()
    assert json.loads(vocab_path.read_text()) == json.loads((gpt2_files / "encoder.json").read_text())


def test_load_tokenizer_on_gpt2_and_hf_dirs(gpt2_tok, gpt2_files, tmp_path):
    assert load_tokenizer(gpt2_files).ranks == gpt2_tok.ranks  # encoder.json + vocab.bpe
    hf = tmp_path / "hf"
    save_hf_vocab_merges(gpt2_tok, hf)  # vocab.json + merges.txt
    again = load_tokenizer(hf)
    assert isinstance(again, BPETokenizer)
    assert again.ranks == gpt2_tok.ranks and again.special_tokens == {"<|endoftext|>": 50256}


def test_trained_tokenizer_exports_to_hugging_face_with_identical_ids(small_bpe, shakespeare, tmp_path):
    """Our trained BPE → vocab.json + merges.txt → HF tokenizers and transformers give our ids."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    out = tmp_path / "export"
    vocab_path, merges_path = save_hf_vocab_merges(small_bpe, out)
    assert load_tokenizer(out).ranks == small_bpe.ranks

    hf = Tokenizer(BPE.from_file(str(vocab_path), str(merges_path)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    text = shakespeare[300_000:360_000] + " café 🤖 naïve 1234 don't"
    ours = small_bpe.encode(text)
    assert hf.encode(text).ids == ours
    assert hf.decode(ours) == text

    from transformers import GPT2TokenizerFast

    fast = GPT2TokenizerFast.from_pretrained(str(out))
    assert fast(text)["input_ids"] == ours


def test_gpt2_matches_transformers(gpt2_tok, gpt2_files, tmp_path, verdict):
    from transformers import GPT2TokenizerFast

    d = tmp_path / "gpt2"
    d.mkdir()
    shutil.copy(gpt2_files / "encoder.json", d / "vocab.json")
    shutil.copy(gpt2_files / "vocab.bpe", d / "merges.txt")
    fast = GPT2TokenizerFast.from_pretrained(str(d))
    assert fast(verdict)["input_ids"] == gpt2_tok.encode(verdict)
    assert fast.eos_token_id == gpt2_tok.eot_id == 50256
    # transformers 5 saves only tokenizer.json: we read the BPE model out of it
    saved = tmp_path / "saved"
    fast.save_pretrained(str(saved))
    from_json = load_tokenizer(saved)
    assert from_json.ranks == gpt2_tok.ranks and from_json.special_tokens == gpt2_tok.special_tokens
    assert load_hf_tokenizer_json(saved / "tokenizer.json").encode(verdict) == gpt2_tok.encode(verdict)


def test_bad_gpt2_dirs_are_clear_errors(tmp_path, gpt2_files):
    with pytest.raises(ScratchLLMError, match="no tokenizer found"):
        load_gpt2_dir(tmp_path)
    (tmp_path / "vocab.json").write_text('{"a": 0}')
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ScratchLLMError, match="256 byte tokens"):
        load_tokenizer(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(ScratchLLMError, match="expected two tokens"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text("not json")
    with pytest.raises(ScratchLLMError, match="not valid JSON"):
        load_tokenizer(tmp_path)
