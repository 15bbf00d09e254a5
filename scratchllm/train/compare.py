"""Train several GPT variants on the same data with the same budget, and compare them.

Every variant is the base configuration plus a few config switches (``pos_emb=rope``,
``norm=rmsnorm``, ``n_experts=4``...), trained by the one loop with the same seed, the same data
order and the same number of steps. The comparison is written as

* ``compare.json`` and ``compare.md`` — parameters, final val loss, tokens/s, wall time per variant;
* ``val_loss.png`` — every variant's validation loss against the step, on one plot;
* ``runs/<name>/`` — each variant's ordinary run directory (checkpoints, metrics, loss.png).

A small budget says which variants learn *fastest early on*, not which is best at scale.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError

#: The default line-up: one switch (or one well-known recipe) at a time on top of GPT-2.
DEFAULT_VARIANTS: dict[str, dict[str, str]] = {
    "gpt2": {},
    "sinusoidal": {"pos_emb": "sinusoidal"},
    "rope": {"pos_emb": "rope"},
    "alibi": {"pos_emb": "alibi"},
    "llama-style": {"pos_emb": "rope", "norm": "rmsnorm", "activation": "swiglu", "bias": "false"},
    "post-norm": {"norm_position": "post"},
    "gqa": {"pos_emb": "rope", "n_kv_head": "1"},
    "moe": {"n_experts": "4", "moe_top_k": "2"},
}


def parse_variants(spec: str) -> dict[str, dict[str, str]]:
    """``"name:key=val,key=val;name2:key=val"`` → ``{name: {key: val}}`` (a bare ``name`` = no changes)."""
    variants: dict[str, dict[str, str]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, _, body = part.partition(":")
        name = name.strip()
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ScratchLLMError(f"bad variant name {name!r} in --variants (letters, digits, - _ . only)")
        if name in variants:
            raise ScratchLLMError(f"variant {name!r} is listed twice in --variants")
        changes = {}
        for item in filter(None, (i.strip() for i in body.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ScratchLLMError(f"variant {name!r}: expected key=value, got {item!r}")
            changes[key.strip()] = value.strip()
        variants[name] = changes
    if not variants:
        raise ScratchLLMError("--variants lists no variants; e.g. 'base:;rope:pos_emb=rope'")
    return variants


def _val_curve(run_dir: Path) -> list[tuple[int, float]]:
    curve = []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event.get("event") == "eval" and isinstance(event.get("val_loss"), (int, float)):
            curve.append((int(event["step"]), float(event["val_loss"])))
    return curve


def compare_variants(
    data: str | Path,
    out: str | Path,
    variants: dict[str, dict[str, str]],
    *,
    max_steps: int,
    preset: str | None = "tiny",
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    seed: int | None = None,
    force: bool = False,
    echo: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Train every variant for ``max_steps`` and write the table and plot into ``out``.

    ``overrides`` (``key=value``) apply to every variant, before the variant's own switches.
    Returns one row per variant: ``name, changes, params, val_loss, best_val_loss, tokens_per_s,
    seconds``.
    """
    from scratchllm.io import atomic_write_json, atomic_write_text, ensure_empty_dir
    from scratchllm.train.pretrain import pretrain, setup_pretraining

    say = echo or (lambda msg: None)
    if max_steps < 1:
        raise ScratchLLMError(f"--max-steps must be >= 1 (got {max_steps})")
    ensure_empty_dir(out, force=force, what="comparison directory", create=False)  # fail fast
    # Resolve every variant (config, data, model) before anything is written: a typo in the last
    # variant should neither cost the first ones' training time nor leave a half-made --out.
    # setup_pretraining writes nothing; the models are small by design of a comparison.
    setups = {}
    for name, changes in variants.items():
        # ~10 evaluations per run make the curves; the caller's --set may still change that.
        sets = [f"eval_interval={max(1, max_steps // 10)}", *overrides]
        sets += [*(f"{k}={v}" for k, v in changes.items()), f"max_steps={max_steps}"]
        try:
            setups[name] = setup_pretraining(
                data, Path(out), arch="gpt", preset=preset, config_file=config_file, overrides=sets, seed=seed
            )
        except ScratchLLMError as err:
            raise ScratchLLMError(f"variant {name!r}: {err}") from None
    out = ensure_empty_dir(out, force=force, what="comparison directory")
    rows = []
    for name, changes in variants.items():
        run_dir = out / "runs" / name
        setup = setups.pop(name)  # let each model go once it is trained
        described = ", ".join(f"{k}={v}" for k, v in changes.items()) or "base"
        say(f"[{len(rows) + 1}/{len(variants)}] {name}: {described}")
        t0 = time.perf_counter()
        result = pretrain(setup, run_dir, force=True, progress=False)
        rows.append(
            {
                "name": name,
                "changes": changes,
                "params": setup.model.num_params(),
                "val_loss": result.last_eval.get("val_loss"),
                "best_val_loss": result.best_val_loss,
                "train_loss": result.final_loss,
                "tokens_per_s": round(result.tokens_per_s, 1),
                "seconds": round(time.perf_counter() - t0, 1),
                "val_curve": _val_curve(run_dir),
            }
        )
    atomic_write_json(out / "compare.json", {"data": str(data), "max_steps": max_steps, "variants": rows})
    atomic_write_text(out / "compare.md", markdown_table(rows, max_steps=max_steps))
    plot_val_curves(rows, out / "val_loss.png")
    return rows


def markdown_table(rows: list[dict[str, Any]], *, max_steps: int) -> str:
    """The comparison as a Markdown table, best final val loss first."""

    def fmt(x: Any, spec: str) -> str:
        return format(x, spec) if isinstance(x, (int, float)) else "-"

    ordered = sorted(rows, key=lambda r: r["val_loss"] if r["val_loss"] is not None else float("inf"))
    lines = [
        f"| variant | changes | params | val loss @ {max_steps} | tokens/s | time (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in ordered:
        changes = ", ".join(f"{k}={v}" for k, v in r["changes"].items()) or "(GPT-2 baseline)"
        lines.append(
            f"| {r['name']} | {changes} | {r['params']:,} | {fmt(r['val_loss'], '.4f')} | "
            f"{fmt(r['tokens_per_s'], ',.0f')} | {fmt(r['seconds'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def plot_val_curves(rows: list[dict[str, Any]], path: str | Path) -> None:
    """One plot, one line per variant: validation loss against the training step."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scratchllm.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r["val_curve"]:
            steps, losses = zip(*r["val_curve"], strict=True)
            ax.plot(steps, losses, marker="o", markersize=3, label=r["name"])
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_title("variants on the same data and budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
