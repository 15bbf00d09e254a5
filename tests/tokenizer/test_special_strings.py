"""Special-token strings in text are ordinary text unless the caller allows them (issue 13 item 8).

Text from users and corpora is just text; special ids come only from the code that inserts them.
``encode(text, allowed_special=...)`` is the explicit opt-in, as in tiktoken.
"""

from __future__ import annotations

import pytest

from scratchllm.tokenizer import CharTokenizer
from scratchllm.tokenizer.base import EOT
from scratchllm.tokenizer.bpe import train_bpe
from scratchllm.tokenizer.specials import BERT_SPECIAL_TOKENS, MASK, with_special_tokens
from scratchllm.tokenizer.word import WordTokenizer

CORPUS = "the cat sat on the mat. <|endoftext|> a dog [ran], then sat down! MASK\n" * 4
LITERAL = "the cat<|endoftext|>sat [MASK] down"


def tokenizers():
    return {
        "char": with_special_tokens(CharTokenizer.train(CORPUS), BERT_SPECIAL_TOKENS),
        "word": with_special_tokens(WordTokenizer.train(CORPUS), BERT_SPECIAL_TOKENS),
        "bpe": with_special_tokens(train_bpe(CORPUS, 300), BERT_SPECIAL_TOKENS),
        "bpe-gpt4": with_special_tokens(train_bpe(CORPUS, 300, pattern="gpt4"), BERT_SPECIAL_TOKENS),
    }


TOKS = tokenizers()


@pytest.mark.parametrize("name", list(TOKS))
def test_a_literal_special_string_is_ordinary_text_by_default(name) -> None:
    tok = TOKS[name]
    specials = set(tok.special_tokens.values()) - {tok.special_tokens.get("<|unk|>")}
    ids = tok.encode(LITERAL)
    assert not specials & set(ids), f"{name}: a special id came from text"
    assert tok.encode_words(LITERAL) and not specials & {i for w in tok.encode_words(LITERAL) for i in w}
    if tok.kind != "word":  # (the word tokenizer is lossy by design)
        assert tok.decode(ids) == LITERAL
    if tok.kind == "bpe":
        assert tok.encode_reference(LITERAL) == ids == tok.encode_ordinary(LITERAL)
        assert tok.encode_batch([LITERAL] * 3, num_threads=2) == [ids] * 3


@pytest.mark.parametrize("name", list(TOKS))
def test_allowed_specials_become_their_ids(name) -> None:
    tok = TOKS[name]
    eot, mask = tok.special_tokens[EOT], tok.special_tokens[MASK]
    everything = tok.encode(LITERAL, allowed_special="all")
    assert everything.count(eot) == 1 and everything.count(mask) == 1
    only_mask = tok.encode(LITERAL, allowed_special={MASK})
    assert only_mask.count(mask) == 1 and eot not in only_mask
    assert tok.encode(LITERAL, allowed_special={"<|not-a-token|>"}) == tok.encode(LITERAL)
    if tok.kind == "bpe":
        assert tok.encode_reference(LITERAL, allowed_special="all") == everything
        assert tok.encode_reference(LITERAL, allowed_special={MASK}) == only_mask
        assert tok.encode_batch([LITERAL], allowed_special="all") == [everything]
        # tiktoken's own reading of the same request
        enc = tok.tiktoken_encoding
        assert everything == enc.encode(LITERAL, allowed_special="all")
        assert tok.encode(LITERAL) == enc.encode_ordinary(LITERAL)


def test_allowed_special_rejects_other_strings() -> None:
    with pytest.raises(ValueError, match="allowed_special"):
        TOKS["char"].encode("a", allowed_special="none")


@pytest.mark.parametrize("name", list(TOKS))
def test_encode_parts_inserts_trusted_specials_only(name) -> None:
    tok = TOKS[name]
    eot = tok.special_tokens[EOT]
    message = "sat <|endoftext|>[MASK] the"
    ids = tok.encode_parts([("the cat ", True), (message, False), (EOT, True)])
    assert ids.count(eot) == 1 and ids[-1] == eot, "only the trusted marker is a special id"
    assert tok.special_tokens[MASK] not in ids
    assert ids[:-1] == tok.encode_ordinary("the cat " + message), "one run of ordinary text"


def test_count_specials_counts_literal_occurrences() -> None:
    tok = TOKS["bpe"]
    assert tok.count_specials("no specials here") == {}
    assert tok.count_specials(LITERAL + EOT + EOT) == {EOT: 3, MASK: 1}
