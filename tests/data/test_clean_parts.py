"""The pieces of `clean`: normalisation, each quality filter, hashing, MinHash/LSH, boilerplate."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis_profiles import examples

from scratchllm.data import dedup as D
from scratchllm.data import hashing as H
from scratchllm.data.normalize import (
    BoilerplateCounter,
    NormalizeConfig,
    document_line_keys,
    drop_lines,
    normalize,
)
from scratchllm.data.quality import (
    DEFAULT_THRESHOLDS,
    RULE_NAMES,
    BatchText,
    QualityConfig,
    document_stats,
    judge,
)
from scratchllm.data.synthetic import CorpusGenerator, true_jaccard
from scratchllm.errors import ScratchLLMError

# ----------------------------------------------------------------------------- normalisation


def test_normalize_steps():
    text = "  Cafe\u0301\tcr\u00e8me\r\nline\x00 two\x1b  \u00a0 end  \n\n\n\n\ufefflast\u200b line \n"
    assert normalize(text) == "Café crème\nline two end\n\nlast line"
    assert normalize(text, NormalizeConfig(nfc=False)).startswith("Cafe\u0301 ")
    assert "\x00" in normalize(text, NormalizeConfig(controls=False))
    assert "\t" in normalize(text, NormalizeConfig(whitespace=False))
    assert normalize(text, NormalizeConfig(False, False, False)) == text
    assert NormalizeConfig.from_steps(["nfc"]).steps() == ["nfc"]


@examples(200)
@given(st.lists(st.sampled_from(list("ab \t\n\r\u00a0\u3000\x00é") + ["e\u0301"]), max_size=40).map("".join))
def test_normalize_is_idempotent(text):
    once = normalize(text)
    assert normalize(once) == once
    assert "\r" not in once and "\x00" not in once and "  " not in once and "\n\n\n" not in once


def test_boilerplate_counter_finds_lines_in_many_documents():
    counter = BoilerplateCounter(capacity=8)
    footer = "Copyright 2024 Example Inc. All rights reserved."
    for i in range(200):
        counter.add_document(document_line_keys(f"Unique line {i}.\nAnother unique {i * 3}.\n{footer}"))
    frequent = counter.frequent(min_documents=50)
    assert frequent == document_line_keys(footer)  # guaranteed: it occurs in more than 200/8 documents
    text, dropped = drop_lines(f"Body text.\n{footer}\nMore body.", frequent)
    assert (text, dropped) == ("Body text.\nMore body.", 1)
    assert counter.decrements > 0  # the table really overflowed (the unique lines were evicted)


# ----------------------------------------------------------------------------- quality filters

GOOD = CorpusGenerator(seed=11)._documents(1)[0]  # random English-like prose: passes every rule


def _why(text: str, **cfg) -> str | None:
    return judge([text], QualityConfig.make(**cfg))[0][0]


def test_a_good_document_passes_every_rule():
    assert _why(GOOD) is None


@pytest.mark.parametrize(
    ("rule", "text"),
    [
        ("word_count", "Too short to be a real document, though it ends well."),
        ("word_count", "the and of to with. " * 25_001),
        ("mean_word_length", "a b c d e f g h i j, the and of. " * 20),
        ("mean_word_length", "incomprehensibilities ultramicroscopically antidisestablishment. " * 30),
        ("symbol_ratio", " ".join(f"{w} #{w}" if i % 4 == 0 else w for i, w in enumerate(GOOD.split(" ")))),
        ("bullet_lines", "\n".join(f"- the item {i} and that is with them." for i in range(60))),
        (
            "ellipsis_lines",
            "\n".join(
                f"the long thought number {i} and that trails off slowly as we all wait with them..."
                for i in range(60)
            ),
        ),
        ("alpha_words", " ".join(f"{i * 1000003} {i * 7777777} 3.14159 the river" for i in range(40)) + "."),
        ("stop_words", " ".join(f"Lorem ipsum dolor sit amet {i}." for i in range(30))),
        (
            "line_punctuation",
            "\n".join(f"the menu entry {i} and a link to that page with" for i in range(40)),
        ),
        ("dup_lines", "\n".join(["The same line, with the words to be said over and over."] * 30)),
        ("top_ngrams", " ".join(f"buy the cheap pills {w} now." for w in GOOD.split()[:60])),
        ("dup_ngrams", (GOOD.replace("\n\n", " ") + " ") * 3),
    ],
)
def test_each_rule_removes_its_kind_of_junk(rule, text):
    assert _why(text) == rule
    # ... and with that rule switched off, that document is not charged to it.
    assert _why(text, skip=[rule]) != rule


def test_dup_paragraphs_rule():
    para = "The same paragraph, with the words to be said over and over again by the and of them."
    text = "\n\n".join([para] * 8 + [GOOD])
    stats = document_stats([text])
    assert stats["dup_paragraphs"][0] > 0.3
    assert _why(text, only=["dup_paragraphs"]) == "dup_paragraphs"


def test_statistics_match_a_plain_python_count():
    text = "Hello world, the café is open.\n- and a bullet line with the...\nLast line with ” quote”"
    s = {k: float(v[0]) for k, v in document_stats([text]).items()}
    words = text.split()
    assert s["words"] == len(words)
    assert s["mean_word_length"] == pytest.approx(sum(map(len, words)) / len(words))  # characters, not bytes
    assert s["lines"] == 3
    assert s["bullet_lines"] == pytest.approx(1 / 3) and s["ellipsis_lines"] == pytest.approx(1 / 3)
    assert s["punctuated_lines"] == pytest.approx(3 / 3)  # ".", "..." and "”" all end a line
    assert s["stop_words"] == 5  # the, and, with, the, with


def test_thresholds_change_decisions_and_bad_names_are_errors():
    short = " ".join(["the word and that"] * 8) + "."  # 32 words
    assert _why(short) == "word_count"
    assert _why(short, thresholds={"min_words": 20}) != "word_count"
    with pytest.raises(ScratchLLMError, match="unknown threshold 'min_wordz'"):
        QualityConfig.make(thresholds={"min_wordz": 3})
    with pytest.raises(ScratchLLMError, match="unknown quality filter 'nope'"):
        QualityConfig.make(skip=["nope"])
    assert set(QualityConfig.make(only=[]).rules) == set()
    assert judge([short], QualityConfig.make(only=[])) == ([None], [None])
    assert len(DEFAULT_THRESHOLDS) == 23 and len(RULE_NAMES) == 12


def test_the_first_failing_rule_is_charged_and_stats_are_per_document():
    docs = [GOOD, "tiny doc.", GOOD + "\n" + "- x y z.\n" * 5, "# " * 100]
    reasons, values = judge(docs)
    assert reasons[0] is None and reasons[1] == "word_count" and values[1] == 2
    assert reasons[2] == "dup_lines"  # five equal bullet lines: 5 of 9 lines are repeats
    assert reasons[3] == "mean_word_length"  # 100 words of one character: enough words, too short
    batch_alone = [judge([d])[0][0] for d in docs]
    assert reasons == batch_alone  # a document's verdict does not depend on its batch


# ----------------------------------------------------------------------------- hashing


def test_run_hashes_equal_words_equal_hashes_across_documents():
    bt = BatchText(["apple banana apple", "banana cherry", "apple"])
    h = bt.w_hash
    assert h[0] == h[2] == h[5] and h[1] == h[3] and len(set(h.tolist())) == 3
    long_a, long_b = "x" * 70 + "ab", "x" * 70 + "ba"  # differ only past the 64th byte
    bt2 = BatchText([long_a, long_b, long_a])
    assert bt2.w_hash[0] == bt2.w_hash[2] != bt2.w_hash[1]


def test_sequence_hashes_depend_on_order():
    words = np.array([11, 22, 22, 11, 11, 22], dtype=np.uint64)
    h = H.sequence_hashes(words, np.array([0, 2, 4]))  # [11, 22], [22, 11], [11, 22]
    assert h[0] == h[2] != h[1]


def test_repeats_marks_later_occurrences():
    keys = H.mix64(np.array([5, 7, 5, 9, 7, 5], dtype=np.uint64))
    assert H.repeats(keys).tolist() == [False, False, True, False, True, True]


def test_hashes_are_the_same_in_every_process():
    import subprocess
    import sys

    code = (
        "from scratchllm.data.quality import BatchText; print(BatchText(['the same words']).w_hash.tolist())"
    )
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout for _ in range(2)
    }
    assert len(outs) == 1 and BatchText(["the same words"]).w_hash.tolist() == eval(outs.pop())


# ----------------------------------------------------------------------------- MinHash + LSH


def _shingle_sets(texts: list[str], n: int = 5) -> list[np.ndarray]:
    tok_h, tok_doc, _ = BatchText(texts).lower_tokens()
    sh, doc = D.shingles(tok_h, tok_doc, len(texts), n)
    return [sh[doc == i] for i in range(len(texts))]


def test_shingles_ignore_case_and_punctuation_and_need_the_same_document():
    a, b, c = _shingle_sets(["One two three four five six.", "ONE, two; three four five SIX", "six one"])
    assert np.array_equal(a, b) and len(a) == 2  # two 5-grams
    assert len(c) == 1  # fewer words than n: one shingle of all of them


def test_minhash_estimates_jaccard():
    gen = CorpusGenerator(seed=3)
    base = gen._documents(1)[0]
    copies = [gen._edit(base, rate) for rate in (0.0, 0.01, 0.03, 0.08, 0.3)]
    sets = _shingle_sets([base, *copies])
    perms = D.permutations(256, seed=1)
    tok_h, tok_doc, _ = BatchText([base, *copies]).lower_tokens()
    sh, sh_doc = D.shingles(tok_h, tok_doc, len(copies) + 1, 5)
    sig = D.minhash(sh, sh_doc, len(copies) + 1, perms)
    for k in range(1, len(copies) + 1):
        exact = D.jaccard(sets[0], sets[k])
        estimate = D.signature_similarity(sig[0], sig[k])
        assert abs(estimate - exact) < 4 * np.sqrt(max(exact * (1 - exact), 0.01) / 256), (k, exact, estimate)


def test_lsh_parameters_and_s_curve():
    bands, rows = D.lsh_params(0.8, 128)
    assert (bands, rows) == (21, 6) and bands * rows <= 128
    assert D.candidate_probability(0.8, bands, rows) >= 0.99
    assert D.candidate_probability(0.3, bands, rows) < 0.02  # dissimilar pairs rarely even get checked
    with pytest.raises(ScratchLLMError, match="--lsh-bands x --lsh-rows"):
        D.DedupConfig(bands=30, rows=5).validated()
    with pytest.raises(ScratchLLMError, match="--near-threshold"):
        D.DedupConfig(threshold=1.5).validated()


def test_exact_duplicate_of_earlier_keeps_the_first():
    keys = np.array([D.exact_key(t) for t in ["A b", "x", "a  B", "x", "a b\n"]], dtype=np.uint64)
    assert D.duplicate_of_earlier(keys).tolist() == [-1, -1, 0, 1, 0]


def test_candidate_pairs_and_verification():
    bands = [H.mix64(np.array(b, dtype=np.uint64)) for b in ([1, 2, 1, 3, 1], [5, 6, 7, 6, 8])]
    alive = np.array([True, True, True, True, False])
    pairs = D.candidate_pairs(bands, alive)
    assert pairs.tolist() == [[0, 2], [1, 3]]  # doc 4 is not alive; pairs are (first of bucket, later)
    sims = {(0, 2): 0.9, (1, 3): 0.5}
    partner, score, checked = D.verified_duplicates(pairs, 5, 0.8, lambda i, j: sims[(i, j)])
    assert partner.tolist() == [-1, -1, 0, -1, -1] and score[2] == 0.9 and checked == 2


def test_true_jaccard_of_the_generator():
    gen = CorpusGenerator(seed=5)
    doc = gen._documents(1)[0]
    assert true_jaccard(doc, doc) == 1.0
    assert 0.5 < true_jaccard(doc, gen._edit(doc, 0.02)) < 1.0
    assert true_jaccard(doc, gen._documents(1)[0]) < 0.05
