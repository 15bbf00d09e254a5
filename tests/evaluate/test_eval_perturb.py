"""Perturbations: each one does what its docstring says, seeded and reproducible."""

from __future__ import annotations

import random
import re

import pytest

from scratchllm.errors import ScratchLLMError
from scratchllm.evaluate.perturb import (
    PERTURBATIONS,
    case,
    drop,
    format_perturb,
    parse_perturb,
    perturb_text,
    perturb_texts,
    swap,
    truncate,
    typos,
    whitespace,
)

TEXT = "The quick brown fox jumps over the lazy dog, twice."


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_rate_zero_changes_nothing(name):
    assert PERTURBATIONS[name](TEXT, 0.0, random.Random(0), None) == TEXT


def test_truncate_keeps_the_first_words():
    assert truncate("a b c d e", 0.4, random.Random(0)) == "a b c"  # ceil(0.6 * 5) = 3
    assert truncate("a b c d e", 0.2, random.Random(0)) == "a b c d"
    assert truncate("one", 0.99, random.Random(0)) == "one"  # at least one word
    assert truncate("a  b\nc", 0.5, random.Random(0)) == "a  b"  # the text up to the last kept word


def test_case_and_whitespace_at_rate_one():
    assert case("aBc d!", 1.0, random.Random(0)) == "AbC D!"
    out = whitespace("a b c d", 1.0, random.Random(0))
    assert out.replace(" ", "") == "abcd" and out != "a b c d"
    assert all(gap in ("", "  ") for gap in re.split("[abcd]", out)[1:-1])


def test_typos_edit_letters_only_and_respect_the_alphabet():
    text = "hello, world 123"
    out = typos(text, 1.0, random.Random(1))
    assert out != text and ", " in out and out.endswith(" 123")
    alphabet = set("helo wrd,123")
    for seed in range(20):
        noisy = typos(text, 0.5, random.Random(seed), alphabet)
        assert set(noisy) <= alphabet, noisy
    # substitutions come from keyboard neighbours: 'q' can only become w, a or s (or be edited otherwise)
    for seed in range(30):
        assert set(typos("q", 1.0, random.Random(seed))) <= set("qwas")


def test_case_respects_the_alphabet():
    assert case("abc", 1.0, random.Random(0), alphabet=set("abcA")) == "Abc"


def test_drop_and_swap_are_word_noise():
    words = ["a", "b", "c", "d", "e", "f", "g", "h"]
    out = drop(" ".join(words), 0.5, random.Random(3))
    kept = out.split()
    assert 1 <= len(kept) < len(words) and kept == [w for w in words if w in kept]
    assert drop("a b", 1.0, random.Random(0)) == "a"
    sw = swap(" ".join(words), 1.0, random.Random(0))
    assert sw == "b a d c f e h g"
    assert sorted(swap(" ".join(words), 0.5, random.Random(5)).split()) == words


def test_seeded_reproducible_and_independent_per_text():
    spec = parse_perturb("typos=0.2,case=0.2,whitespace=0.2,truncate=0.3,drop=0.1,swap=0.1")
    texts = [TEXT, "Another line of text here.", "short"]
    a = perturb_texts(texts, spec, seed=4)
    assert a == perturb_texts(texts, spec, seed=4)
    assert a != perturb_texts(texts, spec, seed=5)
    # text i's noise depends on the seed and i only, not on the other texts
    assert perturb_texts(["other", texts[1]], spec, seed=4)[1] == a[1]
    assert a[0] == perturb_text(TEXT, spec, random.Random("4/0"))
    assert all(t.strip() for t in a)


def test_spec_parsing_errors_are_one_line():
    assert parse_perturb("typos=0.05, case=0.1") == [("typos", 0.05), ("case", 0.1)]
    assert format_perturb(parse_perturb("typos=.050,truncate=0.2")) == "typos=0.05,truncate=0.2"
    for bad, msg in (
        ("typo=0.1", "unknown perturbation 'typo'"),
        ("typos=1.5", "between 0 and 1"),
        ("typos", "between 0 and 1"),
        ("typos=x", "between 0 and 1"),
        (",", "names no perturbation"),
    ):
        with pytest.raises(ScratchLLMError, match=msg) as e:
            parse_perturb(bad)
        assert "\n" not in str(e.value)
