"""Exact round trips and reference == fast encoder, on real text, random text and random bytes."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis_profiles import examples

from scratchllm.tokenizer import CharTokenizer
from scratchllm.tokenizer.bpe import clean_text

# Characters that break naive tokenizers: combining marks, right-to-left scripts, ZWJ emoji
# sequences, flags, CJK, NUL and other control characters, odd whitespace, BOM, non-characters.
UNICODE_STRESS = [
    "",
    "e\u0301 a\u0308\u0323 Z\u0351\u0352\u0353 \u0915\u094d\u0937",
    "مرحبا بالعالم، كيف حالك؟ 123",
    "שָׁלוֹם עוֹלָם",
    "\u202eRTL override\u202c and \u200fmarks\u200e",
    "👩\u200d👩\u200d👧\u200d👦 🏳️\u200d🌈 👍🏽 🇺🇳🇫🇷",
    "漢字かなカナ한국어 中文，標點。",
    "\x00NUL\x00\x01\x02\x1b[31m\x7f\x85",
    "\t \n\r\n  \u3000\u2028\u2029\u00a0\u200b  ",
    "\ufeffBOM \ufffe\uffff \U0010ffff \U0001d11e",
    "<|endoftext|>between<|endoftext|><|endoftext|>",
    "don't I'LL we've 1234567 3.14159 ...---!!!",
    "🤖" * 50 + " " * 40 + "a" * 100,
]


@pytest.fixture(params=["gpt2", "small_bpe", "small_bpe_gpt4"])
def bpe(request):
    return request.getfixturevalue("gpt2_tok" if request.param == "gpt2" else request.param)


# ----------------------------------------------------------------------------- real text
def test_reference_and_fast_encoders_agree_on_real_text(bpe, verdict, shakespeare):
    for text in [verdict, shakespeare[:150_000], *UNICODE_STRESS]:
        ids = bpe.encode(text)
        assert ids == bpe.encode_reference(text)
        assert bpe.decode(ids) == text
        assert bpe.decode_bytes_reference(ids) == bpe.decode_bytes(ids) == text.encode("utf-8")


def test_unicode_stress_set_round_trips_in_every_kind(bpe):
    for text in UNICODE_STRESS:
        assert bpe.decode(bpe.encode(text)) == text
    char = CharTokenizer.train("".join(UNICODE_STRESS))
    for text in UNICODE_STRESS:
        assert char.decode(char.encode(text)) == text


# ----------------------------------------------------------------------------- property tests
@examples(300)
@given(text=st.text(max_size=80))
def test_bpe_round_trip_and_encoder_parity_on_arbitrary_text(small_bpe, gpt2_tok, text):
    for tok in (small_bpe, gpt2_tok):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.encode_reference(text) == ids


@examples(200)
@given(
    text=st.text(
        alphabet=st.characters(codec="utf-8", categories=["So", "Mn", "Zs", "Cc", "Lo"]), max_size=40
    )
)
def test_bpe_round_trip_on_emoji_marks_and_controls(small_bpe_gpt4, gpt2_tok, text):
    for tok in (small_bpe_gpt4, gpt2_tok):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.encode_reference(text) == ids


@examples(200)
@given(text=st.text(max_size=60))
def test_char_round_trip_on_its_vocabulary(text):
    tok = CharTokenizer.train(text + "x")  # any text is in the vocabulary of a tokenizer trained on it
    assert tok.decode(tok.encode(text)) == text


@examples(200)
@given(data=st.binary(max_size=40))
def test_surrogateescape_text_is_cleaned_the_same_way_by_both_encoders(gpt2_tok, data):
    # Lone surrogates cannot be UTF-8 encoded: both encoders replace them with U+FFFD (tiktoken's
    # rule), so the round trip gives the cleaned text, and decoding with errors="replace" first
    # gives an exact round trip.
    text = data.decode("utf-8", errors="surrogateescape")
    ids = gpt2_tok.encode(text)
    assert ids == gpt2_tok.encode_reference(text)
    assert gpt2_tok.decode(ids) == clean_text(text)
    replaced = data.decode("utf-8", errors="replace")
    assert gpt2_tok.decode(gpt2_tok.encode(replaced)) == replaced


def test_surrogate_pairs_become_their_character(gpt2_tok):
    pair = "\ud83e\udd16"  # the two UTF-16 halves of 🤖, as separate code points
    assert clean_text(pair) == "🤖"
    assert gpt2_tok.encode(pair) == gpt2_tok.encode("🤖") == gpt2_tok.encode_reference(pair)


# ----------------------------------------------------------------------------- 10^5 random byte strings
def _random_byte_strings(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    # Mostly UTF-8-ish bytes (ASCII, continuation bytes, lead bytes) so that both valid multi-byte
    # characters and every kind of invalid sequence show up.
    alphabet = list(range(256)) + list(range(0x20, 0x7F)) * 2 + [0x0A, 0x20] * 20
    return [bytes(rng.choices(alphabet, k=rng.randrange(0, 24))) for _ in range(n)]


def test_round_trip_on_100k_random_byte_strings(gpt2_tok, small_bpe):
    """Issue 9: 10^5 random byte strings, decoded with errors="replace", round-trip exactly."""
    samples = _random_byte_strings(100_000, seed=1234)
    texts = [b.decode("utf-8", errors="replace") for b in samples]
    assert sum("\ufffd" in t for t in texts) > 10_000  # plenty of invalid UTF-8 really was exercised
    for tok in (gpt2_tok, small_bpe):
        batches = tok.encode_batch(texts)
        for text, ids in zip(texts, batches):
            assert tok.decode(ids) == text
        # encode_batch == encode, and the reference encoder agrees on a sample
        for k in range(0, 100_000, 50):
            assert tok.encode(texts[k]) == batches[k] == tok.encode_reference(texts[k])
    # A token sequence may stop inside a character: decode_bytes keeps the raw bytes.
    valid = [t.encode("utf-8") for t in texts[:1000]]
    for raw in valid:
        ids = gpt2_tok.encode(raw.decode("utf-8"))
        assert gpt2_tok.decode_bytes(ids) == raw
