"""The sweep's four pictures (PNG, matplotlib without pyplot: no display, no global state).

* ``loss_vs_compute.png`` — every model size's loss against compute: its longest run's training
  curve (faint) and its final validation loss at each budget (dots), with the frontier through
  the iso-FLOP minima (Kaplan et al. fig. 1 / Hoffmann et al. fig. 2, left).
* ``isoflop.png`` — loss against N at each budget, the fitted parabolas and their minima
  (Hoffmann et al. fig. 3, left).
* ``optimal_nd.png`` — the optimal N* and D* per budget against C, with the fitted power laws of
  approach 2, the optimum of approach 3 and, for scale, Chinchilla's 20 tokens per parameter.
* ``predicted_vs_actual.png`` — the parametric law's predicted loss against the measured one, and
  its residuals against N.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from scratchllm.errors import ScratchLLMError

PLOTS = ("loss_vs_compute.png", "isoflop.png", "optimal_nd.png", "predicted_vs_actual.png")


def _save(fig: Any, path: Path) -> Path:
    from scratchllm.io import atomic_write_bytes

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _colours(n: int, cmap: str = "viridis") -> list[Any]:
    from matplotlib import colormaps

    cm = colormaps[cmap]
    return [cm(0.9 * i / max(1, n - 1)) for i in range(n)]


def _by(points: list[dict[str, Any]], key: str) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = {}
    for p in points:
        out.setdefault(p[key], []).append(p)
    return out


def _learning_curve(run_dir: Path, flops_per_token: float) -> list[tuple[float, float]]:
    from scratchllm.runs import read_metrics

    curve = []
    for e in read_metrics(run_dir / "metrics.jsonl"):
        loss, seen = e.get("loss"), e.get("tokens_seen")
        numbers = isinstance(loss, (int, float)) and isinstance(seen, (int, float))
        if e.get("event") == "train" and numbers and math.isfinite(loss) and seen > 0:
            curve.append((seen * flops_per_token, float(loss)))
    return curve


def plot_loss_vs_compute(doc: dict[str, Any], fit: dict[str, Any], path: Path, out_dir: Path) -> Path:
    from matplotlib.figure import Figure

    points = doc["points"]
    sizes = sorted(_by(points, "size").items(), key=lambda kv: kv[1][0]["N"])
    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    for (name, pts), colour in zip(sizes, _colours(len(sizes))):
        pts = sorted(pts, key=lambda p: p["C"])
        longest = pts[-1]
        curve = _learning_curve(out_dir / longest["run_dir"], longest["flops_per_token"])
        if curve:
            ax.plot(*zip(*curve), color=colour, alpha=0.25, linewidth=0.8)
        ax.plot(
            [p["C"] for p in pts],
            [p["val_loss"] for p in pts],
            "o-",
            color=colour,
            markersize=4,
            label=f"{name} (N={pts[0]['N']:,})",
        )
    frontier = [
        (b["budget"], b["loss_opt"])
        for b in (fit.get("approach2") or {}).get("per_budget", [])
        if b.get("loss_opt") is not None
    ]
    if frontier:
        ax.plot(*zip(*frontier), "k--", linewidth=1.5, label="frontier (iso-FLOP minima)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("loss (nats/token): train curve faint, final val dots")
    ax.set_title("loss against compute, per model size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_isoflop(doc: dict[str, Any], fit: dict[str, Any], path: Path) -> Path:
    from matplotlib.figure import Figure

    n_key = "N" if fit.get("count", "non-embedding") == "non-embedding" else "N_total"
    per_budget = {b["budget"]: b for b in (fit.get("approach2") or {}).get("per_budget", [])}
    budgets = sorted(_by(doc["points"], "budget").items())
    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    for (c, pts), colour in zip(budgets, _colours(len(budgets), "plasma")):
        ns = np.array([p[n_key] for p in pts], dtype=float)
        ax.plot(ns, [p["val_loss"] for p in pts], "o", color=colour, label=f"C = {c:.0e}")
        b = per_budget.get(c) or {}
        coef = b.get("parabola_ln_n")
        if coef:
            x = np.linspace(math.log(ns.min()) - 0.3, math.log(ns.max()) + 0.3, 100)
            ax.plot(np.exp(x), np.polyval(coef, x), "-", color=colour, alpha=0.8)
        n_opt = (b.get("N_opt") or {}).get("value")
        if n_opt is not None and b.get("loss_opt") is not None:
            ax.plot([n_opt], [b["loss_opt"]], "*", color=colour, markersize=14, markeredgecolor="k")
    ax.set_xscale("log")
    ax.set_xlabel(f"parameters N ({fit.get('count', 'non-embedding')})")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("iso-FLOP profiles: loss at fixed compute, parabola minima (*)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _err(entries: list[dict[str, Any]]) -> np.ndarray | None:
    lo, hi = [], []
    for e in entries:
        iv = e.get("interval")
        if not iv:
            return None
        lo.append(max(0.0, e["value"] - iv[0]))
        hi.append(max(0.0, iv[1] - e["value"]))
    return np.array([lo, hi])


def plot_optimal(doc: dict[str, Any], fit: dict[str, Any], path: Path) -> Path:
    from matplotlib.figure import Figure

    from scratchllm.sweep.fit import FlopsMap, parametric_from_fit

    a2 = fit.get("approach2") or {}
    usable = [b for b in a2.get("per_budget", []) if (b.get("N_opt") or {}).get("value") is not None]
    budgets = [float(c) for c in fit.get("budgets") or []]
    cs = np.geomspace(min(budgets) / 2, max(budgets) * 2, 50) if budgets else np.array([])
    flops = FlopsMap([tuple(p) for p in fit["flops_per_token"]]) if fit.get("flops_per_token") else None
    law = parametric_from_fit(fit)
    fig = Figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2)
    for ax, key, exp_key, k_key, label in (
        (axes[0], "N_opt", "a", "k_N", "N* (parameters)"),
        (axes[1], "D_opt", "b", "k_D", "D* (tokens)"),
    ):
        if usable:
            entries = [b[key] for b in usable]
            ax.errorbar(
                [b["budget"] for b in usable],
                [e["value"] for e in entries],
                yerr=_err(entries),
                fmt="o",
                color="tab:blue",
                capsize=3,
                label="approach 2: parabola minima",
            )
        e_val = (a2.get(exp_key) or {}).get("value")
        k_val = (a2.get(k_key) or {}).get("value")
        if e_val is not None and k_val is not None and len(cs):
            ax.plot(cs, k_val * cs**e_val, "-", color="tab:blue", label=f"approach 2 fit: ∝ C^{e_val:.2f}")
        if law is not None and flops is not None and law.has_optimum and len(cs):
            with contextlib.suppress(ScratchLLMError):
                opts = np.array([law.optimum(float(c), flops)[:2] for c in cs])
                col = 0 if key == "N_opt" else 1
                ax.plot(cs, opts[:, col], "--", color="tab:orange", label="approach 3: argmin L(N, D)")
        if len(cs):
            n20 = np.sqrt(cs / (6 * 20))  # C = 6ND with D = 20N
            ax.plot(
                cs, n20 if key == "N_opt" else 20 * n20, ":", color="grey", label="20 tokens/param, C=6ND"
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute C (FLOPs)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_title("optimal model size against compute")
    axes[1].set_title("optimal training tokens against compute")
    return _save(fig, path)


def plot_predicted(doc: dict[str, Any], fit: dict[str, Any], path: Path) -> Path:
    from matplotlib.figure import Figure

    a3 = fit.get("approach3") or {}
    n_key = "N" if fit.get("count", "non-embedding") == "non-embedding" else "N_total"
    pts = [p for p in doc["points"] if p.get("val_loss") is not None]
    fig = Figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2)
    pred = a3.get("predicted")
    if pred and len(pred) == len(pts):
        actual = np.array([p["val_loss"] for p in pts])
        pred = np.array(pred)
        budgets = sorted({p["budget"] for p in pts})
        colours = dict(zip(budgets, _colours(len(budgets), "plasma")))
        for c in budgets:
            idx = [i for i, p in enumerate(pts) if p["budget"] == c]
            axes[0].plot(actual[idx], pred[idx], "o", color=colours[c], label=f"C = {c:.0e}")
            axes[1].plot(
                [pts[i][n_key] for i in idx], np.array(a3["log_residuals"])[idx], "o", color=colours[c]
            )
        lo, hi = float(min(actual.min(), pred.min())), float(max(actual.max(), pred.max()))
        axes[0].plot([lo, hi], [lo, hi], "k-", linewidth=0.8, label="predicted = actual")
        axes[0].legend(fontsize=8)
        axes[1].axhline(0, color="k", linewidth=0.8)
        axes[1].set_xscale("log")
        rms = a3.get("rms_log_residual")
        title = "L = E + A/N^α + B/D^β"
        if rms is not None:
            title += f": rms log residual {rms:.4f}"
        axes[0].set_title(title)
    else:
        axes[0].set_title(a3.get("note", "no parametric fit"))
    axes[0].set_xlabel("measured validation loss")
    axes[0].set_ylabel("predicted loss")
    axes[1].set_xlabel(f"parameters N ({fit.get('count', 'non-embedding')})")
    axes[1].set_ylabel("log(predicted) − log(measured)")
    axes[1].set_title("residuals")
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save(fig, path)


def write_plots(doc: dict[str, Any], fit: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Draw all four pictures into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    return [
        plot_loss_vs_compute(doc, fit, out_dir / PLOTS[0], out_dir),
        plot_isoflop(doc, fit, out_dir / PLOTS[1]),
        plot_optimal(doc, fit, out_dir / PLOTS[2]),
        plot_predicted(doc, fit, out_dir / PLOTS[3]),
    ]
