"""tokenization and bpe: the printed numbers recomputed with the formulas written out here."""

from __future__ import annotations

import re
from collections import Counter

import regex
from explain_helpers import assert_checks_hold, step_starting, value

TEXT = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def test_tokenization_counts(explain) -> None:
    exp = explain("tokenization")
    assert_checks_hold(exp)
    rows = {r["tokenizer"]: r for r in value(exp, "Four tokenizers, one text", "comparison")}
    n_bytes = len(TEXT.encode("utf-8"))
    # char: one token per character, <|endoftext|> (13 characters) is one token
    assert rows["char"]["tokens"] == len(TEXT) - len("<|endoftext|>") + 1
    # word: the book's regex, whitespace dropped
    words = [
        p.strip()
        for p in re.split(r'([,.:;?_!"()\']|--|\s)', TEXT.replace("<|endoftext|>", " E "))
        if p.strip()
    ]
    assert rows["word"]["tokens"] == len(words)
    for r in rows.values():
        assert abs(r["bytes/token"] - round(n_bytes / r["tokens"], 2)) < 1e-9
    assert rows["char"]["exact round trip"] and rows["bpe-1024"]["exact round trip"]
    assert not rows["word"]["exact round trip"]
    unknown = value(exp, "Unknown words: <|unk|> or sub-words", "unknown to the word tokenizer")
    assert unknown == ["tea", "sunlit", "terraces", "someunknownPlace"]
    pieces = value(exp, "Unknown words: <|unk|> or sub-words", "bpe-1024 pieces of the unknown words")
    assert all("".join(p) == w for w, p in pieces.items())  # sub-words spell the word exactly


def test_tokenization_with_gpt2_files(explain, gpt2_files) -> None:
    exp = explain("tokenization", tokenizer=gpt2_files)
    assert_checks_hold(exp)
    # The book's ids for this sentence (chapter 2, tiktoken's gpt2 encoding).
    book = [
        15496,
        11,
        466,
        345,
        588,
        8887,
        30,
        220,
        50256,
        554,
        262,
        4252,
        18250,
        8812,
        2114,
        286,
        617,
        34680,
        27271,
        13,
    ]
    assert value(exp, "gpt2: 20 tokens", "ids") == book
    assert value(exp, "<|endoftext|> between documents", "<|endoftext|> id")["gpt2"] == 50256


def _naive_bpe(counts: dict[bytes, int], n_merges: int) -> list[tuple[bytes, bytes, int]]:
    """The textbook algorithm, written out: count pairs, merge the most frequent, repeat."""
    words = [([bytes([b]) for b in w], n) for w, n in counts.items()]
    merges = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, n in words:
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += n
        (a, b), c = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merges.append((a, b, c))
        new_words = []
        for w, n in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words.append((out, n))
        words = new_words
    return merges


def _show(b: bytes) -> str:
    return b.decode("utf-8").replace(" ", "␣").replace("\n", "\\n")


def test_bpe_replay_matches_the_textbook_algorithm(explain) -> None:
    from scratchllm.explain.tokens import bpe_default_text

    exp = explain("bpe")
    assert_checks_hold(exp)
    text = bpe_default_text()
    counts = Counter(w.encode("utf-8") for w in regex.findall(GPT2_PATTERN, text))
    assert value(exp, "Pre-tokenise and count", "distinct pre-tokens") == len(counts)
    top = value(exp, "Pre-tokenise and count", "most frequent")
    assert [r["count"] for r in top] == sorted(counts.values(), reverse=True)[:10]
    merges = step_starting(exp, "The first").values["merges"]
    expected = _naive_bpe(dict(counts), 40)
    assert [(m["left"], m["right"], m["pair count"]) for m in merges] == [
        (_show(a), _show(b), c) for a, b, c in expected
    ]
    pairs = value(exp, "Count adjacent pairs", "most frequent pairs")
    assert pairs[0]["count"] == expected[0][2]
    tokens = value(exp, "Compression", "tokens")
    assert abs(value(exp, "Compression", "bytes per token") - len(text.encode()) / tokens) < 1e-12
    stages = step_starting(exp, "Encoding").values["stages"]
    assert stages[0].count("|") == len(stages[0].split(" | ")) - 1
    assert all(
        len(a.split(" | ")) > len(b.split(" | ")) for a, b in zip(stages, stages[1:])
    )  # one merge fewer parts


def test_bpe_on_your_text(explain) -> None:
    exp = explain("bpe", text="low lower lowest newer newest wider widest")
    assert_checks_hold(exp)
    first = step_starting(exp, "The first").values["merges"][0]
    # "␣l o w", "␣n e w", "␣w i d": "e"+"s" (newest, widest, lowest) and "w"+"e"... count by hand:
    counts = Counter(
        w.encode() for w in regex.findall(GPT2_PATTERN, "low lower lowest newer newest wider widest")
    )
    assert (first["left"], first["right"], first["pair count"]) == tuple(
        (_show(a), _show(b), c) for a, b, c in _naive_bpe(dict(counts), 1)
    )[0]
