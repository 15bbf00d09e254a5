"""attention: every printed matrix recomputed with explicit sums and exps."""

from __future__ import annotations

import math

import pytest
from explain_helpers import assert_checks_hold, close, value

BOOK = [
    [0.43, 0.15, 0.89],
    [0.55, 0.87, 0.66],
    [0.57, 0.85, 0.64],
    [0.22, 0.58, 0.33],
    [0.77, 0.25, 0.10],
    [0.05, 0.80, 0.55],
]


def softmax(row: list[float]) -> list[float]:
    finite = [x for x in row if x != -math.inf]
    m = max(finite)
    e = [math.exp(x - m) if x != -math.inf else 0.0 for x in row]
    return [x / sum(e) for x in e]


def matmul(a: list[list[float]], b_t: list[list[float]]) -> list[list[float]]:
    """a @ b^T with plain sums."""
    return [[sum(x * y for x, y in zip(r, c)) for c in b_t] for r in a]


def test_three_steps_without_weights(explain) -> None:
    exp = explain("attention")
    assert_checks_hold(exp)
    assert close(value(exp, "The inputs", "inputs x"), BOOK, tol=1e-6)
    scores = matmul(BOOK, BOOK)
    assert close(value(exp, "Step 1: attention scores", "scores = x @ x^T"), scores)
    weights = [softmax(r) for r in scores]
    shown = value(exp, "Step 2: attention weights", "weights = softmax(scores, each row)")
    assert close(shown, weights)
    # the book's printed row for "journey"
    assert close(shown[1], [0.1385, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581], tol=1e-4)
    context = [[sum(weights[i][j] * BOOK[j][c] for j in range(6)) for c in range(3)] for i in range(6)]
    assert close(value(exp, "Step 3: context vectors", "context = weights @ x"), context)
    assert close(value(exp, "Step 3: context vectors", "context of 'journey', summed by hand"), context[1])


def test_projections_scaling_mask_dropout(explain) -> None:
    exp = explain("attention")
    step = exp.find("Trainable queries, keys and values")
    q, k = step.values["queries"], step.values["keys"]
    w = [softmax([s / math.sqrt(2) for s in row]) for row in matmul(q, k)]
    assert close(step.values["weights = softmax(q @ k^T / sqrt(2))"], w)

    for row in value(exp, "Why divide by sqrt(d)", "variance of dot products"):
        assert 0.85 < row["var(q.k)"] / row["d"] < 1.15 and 0.85 < row["var(q.k / sqrt d)"] < 1.15

    step = exp.find("The causal mask")
    masked = step.values["scaled scores, masked"]
    assert all(masked[i][j] == -math.inf for i in range(6) for j in range(i + 1, 6))
    causal = [softmax(r) for r in masked]
    assert close(step.values["weights"], causal)
    assert close(masked[3][:4], [s / math.sqrt(2) for s in matmul(q, k)[3][:4]])

    dropped = value(exp, "Dropout on the weights", "weights after dropout(p=0.5)")
    assert all(d == 0 or abs(d - 2 * c) < 1e-6 for dr, cr in zip(dropped, causal) for d, c in zip(dr, cr))

    step = exp.find("Multi-head attention")
    for h in range(2):
        heads = step.values[f"head {h} weights"]
        assert all(abs(sum(r) - 1) < 1e-5 for r in heads)
        assert all(heads[i][j] == 0 for i in range(6) for j in range(i + 1, 6))
    assert value(exp, "The attention the models run", "max |fast - book|") < 1e-5


def test_attention_png(explain) -> None:
    exp = explain("attention")
    assert (exp.out_dir / "attention.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("run", ["gpt", "gpt-rope", "lora"])
def test_attention_on_a_users_model(explain, runs, run) -> None:
    exp = explain("attention", model=runs[run])
    assert_checks_hold(exp)  # the book's class with the model's weights == the model's layer
    assert (exp.out_dir / "attention-model.png").is_file()
    scores = value(exp, "Step 1: attention scores", "scores = x @ x^T")
    x = value(exp, "The inputs", "inputs x")
    assert close(scores, matmul(x, x), tol=1e-4)
