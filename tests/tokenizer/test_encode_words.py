"""``encode_words``: ids grouped by word (for whole-word masking) and the space-before-a-word rule."""

from __future__ import annotations

import pytest

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import CharTokenizer
from scratchllm.tokenizer.bpe import train_bpe
from scratchllm.tokenizer.specials import BERT_SPECIAL_TOKENS, extends, with_special_tokens
from scratchllm.tokenizer.word import WordTokenizer

TEXT = (
    "I had always thought Jack Gisburn rather a cheap genius--though a good fellow enough--so it "
    "was no great surprise to me to hear that, in the height of his glory, he had dropped his "
    "painting.\n\nDon't you think so?  Yes;\tI do! 1998 was 3x better, lazy zebra. "
)
SAMPLES = [TEXT, "", " ", "  leading", "trailing  ", "a [MASK] b<|endoftext|>c", "\n\nx\ty  z [MASK][MASK]"]


def tokenizers():
    return [
        with_special_tokens(CharTokenizer.train(TEXT), BERT_SPECIAL_TOKENS),
        with_special_tokens(WordTokenizer.train(TEXT), BERT_SPECIAL_TOKENS),
        with_special_tokens(train_bpe(TEXT * 3, 300), BERT_SPECIAL_TOKENS),
        with_special_tokens(train_bpe(TEXT * 3, 300, pattern="gpt4"), BERT_SPECIAL_TOKENS),
    ]


@pytest.mark.parametrize("tok", tokenizers(), ids=lambda t: t.kind)
def test_words_concatenate_to_encode(tok) -> None:
    for allowed in ("all", ()):
        for text in SAMPLES:
            try:
                expected = tok.encode(text, allowed_special=allowed)
            except ScratchLLMError:  # a char tokenizer that cannot spell "[MASK]" as characters
                continue
            words = tok.encode_words(text, allowed_special=allowed)
            assert [i for w in words for i in w] == expected, repr(text)
            assert all(words), "no empty words"
    mask = tok.special_tokens["[MASK]"]
    assert [mask] in tok.encode_words("a [MASK] b", allowed_special={"[MASK]"}), (
        "an allowed special is a word"
    )
    if tok.kind != "char":
        assert [mask] not in tok.encode_words("a [MASK] b"), "by default [MASK] is ordinary text"


def test_word_boundaries_per_kind() -> None:
    char, word, bpe, _ = tokenizers()
    assert [char.decode(w) for w in char.encode_words("to be,  or")] == ["to", " be,", "  or"]
    assert [word.decode(w) for w in word.encode_words("it was, so")] == ["it", "was", ",", "so"]
    # Byte-level BPE: one word per pre-token, each carrying the space before it.
    assert [bpe.decode(w) for w in bpe.encode_words("he had dropped his painting.")] == [
        "he",
        " had",
        " dropped",
        " his",
        " painting",
        ".",
    ]
    assert any(len(w) > 1 for w in bpe.encode_words("Gisburn's unbelievably")), "rare words span tokens"


def test_gpt2_vocabulary_words(gpt2_files) -> None:
    from scratchllm.tokenizer import load_tokenizer

    tok = load_tokenizer(gpt2_files)
    text = "Hello world, it's 2024!  Unbelievably"
    assert [i for w in tok.encode_words(text) for i in w] == tok.encode(text)
    assert tok.space_joins_next_word


def test_space_joins_next_word() -> None:
    char, word, bpe, bpe4 = tokenizers()
    assert bpe.space_joins_next_word and bpe4.space_joins_next_word
    assert not char.space_joins_next_word and not word.space_joins_next_word
    custom = train_bpe(TEXT, 280, pattern=r"\s+|\S+")
    assert not custom.space_joins_next_word


def test_extends_recognises_a_tokenizer_plus_specials() -> None:
    base = train_bpe(TEXT, 300)
    bert = with_special_tokens(base, BERT_SPECIAL_TOKENS)
    assert extends(bert, base) and extends(base, base) and extends(bert, bert)
    assert not extends(base, bert)
    assert not extends(bert, train_bpe(TEXT, 290))
    assert not extends(bert, with_special_tokens(CharTokenizer.train(TEXT), BERT_SPECIAL_TOKENS))
