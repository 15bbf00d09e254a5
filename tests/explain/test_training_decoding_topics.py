"""loss, optimizer, decoding, kv-cache, lora: the printed numbers recomputed by hand."""

from __future__ import annotations

import math

import torch
from explain_helpers import assert_checks_hold, close, value

from scratchllm.explain.context import tiny_lm


def _logits(text: str, only_last: bool = False) -> tuple[list[int], torch.Tensor]:
    lm = tiny_lm(0)
    ids = lm.tokenizer.encode(text)
    with torch.no_grad():
        return ids, lm.model(torch.tensor([ids]))[0].double()


def test_loss_by_hand(explain) -> None:
    exp = explain("loss")
    assert_checks_hold(exp)
    ids, logits = _logits("Every effort moves you forward.")
    inputs_logits = logits[:-1]
    rows = value(exp, "Softmax, then -log p(target)", "per position")
    nll = []
    for t in range(len(ids) - 1):
        row = inputs_logits[t].tolist()
        m = max(row)
        p = math.exp(row[ids[t + 1]] - m) / sum(math.exp(v - m) for v in row)
        nll.append(-math.log(p))
        assert abs(rows[t]["p(target)"] - p) < 1e-5 and abs(rows[t]["-log p"] + math.log(p)) < 1e-4
    loss = sum(nll) / len(nll)
    step = exp.find("The loss is the mean")
    assert abs(step.values["mean of -log p, by hand"] - loss) < 1e-4
    step = exp.find("Perplexity, and the uniform guess")
    assert abs(step.values["perplexity = exp(loss)"] - math.exp(step.values["loss"])) < 1e-6 * math.exp(loss)
    assert abs(step.values["uniform guess: ln(vocab)"] - math.log(104)) < 1e-12
    assert step.values["loss"] < math.log(104)  # the tiny model learned something in its few seconds


def test_optimizer_by_hand(explain) -> None:
    exp = explain("optimizer")
    assert_checks_hold(exp)
    traj = value(exp, "Adam + L2 vs AdamW: decay on one parameter", "w after each step")
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    for wd in (0.1, 0.01):
        assert close(traj[f"AdamW, decay {wd}"], [(1 - lr * wd) ** t for t in range(6)])
        w, m, v, expected = 1.0, 0.0, 0.0, [1.0]
        for t in range(1, 6):  # Adam with L2: the decay enters the gradient, then gets normalised
            g = wd * w
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            w -= lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
            expected.append(w)
        assert close(traj[f"Adam + L2, decay {wd}"], expected)
    lr0, warm, total = 6e-3, 30, 420
    for key, got in value(exp, "Warm-up, then cosine decay", "lr at step").items():
        t = int(key.split()[1])
        want = (
            lr0 * (t + 1) / warm
            if t < warm
            else lr0 / 10
            + 0.5 * (1 + math.cos(math.pi * min(t - warm, total - warm) / (total - warm))) * (lr0 - lr0 / 10)
        )
        assert abs(got - want) < 1e-12, key
    clip = exp.find("Gradient clipping").values
    assert abs(clip["norm after"] - clip["norm before"] / 2) < 1e-4 * clip["norm before"]
    counts = value(exp, "Which parameters decay", "counts")
    from scratchllm.explain.context import TINY_LM_CONFIG

    torch.manual_seed(0)
    from scratchllm.model.config import GPTConfig
    from scratchllm.model.gpt import GPTModel

    m = GPTModel(GPTConfig(vocab_size=104, **TINY_LM_CONFIG))
    assert counts["decayed tensors"] == sum(p.dim() >= 2 for p in m.parameters())
    assert (exp.out_dir / "optimizer.png").is_file()


def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def test_decoding_by_hand(explain) -> None:
    exp = explain("decoding")
    assert_checks_hold(exp)
    ids, logits = _logits("The function ")
    row = logits[-1].tolist()
    probs = _softmax(row)
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    top = value(exp, "The next-token distribution", "top 10 of 104")
    assert [r["id"] for r in top] == order[:10] and close(
        [r["p"] for r in top], [probs[i] for i in order[:10]]
    )
    assert close(
        value(exp, "The next-token distribution", "entropy (nats)"),
        -sum(p * math.log(p) for p in probs),
        tol=1e-4,
    )
    assert value(exp, "Greedy: always the most likely", "greedy token") == top[0]["token"]
    step = exp.find("Temperature")
    for t in (0.5, 2.0):
        pt = _softmax([v / t for v in row])
        assert close([r["p"] for r in step.values[f"T = {t:g}: top 5"]], sorted(pt, reverse=True)[:5])
    kept = value(exp, "Top-k (k = 5)", "kept, renormalised")
    mass = sum(probs[i] for i in order[:5])
    assert close([r["p"] for r in kept], [probs[i] / mass for i in order[:5]])
    cum, n = 0.0, 0
    while cum < 0.9:  # the smallest prefix of the sorted distribution with mass >= 0.9
        cum += probs[order[n]]
        n += 1
    assert value(exp, "Top-p / nucleus (p = 0.9)", "tokens kept") == n
    assert close(value(exp, "Top-p / nucleus (p = 0.9)", "their mass before renormalising"), cum)
    conts = value(exp, "The continuations", "continuations")
    assert [c["strategy"] for c in conts][0] == "greedy" and all(c["continuation"] for c in conts)
    assert (exp.out_dir / "decoding.png").is_file()


def test_decoding_on_a_users_model(explain, runs) -> None:
    assert_checks_hold(explain("decoding", model=runs["gpt-rope"], text="Hello"))


def test_kv_cache(explain, runs) -> None:
    exp = explain("kv-cache")
    assert_checks_hold(exp)
    step = exp.find("What the cache holds")
    L, B, H, S, D = step.values["keys shape"]
    assert step.values["bytes"] == 2 * L * B * H * S * D * 4
    t = exp.find("Time per token").values
    assert t["token positions processed"]["without cache"] == sum(64 + i for i in range(64))
    assert close(
        t["speed-up"],
        t["ms per token"]["without cache"] / t["ms per token"]["with cache"],
        tol=1e-9 * t["speed-up"],
    )
    assert value(exp, "Same logits with and without the cache", "max |logits difference|") < 1e-4
    for run in ("gpt-rope", "moe"):  # grouped-query heads + RoPE; Mixture-of-Experts
        assert_checks_hold(explain("kv-cache", model=runs[run]))


def test_lora_counts_and_merge(explain, runs) -> None:
    exp = explain("lora")
    assert_checks_hold(exp)
    for row in value(exp, "Parameter counts", "blocks.0.attn.qkv (192 x 64)"):
        assert row["LoRA r (in + out)"] == row["r"] * (64 + 192) and row["full W in x out"] == 64 * 192
    per_rank = 12 * (
        (768 + 3 * 768) + (768 + 768) + (768 + 4 * 768) + (4 * 768 + 768)
    )  # qkv, attn.proj, fc, ffn.proj
    for row in value(exp, "Parameter counts", "GPT-2 small, targets qkv, proj, fc"):
        assert row["trainable"] == row["r"] * per_rank and row["total"] == 124_439_808 + row["r"] * per_rank
    assert value(exp, "A frozen weight plus two thin matrices", "max |LoRA layer - base layer| at init") == 0
    assert value(exp, "After a few steps", "rank of the update") <= 4
    for run in ("gpt", "moe", "lora"):  # the lora run merges its own (trained) adapters
        assert_checks_hold(explain("lora", model=runs[run]))
    assert (
        "your model's own trained adapters" in explain("lora", model=runs["lora"]).find("Merging").explanation
    )
