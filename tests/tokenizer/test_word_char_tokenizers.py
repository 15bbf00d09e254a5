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
    text = "Hello, do you like tea?<|endoftext|>In the sunlit terraces of the palace."
    ids = tok.encode(text, allowed_special="all")
    assert ids.count(tok.special_tokens[UNK]) == 2
    assert tok.eot_id in ids
    assert tok.decode(ids) == "<|unk|>, do you like tea? <|endoftext|> In the sunlit terraces of the <|unk|>."
    # By default the literal is a word like any other: "<|endoftext|>In" is unknown, never the special.
    ids = tok.encode(text)
    assert tok.eot_id not in ids and ids.count(tok.special_tokens[UNK]) == 3
    assert tok.encode("<|endoftext|>") == [tok.special_tokens[UNK]]


def test_word_training_never_turns_a_literal_special_into_a_word():
    tok = WordTokenizer.train("a <|endoftext|> b <|unk|> c")
    assert tok.words == ["a", "b", "c"] and set(tok.special_tokens) == {"<|endoftext|>", UNK}
    assert tok.encode("a <|endoftext|> b") == [0, tok.special_tokens[UNK], 1]
    assert tok.encode("a <|endoftext|> b", allowed_special={"<|endoftext|>"}) == [0, tok.eot_id, 1]


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
    assert tok.decode(tok.encode(text, allowed_special="all")) == text
    assert tok.encode("<|endoftext|>", allowed_special="all") == [tok.eot_id]
    # By default the literal is 13 characters, and '<' is not one of Shakespeare's: the usual error,
    # on one line, with a hint.
    with pytest.raises(ScratchLLMError, match=r"character '<'.*'<\|endoftext\|>'.*--allow-special") as err:
        tok.encode("<|endoftext|>")
    assert "\n" not in str(err.value)


def test_char_tokenizer_reads_a_literal_special_as_its_characters():
    tok = CharTokenizer.train("ab <|endoftext|> c")  # training keeps the literal's characters
    assert set("<|endoftext|>") <= set(tok.chars)
    ids = tok.encode("a<|endoftext|>b")
    assert tok.eot_id not in ids and len(ids) == 15 and tok.decode(ids) == "a<|endoftext|>b"
    assert tok.encode("a<|endoftext|>b", allowed_special="all") == [tok.stoi["a"], tok.eot_id, tok.stoi["b"]]
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
        ids = tok.encode(text, allowed_special="all")
        assert again.encode(text, allowed_special="all") == ids
        assert again.decode(ids) == tok.decode(ids)
        # a run directory holding tokenizer.json loads too
        run = tmp_path / f"run-{kind}"
        run.mkdir()
        tok.save(run / "tokenizer.json")
        assert load_tokenizer(run).encode(text, allowed_special="all") == ids
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
