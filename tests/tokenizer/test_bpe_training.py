"""Byte-level BPE training: incremental == naive, determinism, chunked counting, vocab layout."""

from __future__ import annotations

from collections import Counter

import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st
from hypothesis_profiles import examples

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import load_tokenizer
from scratchllm.tokenizer.bpe import (
    GPT2_PATTERN,
    GPT4_PATTERN,
    BPETokenizer,
    count_words,
    learn_merges,
    learn_merges_naive,
    train_bpe,
    train_bpe_naive,
)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_incremental_trainer_learns_the_same_merges_as_the_naive_one(shakespeare, verdict, pattern):
    for text, vocab_size in [(verdict, 400), (shakespeare[:20_000], 350)]:
        fast = train_bpe(text, vocab_size, pattern=pattern)
        naive = train_bpe_naive(text, vocab_size, pattern=pattern)
        assert fast.ranks == naive.ranks
        assert fast.special_tokens == naive.special_tokens == {"<|endoftext|>": vocab_size - 1}


# Words over a 3-byte alphabet: runs like "aaaa", "abab" and merges whose bytes already exist.
_small_words = st.lists(st.sampled_from(b"ab "), min_size=1, max_size=16).map(bytes)


@examples(150)
@given(
    st.dictionaries(
        st.binary(min_size=1, max_size=8) | _small_words, st.integers(1, 50), min_size=1, max_size=30
    )
)
def test_incremental_equals_naive_on_random_word_counts(word_counts):
    # Random words with many repeated bytes exercise ties, overlapping pairs ("aaa") and merges
    # whose bytes already exist as a token.
    assert learn_merges(word_counts, 300) == learn_merges_naive(word_counts, 300)


def test_tie_breaking_prefers_the_smallest_byte_pair():
    # "ab" and "cd" are equally frequent: the lexicographically smaller pair (b"a", b"b") wins.
    vocab = learn_merges({b"cd": 3, b"ab": 3}, 258)
    assert vocab[256:] == [b"ab", b"cd"]
    # a higher count beats the byte order
    assert learn_merges({b"cd": 4, b"ab": 3}, 257)[256:] == [b"cd"]


def test_specials_take_the_last_ids_and_vocab_size_counts_them(verdict):
    tok = train_bpe(verdict, 400, special_tokens=["<|endoftext|>", "<|pad|>"])
    assert tok.vocab_size == 400
    assert tok.special_tokens == {"<|endoftext|>": 398, "<|pad|>": 399}
    assert sorted(tok.ranks.values()) == list(range(398))
    assert tok.eot_id == 398


def test_small_corpus_stops_early_with_a_smaller_vocab():
    tok = train_bpe("ab ab ab", 1000)
    # "ab", " ab" — then nothing is left to merge
    assert tok.vocab_size < 1000
    assert tok.special_tokens["<|endoftext|>"] == tok.vocab_size - 1


def test_vocab_size_below_bytes_plus_specials_is_a_clear_error():
    with pytest.raises(ScratchLLMError, match="at least 256"):
        train_bpe("hello", 256)  # 256 bytes + <|endoftext|> need 257


def test_special_tokens_in_training_text_are_boundaries(verdict):
    # The special token's characters never take part in a merge.
    text = "<|endoftext|>".join([verdict[:5000]] * 50)
    tok = train_bpe(text, 600)
    assert all(b"<|" not in t and b"|>" not in t for t in tok.ranks)


def test_training_is_deterministic_across_runs_and_worker_counts(shakespeare, tmp_path):
    # Many documents so that the pool really has several jobs to share out.
    docs = [shakespeare[i : i + 20_000] for i in range(0, 300_000, 20_000)]
    paths = []
    for k, workers in enumerate([1, 2, 1]):
        tok = train_bpe(docs, 800, workers=workers)
        paths.append(tmp_path / f"tok{k}.json")
        tok.save(paths[-1])
    data = [p.read_bytes() for p in paths]
    assert data[0] == data[1] == data[2]


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN])
def test_chunked_counting_matches_the_plain_regex_on_real_text(shakespeare, pattern):
    text = shakespeare[:150_000] * 2 + "\r\nWindows\r\nlines  \n\n  indented\n\tTab\n."
    expected = Counter(w.encode() for w in regex.findall(pattern, text))
    assert count_words([text], pattern, special_tokens=[]) == dict(expected)


def _assert_counts_what_the_regex_sees(texts: list[str]) -> None:
    for pattern in (GPT2_PATTERN, GPT4_PATTERN):
        expected = Counter(w.encode() for text in texts for w in regex.findall(pattern, text))
        assert count_words(texts, pattern, special_tokens=[]) == dict(expected), pattern


@examples(300)
@given(st.text(alphabet=list("ab1 .'\n\r\t\u00a0\u3000é,") + ["\u2028", "\U0001f916"], max_size=60))
def test_chunked_counting_matches_the_plain_regex_on_whitespace_heavy_text(text):
    # The newline cuts must never change a pre-token, whatever the whitespace around them.
    _assert_counts_what_the_regex_sees([text, text])


@examples(150)
@given(st.lists(st.text(alphabet=list("a1 .\n\t\u00a0"), max_size=30), min_size=1, max_size=5))
def test_chunked_counting_matches_the_plain_regex_on_several_documents(texts):
    # Chunks of different documents are joined into one blob when they repeat equally often.
    _assert_counts_what_the_regex_sees(texts)


def test_a_text_starting_with_whitespace_is_not_glued_after_another_chunk():
    """Issue 13, item 1: the example hypothesis found on a fresh clone.

    ``"\xa0 1\n"`` (the text's first chunk) was joined after ``"1\n"`` for counting, and GPT-2's
    pattern then saw ``"\n\xa0"`` — a whitespace run that does not exist in the text.
    """
    text = "\xa0 1\n1\n1"
    words = count_words([text, text], GPT2_PATTERN, special_tokens=[])
    assert words == {b"\xc2\xa0": 2, b" 1": 2, b"\n": 4, b"1": 4}
    assert b"\n\xc2\xa0" not in words
    _assert_counts_what_the_regex_sees([text, text])


def test_custom_pattern(verdict):
    tok = train_bpe(verdict, 300, pattern=r"\S+|\s+")
    assert tok.decode(tok.encode(verdict)) == verdict
    assert tok.encode(verdict) == tok.encode_reference(verdict)
    with pytest.raises(ScratchLLMError, match="invalid pre-tokenisation pattern"):
        train_bpe(verdict, 300, pattern="(unclosed")


def test_save_load_round_trip(small_bpe_gpt4, tmp_path, verdict):
    path = tmp_path / "bpe.json"
    small_bpe_gpt4.save(path)
    again = load_tokenizer(path)
    assert isinstance(again, BPETokenizer)
    assert again.ranks == small_bpe_gpt4.ranks
    assert again.special_tokens == small_bpe_gpt4.special_tokens
    assert again.pattern == small_bpe_gpt4.pattern == GPT4_PATTERN
    assert again.encode(verdict) == small_bpe_gpt4.encode(verdict)
    assert BPETokenizer.load(path).vocab_size == 600


def test_malformed_bpe_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(
        '{"kind": "bpe", "version": 1, "ranks": {"!!!": 0}, "special_tokens": {}, "pattern": "x"}'
    )
    with pytest.raises(ScratchLLMError, match="malformed"):
        load_tokenizer(path)


def test_a_trained_tokenizer_compresses(small_bpe, shakespeare):
    text = shakespeare[200_000:300_000]  # unseen text
    ids = small_bpe.encode(text)
    assert len(text.encode()) / len(ids) > 2.0  # bytes per token (2.3 measured); raw bytes would be 1.0


@pytest.mark.parametrize("text", ["\xa0 1\n1\n1", " a\nb\nc", "\tx\ny"])
def test_a_document_that_starts_with_whitespace_counts_the_same(text):
    """Found by the property test above: a document's first chunk starting with whitespace must
    not be glued after another chunk's newline ("\\n" + "\\xa0 1" pre-tokenises differently)."""
    for pattern in (GPT2_PATTERN, GPT4_PATTERN):
        expected = Counter(w.encode() for w in regex.findall(pattern, text))
        assert count_words([text, text], pattern, special_tokens=[]) == {
            k: 2 * v for k, v in expected.items()
        }
