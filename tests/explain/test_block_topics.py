"""layernorm, activations, residual, prenorm, weight-tying, gpt, scaling: formulas written out."""

from __future__ import annotations

import math

import torch
from explain_helpers import assert_checks_hold, close, value


def test_layernorm_rmsnorm_batchnorm(explain) -> None:
    exp = explain("layernorm")
    assert_checks_hold(exp)
    x = value(exp, "Before", "x (first 8 features)")  # 4 tokens x 6 features: all of them
    eps = 1e-5
    ln = []
    for row in x:
        mean = sum(row) / len(row)
        var = sum((v - mean) ** 2 for v in row) / len(row)
        ln.append([(v - mean) / math.sqrt(var + eps) for v in row])
    assert close(value(exp, "LayerNorm", "LayerNorm(x) (first 8 features)"), ln)
    rms = [[v / math.sqrt(sum(u * u for u in row) / len(row) + eps) for v in row] for row in x]
    assert close(value(exp, "RMSNorm", "RMSNorm(x) (first 8 features)"), rms)
    cols = list(zip(*x))
    bn_cols = []
    for col in cols:
        mean = sum(col) / len(col)
        var = sum((v - mean) ** 2 for v in col) / len(col)
        bn_cols.append([(v - mean) / math.sqrt(var + eps) for v in col])
    assert close(
        value(exp, "Batch norm: across the batch instead", "BatchNorm(x) (first 8 features)"),
        [list(r) for r in zip(*bn_cols)],
    )
    assert close(value(exp, "Before", "per token")["mean"], [sum(r) / len(r) for r in x])


def test_layernorm_on_a_users_model(explain, runs) -> None:
    for run in ("gpt", "gpt-rope", "bert"):
        exp = explain("layernorm", model=runs[run])
        assert_checks_hold(exp)
        assert "Your model's learned gain and bias" in [s.title for s in exp.steps]


def test_activations_values(explain) -> None:
    exp = explain("activations")
    assert_checks_hold(exp)
    for row in value(exp, "The curves, as numbers", "values"):
        x = row["x"]
        assert close(row["ReLU"], max(0.0, x))
        assert close(row["GELU (exact, erf)"], 0.5 * x * (1 + math.erf(x / math.sqrt(2))))
        assert close(
            row["GELU (tanh, GPT-2)"],
            0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
        )
        assert close(row["SiLU / swish"], x / (1 + math.exp(-x)))
    step = exp.find("SwiGLU (PaLM, Llama)")
    gate, up = step.values["gate(x)"], step.values["up(x)"]
    assert close(
        step.values["silu(gate) * up"],
        [[g / (1 + math.exp(-g)) * u for g, u in zip(gr, ur)] for gr, ur in zip(gate, up)],
    )
    hidden = 64 * math.ceil(int(8 * 768 / 3) / 64)
    assert value(exp, "Same budget, three matrices", "parameters") == {
        "gelu": 2 * 768 * 3072,
        "swiglu": 3 * 768 * hidden,
    }
    assert (exp.out_dir / "activations.png").is_file()


def test_residual_gradients(explain) -> None:
    exp = explain("residual")
    assert_checks_hold(exp)

    def gelu(t):
        return 0.5 * t * (1 + torch.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3)))

    for sizes, title in (
        ([3, 3, 3, 3, 3, 1], "the book's 5 layers of width 3"),
        ([3] + [8] * 12 + [1], "13 layers of width 8"),
    ):
        step = exp.find(f"Gradients per layer: {title}")
        for shortcut, name in (
            (False, "mean |grad| without shortcuts"),
            (True, "mean |grad| with shortcuts"),
        ):
            torch.manual_seed(0)
            layers = [torch.nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]
            x = torch.tensor([1.0, 0.0, -1.0])
            for lin in layers:
                out = gelu(lin(x))
                x = x + out if shortcut and out.shape == x.shape else out
            (x**2).mean().backward()
            grads = [float(lin.weight.grad.abs().mean()) for lin in layers]
            assert all(
                abs(a - b) <= 1e-6 * max(1.0, abs(b)) + 1e-12 for a, b in zip(step.values[name], grads)
            ), name
        assert (exp.out_dir / f"residual-{len(sizes) - 1}-layers.png").is_file()


def test_prenorm_stream_and_gradients(explain) -> None:
    exp = explain("prenorm")
    assert_checks_hold(exp)
    from scratchllm.model.config import GPTConfig
    from scratchllm.model.gpt import GPTModel

    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=64, context_length=16, n_layer=8, n_head=2, n_embd=32))
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 64, (4, 16), generator=g)
    with torch.no_grad():
        x = model.tok_emb(idx) + model.pos_emb(torch.arange(16))
        rms = []
        for b in model.blocks:  # pre-norm, written out
            x = x + b.attn(b.norm1(x))
            x = x + b.ffn(b.norm2(x))
            rms.append(float(x.pow(2).mean(-1).sqrt().mean()))
    step = exp.find("The residual stream by depth")
    assert close(step.values["pre-norm RMS"], rms, tol=1e-6)
    assert close(step.values["post-norm RMS"], [1.0] * 8, tol=1e-3)
    grads = exp.find("Gradient norm per block at initialisation").values
    assert all(v > 0 for v in grads["pre-norm"] + grads["post-norm"])
    assert (exp.out_dir / "prenorm.png").is_file()


def test_weight_tying_counts(explain) -> None:
    exp = explain("weight-tying")
    assert_checks_hold(exp)
    step = exp.find("Parameters with and without tying")
    assert step.values["parameters, tied"] == 124_439_808  # GPT-2 small
    assert step.values["parameters, untied"] == 124_439_808 + 50257 * 768
    assert step.values["saved"] == 50257 * 768


def test_gpt_components_memory_flops(explain) -> None:
    exp = explain("gpt")
    assert_checks_hold(exp)
    V, C, L, T = 50257, 768, 12, 1024
    rows = {r["component"]: r["parameters"] for r in value(exp, "Parameters by component", "components")}
    assert rows == {
        "token embedding": V * C,
        "position embedding": T * C,
        "attention": L * (C * 3 * C + 3 * C + C * C + C),
        "feed-forward": L * (C * 4 * C + 4 * C + 4 * C * C + C),
        "block norms": L * 4 * C,
        "final norm": 2 * C,
        "output head": 0,
    }
    N = sum(rows.values())
    assert N == 124_439_808
    mem = exp.find("Memory").values
    assert close(mem["weights fp32 (MiB)"], N * 4 / 2**20) and close(
        mem["training, AdamW fp32, without activations (MiB)"], N * 16 / 2**20
    )
    assert close(mem["KV cache per token, fp32 (KiB)"], 2 * L * C * 4 / 1024)
    flops = exp.find("FLOPs per token").values
    n_matmul = N - V * C - T * C + V * C
    assert flops["N in matmuls (non-embedding + head)"] == n_matmul
    assert flops["forward: 2N + 4 L C T"] == 2 * n_matmul + 4 * L * C * T
    assert flops["training: 3 x forward"] == 3 * (2 * n_matmul + 4 * L * C * T)


def test_gpt_other_presets_and_models(explain, runs) -> None:
    exp = explain("gpt", preset="char-shakespeare")
    assert_checks_hold(exp)
    assert value(exp, "Parameters by component", "config")["vocab_size"] == 65
    for run in ("gpt", "gpt-rope", "moe", "lora"):
        assert_checks_hold(explain("gpt", model=runs[run]))
        assert_checks_hold(explain("weight-tying", model=runs[run]))


def test_scaling_rule(explain) -> None:
    exp = explain("scaling")
    assert_checks_hold(exp)
    for r in value(exp, "The rule of thumb", "presets"):
        assert r["optimal tokens (20 N)"] == 20 * r["parameters"]
        assert close(
            r["compute 6 N D (FLOPs)"],
            6 * r["parameters"] * 20 * r["parameters"],
            tol=1e-3 * r["compute 6 N D (FLOPs)"],
        )
        if r["preset"] == "char-shakespeare":
            assert r["recipe tokens"] == 420 * 32 * 64
    for b in value(exp, "Spending a compute budget", "budgets"):
        assert abs(b["optimal N"] - math.sqrt(b["FLOPs"] / 120)) <= 1
    assert (exp.out_dir / "scaling.png").is_file()


def test_scaling_with_a_preset(explain) -> None:
    exp = explain("scaling", preset="tiny")
    step = exp.find("Your preset")
    assert step.values["tokens in its training recipe"] == 200 * 8 * 64
    assert close(step.values["tokens per parameter"], 200 * 8 * 64 / step.values["parameters"])
