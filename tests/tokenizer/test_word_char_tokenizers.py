"""The two educational tokenizers: char and the book's word tokenizer; save/load for every kind."""

from __future__ import annotations

import pytest

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import CharTokenizer, Tokenizer, load_tokenizer, tokenizer_classes
from scratchllm.tokenizer.base import split_on_specials
from scratchllm.tokenizer.word import UNK, WordTokenizer, split_words


def test_word_tokenizer_reproduces_the_books_vocabulary(verdict):
    tok = WordTokenizer.train(verdict)
    assert tok.vocab_size == 1132  # 1,130 distinct words + <|endoftext|> + <|unk|>, as in chapter 2
    assert tok.special_tokens == {"<|endoftext|>": 1130, UNK: 1131}
    text = '"It\'s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'
    assert (
        tok.decode(tok.encode(text))
        == '" It\' s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'
    )


def test_word_tokenizer_unknown_words_and_specials(verdict):
    tok = WordTokenizer.train(verdict)
    # the book's example: "Hello" and "palace" never occur in the story
    ids = tok.encode("Hello, do you like tea?<|endoftext|>In the sunlit terraces of the palace.")
    assert ids.count(tok.special_tokens[UNK]) == 2
    assert tok.eot_id in ids
    assert tok.decode(ids) == "<|unk|>, do you like tea? <|endoftext|> In the sunlit terraces of the <|unk|>."


def test_word_tokenizer_is_lossy_by_design():
    tok = WordTokenizer.train("a  b\n\tc")
    assert tok.decode(tok.encode("a  b\n\tc")) == "a b c"  # whitespace is normalised


def test_word_vocab_size_keeps_the_most_frequent_words():
    tok = WordTokenizer.train("the the the cat cat dog", vocab_size=4)
    assert tok.words == ["cat", "the"]
    assert tok.encode("dog") == [tok.special_tokens[UNK]]
    with pytest.raises(ScratchLLMError, match="no room"):
        WordTokenizer.train("a b", vocab_size=2)


def test_split_words_matches_the_books_regex():
    assert split_words("Hello, world. Is this-- a test?") == [
        "Hello",
        ",",
        "world",
        ".",
        "Is",
        "this",
        "--",
        "a",
        "test",
        "?",
    ]


def test_split_on_specials_prefers_the_longest():
    parts = split_on_specials("a<|x|>b<|x|>yz", ["<|x|>", "<|x|>y"])
    assert parts == [("a", False), ("<|x|>", True), ("b", False), ("<|x|>y", True), ("z", False)]


def test_char_tokenizer_round_trip_and_unknown_character(shakespeare):
    tok = CharTokenizer.train(shakespeare)
    assert tok.vocab_size == 66  # 65 characters + <|endoftext|>
    text = shakespeare[:1000] + "<|endoftext|>"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("<|endoftext|>") == [tok.eot_id]
    with pytest.raises(ScratchLLMError, match=r"U\+00E9"):
        tok.encode("café")


def test_out_of_range_ids_are_a_clear_error(verdict):
    for tok in (CharTokenizer.train(verdict), WordTokenizer.train(verdict)):
        with pytest.raises(ScratchLLMError, match="outside"):
            tok.decode([0, tok.vocab_size])
        with pytest.raises(ScratchLLMError, match="outside"):
            tok.decode([-1])


def test_save_load_round_trip_for_every_kind(tmp_path, verdict, small_bpe):
    toks = {"char": CharTokenizer.train(verdict), "word": WordTokenizer.train(verdict), "bpe": small_bpe}
    assert set(toks) == set(tokenizer_classes())
    text = verdict[:2000] + "<|endoftext|>"
    for kind, tok in toks.items():
        path = tmp_path / f"{kind}.json"
        tok.save(path)
        again = Tokenizer.load(path)
        assert again.kind == kind
        assert again.vocab_size == tok.vocab_size
        assert again.special_tokens == tok.special_tokens
        assert again.encode(text) == tok.encode(text)
        assert again.decode(again.encode(text)) == tok.decode(tok.encode(text))
        # a run directory holding tokenizer.json loads too
        run = tmp_path / f"run-{kind}"
        run.mkdir()
        tok.save(run / "tokenizer.json")
        assert load_tokenizer(run).encode(text) == tok.encode(text)
    with pytest.raises(ScratchLLMError, match="holds a word tokenizer"):
        CharTokenizer.load(tmp_path / "word.json")


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(ScratchLLMError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ScratchLLMError, match="not a tokenizer JSON"):
        load_tokenizer(bad)
    bad.write_text('{"kind": "sentencepiece"}')
    with pytest.raises(ScratchLLMError, match="not a scratchllm tokenizer"):
        load_tokenizer(bad)
