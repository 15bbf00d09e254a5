"""Time to quality: how fast ``scratchllm train --preset char-shakespeare`` reaches val loss ≤ 1.88.

    python -m benchmarks.run --only quality            # quick: 30 steps, only checks the pipeline
    python -m benchmarks.run --full --only quality     # the preset as shipped vs the textbook recipe

Everything runs as a user would run it, as child processes, with wall clocks that include Python
and PyTorch start-up:

1. ``scratchllm tokenizer train --kind char`` and ``scratchllm prepare`` on tinyshakespeare (the
   default 10 % validation split: 111,529 val characters);
2. ``scratchllm train --preset char-shakespeare`` (as shipped), then the *textbook recipe*
   (4 layers, 4 heads, emb 128, ctx 64, GPT-2 architecture, batch 12, 2,000 steps, lr 1e-3 cosine,
   no dropout) in the same benchmark run;
3. the time to target is read from the run's ``metrics.jsonl``: the first evaluation whose
   ``val_loss`` ≤ 1.88, converted to wall time since the process started (the wall time of the whole
   command minus the training time that came after that evaluation, so start-up is included);
4. the honest number: the final model's loss on the **whole** val split (``scratchllm eval``, every
   window of the split), which must also be ≤ 1.88;
5. weight-only int8's quality cost on that trained model: the whole-val-split perplexity after
   :func:`scratchllm.model.quantize.quantize_int8` vs fp32.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import SHARED_DATA, Row, results_dir

TARGET = 1.88
SCRATCHLLM = [sys.executable, "-m", "scratchllm"]

#: The recipe every tutorial starts from (nanoGPT-style "baby GPT" scaled to a laptop): GPT-2
#: architecture, and every train key the preset might change set back to the textbook value.
TEXTBOOK = {
    "pos_emb": "learned",
    "norm": "layernorm",
    "activation": "gelu",
    "bias": "true",
    "tie_weights": "true",
    "n_layer": 4,
    "n_head": 4,
    "n_embd": 128,
    "model.context_length": 64,
    "dropout": 0.0,
    "batch_size": 12,
    "train.context_length": 64,
    "grad_accum_steps": 1,
    "max_steps": 2000,
    "lr": 1e-3,
    "min_lr": 1e-4,
    "warmup_steps": 100,
    "weight_decay": 0.1,
    "eval_interval": 250,
    "eval_steps": 20,
}


def _run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def _read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    with open(run_dir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def train_and_time(
    data: Path,
    run_dir: Path,
    overrides: dict[str, Any],
    env: dict[str, str],
    preset: str = "char-shakespeare",
    target: float = TARGET,
) -> dict[str, Any]:
    """Run ``scratchllm train --preset PRESET`` with ``--set`` overrides; time it (to ``target``)."""
    cmd = [*SCRATCHLLM, "train", "--data", str(data), "--out", str(run_dir), "--preset", preset]
    cmd += ["--quiet", "--force"]
    for k, v in overrides.items():
        cmd += ["--set", f"{k}={v}"]
    wall = _run(cmd, env)
    events = _read_metrics(run_dir)
    evals = [e for e in events if e.get("event") == "eval" and "val_loss" in e]
    trains = [e for e in events if e.get("event") == "train"]
    last_elapsed = max(e["elapsed"] for e in events if "elapsed" in e)
    tokens_at = {e["step"]: e["tokens_seen"] for e in trains}
    curve = [
        {
            "step": e["step"],
            "tokens": tokens_at.get(e["step"]),
            "val_loss": round(e["val_loss"], 4),
            "elapsed": e["elapsed"],
        }
        for e in evals
    ]
    hit = next((e for e in evals if e["val_loss"] <= target), None)
    to_target = None if hit is None else wall - (last_elapsed - hit["elapsed"])
    config = json.loads((run_dir / "config.json").read_text())
    return {
        "wall_s": round(wall, 2),
        "to_target_s": None if to_target is None else round(to_target, 2),
        "target_step": None if hit is None else hit["step"],
        "final_val_loss": curve[-1]["val_loss"] if curve else None,
        "tokens_per_s": trains[-1]["tokens_per_s"] if trains else None,
        "train_tokens_per_s_mean": round(sum(e["tokens_per_s"] for e in trains) / max(len(trains), 1), 1),
        "curve": curve,
        "train_loss": [{"step": e["step"], "loss": round(e["loss"], 4)} for e in trains],
        "config": {"model": config.get("model"), "train": config.get("train")},
    }


def full_val(
    run_dir: Path, data: Path, env: dict[str, str], max_batches: int | None = None
) -> tuple[float, float]:
    """(loss over every window of the val split via ``scratchllm eval``, int8 loss of the same).

    ``max_batches`` (of 64 windows) limits both to the first windows (the quick mode's smoke test).
    """
    limit = [] if max_batches is None else ["--max-batches", str(max_batches)]
    r = subprocess.run(
        [*SCRATCHLLM, "eval", "--model", str(run_dir), "--data", str(data), "--json", "--batch-size", "64"]
        + limit,
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    fp32 = json.loads(r.stdout)["val_loss"]

    import copy

    from scratchllm.data.shards import load_shards
    from scratchllm.evaluate.lm import evaluate_lm
    from scratchllm.load import load_model
    from scratchllm.model.quantize import quantize_int8

    model = load_model(run_dir).model
    shards = load_shards(data)
    ctx = model.config.context_length
    q8 = quantize_int8(copy.deepcopy(model))
    int8 = evaluate_lm(q8, shards.val, context_length=ctx, batch_size=64, max_batches=max_batches)["val_loss"]
    return fp32, int8


def prepare_char_shakespeare(tmp: Path, env: dict[str, str]) -> tuple[Path, float]:
    """Char tokenizer + shards of tinyshakespeare under ``tmp/data`` (as a user makes them); the wall
    time it took."""
    text = SHARED_DATA / "tinyshakespeare.txt"
    t_prep = _run(
        [*SCRATCHLLM, "tokenizer", "train", "--kind", "char", "--special-tokens", "--quiet"]
        + ["--input", str(text), "--out", str(tmp / "char.json")],
        env,
    )
    t_prep += _run(
        [*SCRATCHLLM, "prepare", "--tokenizer", str(tmp / "char.json"), "--input", str(text)]
        + ["--out", str(tmp / "data"), "--quiet"],
        env,
    )
    return tmp / "data", t_prep


def run(quick: bool = True) -> list[Row]:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="scratchllm-bench-quality-") as tmp:
        tmp = Path(tmp)
        data, t_prep = prepare_char_shakespeare(tmp, env)
        if quick:
            quick_set = {"max_steps": 30, "eval_interval": 30, "eval_steps": 2, "warmup_steps": 5}
            ours = train_and_time(data, tmp / "preset", quick_set, env)
            peer = train_and_time(data, tmp / "textbook", {**TEXTBOOK, **quick_set}, env)
        else:
            ours = train_and_time(data, tmp / "preset", {}, env)
            peer = train_and_time(data, tmp / "textbook", TEXTBOOK, env)
        val_fp32, val_int8 = full_val(tmp / "preset", data, env, max_batches=4 if quick else None)

    def timing(r: dict[str, Any]) -> float:
        return r["to_target_s"] if r["to_target_s"] is not None else r["wall_s"]

    reached = ours["to_target_s"] is not None and val_fp32 <= TARGET
    rows.append(
        Row(
            name=f"time to val loss ≤ {TARGET}, char-shakespeare preset, tinyshakespeare"
            + (" (quick: 30 steps, no target)" if quick else ""),
            ours=timing(ours),
            peer=timing(peer),
            unit="s wall (incl. start-up)" if not quick else "s wall (30 steps)",
            peer_name="textbook recipe (batch 12, 2,000 steps, lr 1e-3)"
            + ("" if peer["to_target_s"] is not None or quick else ": never reached 1.88, whole run"),
            higher_is_better=False,
            target="" if quick else "< 100 s, val ≤ 1.88 on the whole val split",
            met=None if quick else (reached and timing(ours) < 100),
            extra={
                "preset": ours,
                "textbook": peer,
                "prepare_wall_s": round(t_prep, 2),
                "preset_full_val_loss": round(val_fp32, 4),
                "preset_reached_target": reached,
                "textbook_reached_target": peer["to_target_s"] is not None,
            },
        )
    )
    rows.append(
        Row(
            name="int8 weights: perplexity on tinyshakespeare val, trained preset model"
            + (" (quick: first 256 windows)" if quick else " (whole val split)"),
            ours=math.exp(val_int8),
            peer=math.exp(val_fp32),
            unit="perplexity",
            peer_name="same model, fp32",
            higher_is_better=False,
            target="≤ 1 % worse" if not quick else "",
            met=None if quick else math.exp(val_int8) <= 1.01 * math.exp(val_fp32),
            extra={"val_loss_fp32": round(val_fp32, 5), "val_loss_int8": round(val_int8, 5)},
        )
    )
    curves = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": quick}
    curves.update({"preset": ours["curve"], "textbook": peer["curve"]})
    curves_file = results_dir() / f"quality-curves{'-quick' if quick else ''}.json"
    curves_file.write_text(json.dumps(curves, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    from benchmarks.common import format_table

    print(format_table(run(quick="--full" not in sys.argv)))
