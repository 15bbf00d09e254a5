"""Classification metrics, exact match and ROUGE-L (checked against hand-worked values)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchllm.evaluate.metrics import (
    classification_metrics,
    exact_match,
    format_confusion,
    lcs_length,
    rouge_l,
    text_metrics,
)


def test_classification_metrics_hand_worked():
    # true:  a a a b b c ; pred: a a b b c c
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # precision a=2/2 b=1/2 c=1/2 ; recall a=2/3 b=1/2 c=1/1
    assert m["precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 / 1.5]
    assert m["f1"] == pytest.approx(sum(f1) / 3)
    assert m["per_class"]["c"]["support"] == 1
    table = format_confusion(m["confusion_matrix"], m["labels"])
    assert table.splitlines()[1].split() == ["a", "2", "1", "0"]


def test_majority_class_predictor_has_low_macro_f1():
    m = classification_metrics([0] * 9 + [1], [0] * 10, ["ham", "spam"])
    assert m["accuracy"] == pytest.approx(0.9)
    assert m["per_class"]["spam"]["precision"] == 0.0
    assert m["f1"] < 0.5


def _brute_lcs(a, b):
    best = 0
    for k in range(len(a) + 1):
        for idx in itertools.combinations(range(len(a)), k):
            sub = [a[i] for i in idx]
            it = iter(b)
            if all(any(x == y for y in it) for x in sub):
                best = max(best, k)
    return best


@given(st.lists(st.sampled_from("abc"), max_size=7), st.lists(st.sampled_from("abc"), max_size=7))
def test_lcs_matches_brute_force(a, b):
    assert lcs_length(a, b) == _brute_lcs(a, b)


def test_rouge_l_known_values():
    r = rouge_l("the cat sat on the mat", "the cat is on the mat")
    assert r["precision"] == pytest.approx(5 / 6) and r["recall"] == pytest.approx(5 / 6)
    assert rouge_l("A B", "a b")["f1"] == 1.0
    assert rouge_l("", "something")["f1"] == 0.0
    assert rouge_l("police killed the gunman", "the gunman kill police")["f1"] == pytest.approx(0.5)


def test_exact_match_and_text_metrics():
    assert exact_match("  The answer.\n", "the answer.") == 1.0
    assert exact_match("the answer", "the answer.") == 0.0
    m = text_metrics(["yes", "no way"], ["yes", "no"])
    assert m["exact_match"] == 0.5
    assert m["rouge_l"] == pytest.approx((1 + 2 / 3) / 2)
