"""How big a GPT is — parameters, memory, FLOPs — and how big it should be for its data (scaling)."""

from __future__ import annotations

import functools
import importlib.util
import math
from typing import Any

import torch

from scratchllm.explain.blocks import CHAR_VOCAB, _gpt_config, preset_config
from scratchllm.explain.context import Context, save_picture
from scratchllm.explain.result import Explanation

#: Compute-optimal training tokens per parameter (Hoffmann et al. 2022, "Chinchilla": ~20).
TOKENS_PER_PARAM = 20


@functools.cache
def preset_params(name: str) -> int:
    """Parameters of a preset's GPT (see :func:`~scratchllm.explain.blocks.preset_config`)."""
    return _meta_gpt(preset_config(name)).num_params()


def _meta_gpt(cfg: Any) -> Any:
    from scratchllm.model.gpt import GPTModel

    with torch.device("meta"):  # shapes only: even GPT-2 XL costs nothing
        return GPTModel(cfg)


def _component(name: str) -> str:
    if name.startswith("tok_emb"):
        return "token embedding"
    if name.startswith("pos_emb"):
        return "position embedding"
    if ".attn." in name:
        return "attention"
    if ".ffn." in name or ".moe." in name:
        return "feed-forward"
    if ".norm" in name:
        return "block norms"
    if name.startswith("final_norm"):
        return "final norm"
    return "output head"


def components(model: Any) -> list[dict[str, Any]]:
    """Parameters grouped by what they do, each tensor counted once (a tied head counts as 0)."""
    order = [
        "token embedding",
        "position embedding",
        "attention",
        "feed-forward",
        "block norms",
        "final norm",
        "output head",
    ]
    counts: dict[str, int] = {}
    shapes: dict[str, list[str]] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        key = _component(name)
        tied = id(p) in seen
        seen.add(id(p))
        counts[key] = counts.get(key, 0) + (0 if tied else p.numel())
        if not name.startswith("blocks.") or name.startswith("blocks.0."):
            shapes.setdefault(key, []).append("x".join(map(str, p.shape)) + (" (tied)" if tied else ""))
    total = sum(counts.values())
    L = model.config.n_layer
    rows = []
    for k in order:
        if k not in counts:
            continue
        shape = " + ".join(shapes[k])
        if k in ("attention", "feed-forward", "block norms"):
            shape = f"{L} x ({shape})"
        rows.append(
            {
                "component": k,
                "shapes": shape,
                "parameters": counts[k],
                "share %": round(100 * counts[k] / total, 2),
                "fp32 MiB": round(counts[k] * 4 / 2**20, 2),
            }
        )
    return rows


def _gpt2_like(cfg: Any) -> bool:
    return (
        cfg.activation in ("gelu", "gelu_erf", "relu")
        and cfg.norm == "layernorm"
        and cfg.bias
        and cfg.qkv_bias in (None, True)
        and cfg.n_kv_head in (None, cfg.n_head)
        and cfg.ffn_hidden in (None, 4 * cfg.n_embd)
        and cfg.n_experts == 0
    )


def gpt(ctx: Context) -> Explanation:
    cfg, source = _gpt_config(ctx)
    model = _meta_gpt(cfg)
    N = model.num_params()
    L, C, V, T = cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.context_length
    exp = Explanation(
        "gpt",
        "where a GPT's parameters, memory and compute go",
        f"scratchllm.model.gpt.GPTModel with the config of {source} (meta device: shapes only)",
    )
    rows = components(model)
    s = exp.step(
        "Parameters by component",
        f"{L} layers, width {C}, {cfg.n_head} heads, vocabulary {V:,}, context {T:,}. Every block has an "
        "attention (qkv and output projection) and a feed-forward network (expand, non-linearity, "
        "project back), each with a norm in front. The embedding tables sit at the two ends.",
    ).value(
        "config",
        {
            "n_layer": L,
            "n_embd": C,
            "n_head": cfg.n_head,
            "vocab_size": V,
            "context_length": T,
            "pos_emb": cfg.pos_emb,
            "norm": cfg.norm,
            "activation": cfg.activation,
            "tie_weights": cfg.tie_weights,
        },
    )
    s.value("components", rows).value("total", N)
    s.check("the components add up to GPTModel.num_params()", sum(r["parameters"] for r in rows) == N)
    if _gpt2_like(cfg):
        block = (
            sum(
                r["parameters"]
                for r in rows
                if r["component"] in ("attention", "feed-forward", "block norms")
            )
            // L
        )
        s.value("per block: 12 C^2 + 13 C", 12 * C * C + 13 * C)
        s.check("every block has 12 C^2 + 13 C parameters (GPT-2 layout)", block == 12 * C * C + 13 * C)

    kv_per_token = 2 * L * cfg.kv_heads * cfg.head_dim * 4
    s = exp.step(
        "Memory",
        "Weights take 4 bytes each in float32, 2 in bfloat16. Training with AdamW keeps, per "
        "parameter, the weight, its gradient and two moment estimates: 16 bytes in float32, before "
        "activations. Generating with a KV cache stores a key and a value vector per layer for every "
        "token of context.",
    )
    s.value("weights fp32 (MiB)", N * 4 / 2**20).value("weights bf16 (MiB)", N * 2 / 2**20)
    s.value("training, AdamW fp32, without activations (MiB)", N * 16 / 2**20)
    s.value("KV cache per token, fp32 (KiB)", kv_per_token / 1024)
    s.value(f"KV cache for the full context of {T:,} tokens, batch 1 (MiB)", kv_per_token * T / 2**20)

    fwd = model.estimate_flops_per_token(training=False)
    train = model.estimate_flops_per_token(training=True)
    n_matmul = model.num_params(exclude_embeddings=True) + V * C
    s = exp.step(
        "FLOPs per token",
        "A matmul with a weight matrix costs 2 FLOPs per weight per token (a multiply and an add), so a "
        "forward pass is about 2N for the N weights used in matmuls (the output head counts, the "
        "embedding lookups do not), plus attention's own two T x T x head_dim matmuls per head, "
        f"4 L C T. Training (forward + backward) costs three times that: the '6N' rule. At T = {T:,}:",
    )
    s.value("N in matmuls (non-embedding + head)", n_matmul)
    s.value("forward: 2N + 4 L C T", fwd).value("training: 3 x forward", train)
    if cfg.n_experts == 0:
        s.check("forward == 2N + 4 L C T", math.isclose(fwd, 2 * n_matmul + 4 * L * C * T))
    s.check("training == 3 x forward", math.isclose(train, 3 * fwd))
    s.value("share of attention's T x T matmuls in the forward", 4 * L * C * T / fwd)
    return exp


# ----------------------------------------------------------------------------- scaling


def recipe_tokens(preset: dict[str, Any], model_cfg: Any) -> int | None:
    """Training tokens of a preset's train section (steps x batch x window), or None without one."""
    from scratchllm.train.config import TrainConfig

    if "train" not in preset:
        return None
    tc = TrainConfig(**preset["train"])
    return (
        tc.max_steps * tc.batch_size * tc.grad_accum_steps * (tc.context_length or model_cfg.context_length)
    )


def _run_tokens(loaded: Any) -> int | None:
    from scratchllm.train.config import TrainConfig

    train = loaded.config.get("train") if isinstance(loaded.config, dict) else None
    if not isinstance(train, dict):
        return None
    try:
        tc = TrainConfig(**train)
    except (TypeError, Exception):  # a train section from another kind of run
        return None
    return (
        tc.max_steps
        * tc.batch_size
        * tc.grad_accum_steps
        * (tc.context_length or loaded.model.config.context_length)
    )


def scaling(ctx: Context) -> Explanation:
    from scratchllm.model.config import PRESETS

    exp = Explanation(
        "scaling",
        "how many tokens a model of N parameters should see",
        "the presets of scratchllm.model.config (sizes from GPTModel on the meta device)",
    )
    rows = []
    for name, spec in PRESETS.items():
        cfg = preset_config(name)
        n = preset_params(name)
        d = recipe_tokens(spec, cfg)
        rows.append(
            {
                "preset": name,
                "parameters": n,
                "optimal tokens (20 N)": TOKENS_PER_PARAM * n,
                "compute 6 N D (FLOPs)": float(6 * n * TOKENS_PER_PARAM * n),
                "recipe tokens": d if d is not None else "-",
                "recipe tokens / parameter": round(d / n, 2) if d is not None else "-",
            }
        )
    s = exp.step(
        "The rule of thumb",
        "Hoffmann et al. (2022, 'Chinchilla') trained hundreds of models and found that for a fixed "
        "compute budget, loss is lowest when parameters and training tokens grow together: about 20 "
        "tokens per parameter. Training compute is about 6 N D FLOPs (see 'explain gpt'). Presets "
        f"without a vocabulary of their own are counted with a {CHAR_VOCAB}-character one.",
    ).value("presets", rows)
    s.check(
        "optimal tokens == 20 x parameters",
        all(r["optimal tokens (20 N)"] == 20 * r["parameters"] for r in rows),
    )

    if ctx.loaded is not None or ctx.preset is not None:
        cfg, source = _gpt_config(ctx)
        n = _meta_gpt(cfg).num_params()
        d = _run_tokens(ctx.loaded) if ctx.loaded is not None else recipe_tokens(PRESETS[ctx.preset], cfg)
        s = (
            exp.step(
                f"Your {'model' if ctx.loaded is not None else 'preset'}",
                "Where it stands against the rule: far below 20 tokens per parameter the model is "
                "under-trained for its size (a smaller one would do better on the same compute); far above, "
                "a bigger model would.",
            )
            .value("source", source)
            .value("parameters", n)
            .value("optimal tokens (20 N)", TOKENS_PER_PARAM * n)
        )
        if d is not None:
            s.value("tokens in its training recipe", d).value("tokens per parameter", d / n)
        else:
            s.value("tokens in its training recipe", "unknown (no train section in its config.json)")

    budgets = []
    for name, c in (("the char-shakespeare recipe", None), ("1e18 FLOPs", 1e18), ("1e21 FLOPs", 1e21)):
        if c is None:
            cfg = preset_config("char-shakespeare")
            c = 6 * preset_params("char-shakespeare") * recipe_tokens(PRESETS["char-shakespeare"], cfg)
        n_opt = math.sqrt(c / (6 * TOKENS_PER_PARAM))
        budgets.append(
            {
                "budget": name,
                "FLOPs": float(c),
                "optimal N": round(n_opt),
                "optimal D": round(TOKENS_PER_PARAM * n_opt),
            }
        )
    s = exp.step(
        "Spending a compute budget",
        "Given C FLOPs, C = 6 N D with D = 20 N gives N = sqrt(C / 120) parameters and D = 20 N tokens.",
    ).value("budgets", budgets)
    s.check(
        "6 x N x D == C for every budget (to rounding)",
        all(math.isclose(6 * b["optimal N"] * b["optimal D"], b["FLOPs"], rel_tol=1e-3) for b in budgets),
    )
    if importlib.util.find_spec("scratchllm.cli.sweep") is not None:
        exp.note("measure the curve on your own data: 'scratchllm sweep --help'")
    else:
        exp.note(
            "to see the trade-off on your own data, train variants on one budget with 'scratchllm compare'"
        )

    if (path := ctx.figure_path("scaling")) is not None:
        from scratchllm.visualize import pyplot

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 5))
        ns = [r["parameters"] for r in rows]
        xs = [min(ns) / 2, max(ns) * 2]
        ax.plot(xs, [TOKENS_PER_PARAM * x for x in xs], "k--", label="20 tokens per parameter")
        for r in rows:
            ax.scatter(r["parameters"], r["optimal tokens (20 N)"], marker="o", color="C0")
            ax.annotate(r["preset"], (r["parameters"], r["optimal tokens (20 N)"]), fontsize=8)
            if r["recipe tokens"] != "-":
                ax.scatter(r["parameters"], r["recipe tokens"], marker="x", color="C3")
                ax.annotate(
                    f"{r['preset']} recipe", (r["parameters"], r["recipe tokens"]), fontsize=8, color="C3"
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters N")
        ax.set_ylabel("training tokens D")
        ax.legend()
        ax.set_title("compute-optimal training tokens vs the presets' recipes")
        save_picture(exp, fig, path, "the presets against the 20-tokens-per-parameter line")
    return exp
