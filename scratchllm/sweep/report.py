"""The sweep as text: a Markdown report (sweep.md) and the lines ``--plan`` prints.

Numbers carry their units and conventions (non-embedding N, C with the attention term) and every
fitted constant its bootstrap interval, next to what the papers found.
"""

from __future__ import annotations

import math
from typing import Any

#: Published values the report puts beside the fit (Hoffmann et al. 2022 table 2 and eq. 10;
#: Kaplan et al. 2020 eqs. 1.1, 1.2 and 6.1).
PUBLISHED = {
    "a": ("0.50 (approach 2: 0.49, approach 3: 0.46)", "0.73"),
    "b": ("0.50 (approach 2: 0.51, approach 3: 0.54)", "0.27"),
    "alpha": ("0.34", "α_N = 0.076 (no E term)"),
    "beta": ("0.28", "α_D = 0.095 (no E term)"),
    "E": ("1.69 nats/token (BPE tokens)", "-"),
    "tokens_per_param": ("≈ 20", "falls with C (D/N ∝ C^-0.46)"),
}


def num(x: Any, digits: int = 3) -> str:
    """Compact number: ``1.23e+05`` style for big/small values, plain otherwise, ``-`` for None."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, int) and abs(x) < 10**6:
        return f"{x:,}"
    x = float(x)
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-2):
        mantissa, exp = f"{x:.{digits - 1}e}".split("e")
        return f"{mantissa}e{int(exp)}"
    if abs(x) >= 10 ** (digits - 1):
        return f"{x:,.0f}"
    return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}"


def with_interval(entry: dict[str, Any] | None, digits: int = 3) -> str:
    """``value [lo, hi]`` from a ``{"value", "interval"}`` entry."""
    if not entry or entry.get("value") is None:
        return "-"
    text = num(entry["value"], digits)
    iv = entry.get("interval")
    if iv:
        text += f" [{num(iv[0], digits)}, {num(iv[1], digits)}]"
    return text


def _level(fit: dict[str, Any]) -> str:
    lv = float((fit.get("bootstrap") or {}).get("level", 0.8))
    lo, hi = 50 * (1 - lv), 50 * (1 + lv)
    return f"{round(lv * 100)} % bootstrap interval ({lo:g}th–{hi:g}th percentile)"


def markdown_report(doc: dict[str, Any], fit: dict[str, Any]) -> str:
    """The whole sweep as Markdown: points, both fits, and the papers' values beside them."""
    s = doc.get("settings", {})
    lines = [
        "# Scaling-law sweep",
        "",
        f"data `{s.get('data')}` ({num(doc.get('data', {}).get('train_tokens'))} training tokens), "
        f"preset `{s.get('preset')}`, seed {s.get('seed')}, batch {doc.get('batch_size')} × "
        f"{doc.get('context_length')} tokens, {len(doc.get('points', []))} points, "
        f"{num(doc.get('seconds'))} s of training.",
        "",
        f"* **N** = {doc['conventions']['N']}; fits use **{fit.get('count', 'non-embedding')}** N.",
        f"* **C** = {doc['conventions']['C']}.",
        f"* **loss** = {doc['conventions']['loss']}. Intervals: {_level(fit)}.",
        "",
        "## Points",
        "",
        "| budget C | size | N | D (tokens) | tokens/param | epochs | C used | 6ND | val loss | time (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in doc.get("points", []):
        lines.append(
            f"| {num(p['budget'])} | {p['size']} | {num(p['N'])} | {num(p['D'])} | "
            f"{num(p['tokens_per_param'])} | {num(p.get('epochs'))} | {num(p['C'])} | {num(p['C_6ND'])} | "
            f"{p['val_loss']:.4f} | {num(p['seconds'])} |"
        )

    a2 = fit.get("approach2") or {}
    lines += [
        "",
        "## Approach 2: iso-FLOP parabolas",
        "",
        "A parabola in ln N through each budget's losses; its vertex is that budget's optimal size.",
        "",
        "| budget C | sizes | N* | D* | tokens/param | loss at N* | minimum inside the sizes? |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for b in a2.get("per_budget", []):
        inside = "yes" if b.get("bracketed") else f"no: {b.get('note', 'extrapolated')}"
        lines.append(
            f"| {num(b['budget'])} | {b['points']} | {with_interval(b['N_opt'])} | "
            f"{with_interval(b['D_opt'])} | {with_interval(b['tokens_per_param'])} | "
            f"{num(b.get('loss_opt'), 4)} | {inside} |"
        )
    lines += [
        "",
        f"* N* = {with_interval(a2.get('k_N'))} · C^**a**, a = **{with_interval(a2.get('a'))}**",
        f"* D* = {with_interval(a2.get('k_D'))} · C^**b**, b = **{with_interval(a2.get('b'))}**",
    ]
    if a2.get("note"):
        lines.append(f"* {a2['note']}")

    a3 = fit.get("approach3") or {}
    lines += ["", "## Approach 3: L(N, D) = E + A / N^α + B / D^β", ""]
    if "E" in a3:
        lines += [
            "Huber loss (δ = 1e-3) on log-loss residuals, L-BFGS from a grid of initial values "
            f"({a3.get('converged_starts')}/{a3.get('starts')} starts converged).",
            "",
            "| constant | fitted | interval |",
            "|---|---:|---:|",
        ]
        for key, label in (("E", "E"), ("A", "A"), ("B", "B"), ("alpha", "α"), ("beta", "β")):
            e = a3[key]
            iv = e.get("interval")
            lines.append(
                f"| {label} | {num(e['value'], 4)} | {f'[{num(iv[0])}, {num(iv[1])}]' if iv else '-'} |"
            )
        lines += [
            "",
            f"implied exponents under C ∝ ND: a = β/(α+β) = {with_interval(a3.get('a'))}, "
            f"b = α/(α+β) = {with_interval(a3.get('b'))}; residuals: rms {num(a3.get('rms_log_residual'))}, "
            f"max {num(a3.get('max_abs_log_residual'))} (in log loss).",
            "",
            "| budget C | N* | D* | tokens/param | predicted loss |",
            "|---:|---:|---:|---:|---:|",
        ]
        for b in a3.get("per_budget", []):
            lines.append(
                f"| {num(b['budget'])} | {with_interval(b['N_opt'])} | {with_interval(b['D_opt'])} | "
                f"{with_interval(b['tokens_per_param'])} | {num(b['loss_opt'], 4)} |"
            )
    else:
        lines.append(a3.get("note", "not fitted"))

    top = (a2.get("per_budget") or [{}])[-1]
    lines += [
        "",
        "## Next to the papers",
        "",
        "| | this sweep | Chinchilla (Hoffmann et al. 2022) | Kaplan et al. (2020) |",
        "|---|---:|---|---|",
    ]
    rows = (
        ("a (N* ∝ C^a), approach 2", a2.get("a"), "a"),
        ("b (D* ∝ C^b), approach 2", a2.get("b"), "b"),
        ("α, approach 3", a3.get("alpha"), "alpha"),
        ("β, approach 3", a3.get("beta"), "beta"),
        ("E (nats/token), approach 3", a3.get("E"), "E"),
        ("tokens/param at the largest budget, approach 2", top.get("tokens_per_param"), "tokens_per_param"),
    )
    for label, entry, key in rows:
        lines.append(f"| {label} | {with_interval(entry)} | {PUBLISHED[key][0]} | {PUBLISHED[key][1]} |")
    lines += [
        "",
    ]
    return "\n".join(lines)


def nearest_size(fit: dict[str, Any], n: float) -> dict[str, Any] | None:
    """The ladder size whose N is closest to ``n`` in log space (None when the fit lists none)."""
    key = "n_params" if fit.get("count", "non-embedding") == "non-embedding" else "n_params_total"
    ladder = [r for r in fit.get("ladder") or [] if r.get(key)]
    if not ladder or n <= 0:
        return None
    return min(ladder, key=lambda r: abs(math.log(r[key] / n)))


def plan_lines(plan: dict[str, Any], fit: dict[str, Any], source: str) -> list[str]:
    """What ``scratchllm sweep --plan`` prints for one budget."""
    c = plan["budget"]
    kind = "non-embedding" if plan.get("count") == "non-embedding" else "total"
    lines = [f"compute budget C = {num(c)} training FLOPs (fit: {source})"]
    pct = round(plan["level"] * 100)
    for key, title in (
        ("approach2", "approach 2 (iso-FLOP power laws)"),
        ("approach3", "approach 3 (L(N, D) fit)"),
    ):
        r = plan.get(key)
        if not r:
            continue
        lines.append(
            f"  {title}: N* = {with_interval(r['N_opt'])} {kind} params, D* = {with_interval(r['D_opt'])} "
            f"tokens, {with_interval(r['tokens_per_param'])} tokens/param"
            + (f", predicted val loss {r['loss']:.3f}" if r.get("loss") is not None else "")
        )
    lines.append(f"  [intervals: {pct} % bootstrap]")
    best = plan.get("approach2") or plan.get("approach3")
    size = nearest_size(fit, best["N_opt"]["value"]) if best else None
    if size is not None:
        key = "n_params" if kind == "non-embedding" else "n_params_total"
        tokens = c / size["flops_per_token"]
        steps = tokens / max(1, int(fit.get("tokens_per_step") or 1))
        lines.append(
            f"  nearest ladder size: {size['size']} ({size[key]:,} params): {num(tokens)} tokens = "
            f"{steps:,.0f} steps of {fit.get('tokens_per_step')} tokens at this budget"
        )
    ext = plan.get("extrapolation", 1.0)
    if ext > 1.5:
        lo, hi = plan["fitted_budgets"]
        lines.append(
            f"  note: the fit saw budgets {num(lo)}–{num(hi)}; this one is {ext:,.1f}x outside (extrapolated)"
        )
    return lines
