"""embeddings, positions, dataloader: printed numbers recomputed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from explain_helpers import assert_checks_hold, value

from scratchllm.explain.context import tiny_lm


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_lookup_positions_and_similarity(explain) -> None:
    exp = explain("embeddings")
    assert_checks_hold(exp)
    lm = tiny_lm(0)
    tok, W = lm.tokenizer, lm.model.tok_emb.weight.detach()
    ids = tok.encode("Every effort moves you")
    assert value(exp, "Token ids -> vectors: a table lookup", "ids") == ids
    shown = value(
        exp, "Token ids -> vectors: a table lookup", "vectors (first 6 tokens, first 8 of 64 numbers)"
    )
    assert shown == W[ids[:6], :8].tolist()  # row `id` of the matrix
    P = lm.model.pos_emb.weight.detach()
    both = value(exp, "+ position", "token + position (first 6, first 8 numbers)")
    assert torch.allclose(torch.tensor(both), W[ids[:6], :8] + P[:6, :8], atol=1e-7)

    step = exp.find("Similarity before vs after training")
    probes = [tok.encode(c)[0] for c in "aeoi017.,T"]
    after = step.values["cosine similarity, trained"]
    for i in range(len(probes)):
        for j in range(len(probes)):
            assert abs(after[i][j] - _cos(W[probes[i]].tolist(), W[probes[j]].tolist())) < 1e-5
    torch.manual_seed(0)  # the fresh model: same config, same seed, never trained
    fresh = type(lm.model)(lm.model.config).tok_emb.weight.detach()
    before = step.values["cosine similarity, freshly initialised"]
    assert abs(before[0][1] - _cos(fresh[probes[0]].tolist(), fresh[probes[1]].tolist())) < 1e-5
    # nearest neighbours of 'a' after training: the 5 most similar other rows
    sims = [(_cos(W[probes[0]].tolist(), W[j].tolist()), j) for j in range(W.shape[0]) if j != probes[0]]
    top5 = [tok.decode([j]).replace(" ", "␣").replace("\n", "\\n") for _, j in sorted(sims, reverse=True)[:5]]
    assert step.values["nearest tokens, trained"]["a"] == top5
    # training made vowels more alike than a fresh model has them
    assert after[0][1] > before[0][1]


def test_embeddings_png(explain) -> None:
    exp = explain("embeddings")
    assert _is_png(exp.out_dir / "embeddings.png")


def test_positions_numbers(explain) -> None:
    exp = explain("positions")
    assert_checks_hold(exp)
    table = value(
        exp, "Sinusoidal positions (the original transformer)", "table (first 6 positions, all 16 features)"
    )
    d = 16
    for p in range(6):
        for i in range(d // 2):
            angle = p / 10000 ** (2 * i / d)
            assert abs(table[p][2 * i] - math.sin(angle)) < 1e-5
            assert abs(table[p][2 * i + 1] - math.cos(angle)) < 1e-5
    dots = value(exp, "Sinusoidal positions (the original transformer)", "PE[p] . PE[p+3] for p = 0..5")
    assert all(abs(x - sum(math.cos(3 / 10000 ** (2 * i / d)) for i in range(d // 2))) < 1e-4 for x in dots)

    step = exp.find("RoPE: rotate queries and keys")
    q, k = step.values["q"], step.values["k"]

    def rotate(v: list[float], pos: int) -> list[float]:  # rotate-half layout: pair i with i + d/2
        h = len(v) // 2
        out = list(v)
        for i in range(h):
            t = pos * 10000 ** (-2 * i / len(v))
            out[i] = v[i] * math.cos(t) - v[i + h] * math.sin(t)
            out[i + h] = v[i + h] * math.cos(t) + v[i] * math.sin(t)
        return out

    for key, score in step.values["q . k at (m, n)"].items():
        m, n = map(int, key.strip("()").split(", "))
        assert abs(score - sum(a * b for a, b in zip(rotate(q, m), rotate(k, n)))) < 1e-4

    step = exp.find("ALiBi: a penalty that grows with distance")
    assert step.values["slopes of 4 heads"] == [2 ** (-8 / 4 * (h + 1)) for h in range(4)]
    bias = step.values["bias of head 0"]
    for i in range(6):
        for j in range(6):
            assert bias[i][j] == (-0.25 * (i - j) if j <= i else -math.inf)
    assert value(exp, "Learned positions (GPT-2)", "parameters") == 16 * 8


def test_positions_png(explain) -> None:
    assert _is_png(explain("positions").out_dir / "positions.png")


def test_dataloader_windows(explain) -> None:
    from scratchllm.explain.context import corpus_char_tokenizer

    exp = explain("dataloader")
    assert_checks_hold(exp)
    ids = corpus_char_tokenizer().encode(
        "In the heart of the city stood the old library, a relic from a bygone era."
    )
    for stride in (1, 4):
        step = exp.find(f"Sliding window, context_length 4, stride {stride}")
        assert step.values["windows"] == (len(ids) - 4 - 1) // stride + 1
        for i, sample in enumerate(step.values["first samples"]):
            assert sample["input ids"] == ids[i * stride : i * stride + 4]
            assert sample["target ids"] == ids[i * stride + 1 : i * stride + 5]
    batch = exp.find("A batch")
    assert batch.values["inputs"] == [ids[0:4], ids[4:8]] and batch.values["targets"] == [ids[1:5], ids[5:9]]
    exercises = value(exp, "Next-token prediction, position by position", "exercises in the first window")
    assert [e["predict"] for e in exercises] == ["n", "␣", "t", "h"]


@pytest.mark.parametrize("run", ["gpt", "gpt-rope"])
def test_embeddings_on_a_users_model(explain, runs, run) -> None:
    exp = explain("embeddings", model=runs[run])
    assert_checks_hold(exp)
    assert value(exp, "+ position", "position scheme") == ("learned" if run == "gpt" else "rope")
