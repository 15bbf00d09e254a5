"""The speedrun ablation: what each modern switch is worth on tinyshakespeare, against nanoGPT.

    python -m benchmarks.run --only speedrun            # quick: 10 steps each, checks the pipeline
    python -m benchmarks.run --full --only speedrun     # the ablation table of docs/guide/speedrun.md

Everything trains as a user would, ``scratchllm train`` as a child process on char-level
tinyshakespeare shards (the same ones as ``bench_quality``), and every number comes from this one
run, so the ratios hold even when other work shares the machine (the load average before and after
each training is recorded):

1. **baseline** — ``--preset char-shakespeare`` as shipped (RoPE, RMSNorm, SwiGLU, no biases,
   AdamW, cosine; 420 steps of batch 32); trained first *and* last, so drift in the machine's load
   shows up as a difference between the two; the ablation compares with their mean;
2. **one switch at a time** on top of that baseline (``--set``): ``optimizer=muon``,
   ``qk_norm=true``, ``activation=relu2``, ``logit_softcap=15``, ``zero_init_proj=true``,
   ``tie_weights=false`` (untied head), ``lr_schedule=wsd``; each row is its final val loss over
   the **whole** val split (the preset's end-of-run evaluation) against the baseline's, and its wall
   time (process start-up included) against the baseline's;
3. **the recipe** — ``--preset speedrun`` (the switches that won, with fewer steps);
4. **nanoGPT** — :mod:`benchmarks.nanogpt_peer`, nanoGPT's README CPU recipe (GPT-2 architecture,
   batch 12, 2,000 iterations, evaluations every 250) as a child process, its final weights scored
   on the same whole val split with ``scratchllm eval``. The target (issue 21): the speedrun preset
   reaches nanoGPT's 2,000-iteration val loss in ≤ 0.5× nanoGPT's wall time;
5. **step speed** at nanoGPT's own config (4 layers, 4 heads, width 128, context 64, batch 12, GPT-2
   architecture, vocab 65), in-process, taking turns: our training step (``GPTModel`` + ``lm_loss``
   + the trainer's fused AdamW, clip 1.0) against nanoGPT's iteration
   (:class:`benchmarks.nanogpt_peer.Trainer`, its batch loading included), 20 steps per turn.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_quality import SCRATCHLLM, prepare_char_shakespeare, train_and_time
from benchmarks.common import Row, time_interleaved

#: (row name, ``--set`` overrides on top of the char-shakespeare preset)
SWITCHES: list[tuple[str, dict[str, Any]]] = [
    ("Muon for the hidden matrices (optimizer=muon)", {"optimizer": "muon"}),
    ("QK-norm (qk_norm=true)", {"qk_norm": "true"}),
    ("ReLU² FFN instead of SwiGLU (activation=relu2)", {"activation": "relu2"}),
    ("logit soft-capping at 15 (logit_softcap=15)", {"logit_softcap": 15}),
    ("zero-initialised projections (zero_init_proj=true)", {"zero_init_proj": "true"}),
    ("untied output head (tie_weights=false)", {"tie_weights": "false"}),
    ("warm-up/stable/decay schedule (lr_schedule=wsd)", {"lr_schedule": "wsd"}),
]
QUICK = {"max_steps": 10, "warmup_steps": 2, "eval_steps": 2}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _train(data: Path, run_dir: Path, overrides: dict[str, Any], env: dict[str, str], preset: str) -> dict:
    before = _load()
    r = train_and_time(data, run_dir, overrides, env, preset=preset)
    return {**r, "load_before": before, "load_after": _load()}


def _nanogpt(data: Path, out: Path, env: dict[str, str], quick: bool) -> dict[str, Any]:
    """nanoGPT's recipe as a child process (wall clock with start-up), scored on the whole val split."""
    cmd = [sys.executable, "-m", "benchmarks.nanogpt_peer", "train", "--data", str(data), "--out", str(out)]
    if quick:
        cmd += ["--max-iters", "10", "--eval-interval", "5", "--eval-iters", "2"]
    before = _load()
    t0 = time.perf_counter()
    r = subprocess.run(
        cmd, capture_output=True, text=True, env=env, check=False, cwd=Path(__file__).parents[1]
    )
    wall = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(f"nanoGPT peer failed ({r.returncode}):\n{r.stderr[-3000:]}")
    log = json.loads(r.stdout.strip().splitlines()[-1])
    limit = ["--max-batches", "4"] if quick else []
    ev = subprocess.run(
        [*SCRATCHLLM, "eval", "--model", str(out), "--data", str(data), "--json", "--batch-size", "64"]
        + limit,
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return {**log, "wall_s": round(wall, 2), "full_val_loss": json.loads(ev.stdout)["val_loss"]} | {
        "load_before": before,
        "load_after": _load(),
    }


def step_speed(steps_per_turn: int = 20, repeat: int = 7) -> dict[str, Any]:
    """Our training step vs nanoGPT's iteration at nanoGPT's CPU config, taking turns (seconds/step)."""
    import tempfile as _tf

    import numpy as np

    from benchmarks.bench_train import _ours_step
    from benchmarks.nanogpt_peer import Recipe, Trainer, our_config

    r = Recipe()
    with _tf.TemporaryDirectory(prefix="scratchllm-bench-nanogpt-") as d:
        ids = np.random.default_rng(0).integers(0, 65, 200_000, dtype=np.uint16)
        ids.tofile(Path(d) / "train.bin")
        ids[:20_000].tofile(Path(d) / "val.bin")
        peer = Trainer(d, 65, r)
        ours, _ = _ours_step(our_config(65, r), r.batch_size, r.block_size, {"lr": 1e-3})

        def ours_block() -> None:
            for _ in range(steps_per_turn):
                ours()

        def peer_block() -> None:
            for _ in range(steps_per_turn):
                peer.iteration()

        t = time_interleaved({"ours": ours_block, "nanogpt": peer_block}, repeat=repeat, warmup=1)
    return {
        k: {"median_s_per_step": v.median / steps_per_turn, "min_s_per_step": v.min / steps_per_turn}
        for k, v in t.items()
    }


def ablation_markdown(baseline: dict, rows: list[dict], nanogpt: dict | None) -> str:
    """The table docs/guide/speedrun.md shows: each switch's val loss and wall time vs the baseline."""
    lines = [
        "| run | val loss (whole split) | Δ vs baseline | wall s | × baseline time | load before → after |",
        "|---|---:|---:|---:|---:|---|",
    ]
    base_loss, base_wall = baseline["final_val_loss"], baseline["wall_s"]
    for r in [{"name": "baseline: char-shakespeare preset (mean of 2)", **baseline}, *rows]:
        lines.append(
            f"| {r['name']} | {r['final_val_loss']:.4f} | {r['final_val_loss'] - base_loss:+.4f} | "
            f"{r['wall_s']:.1f} | {r['wall_s'] / base_wall:.2f} | {r['load_before']} → {r['load_after']} |"
        )
    if nanogpt:
        lines.append(
            f"| nanoGPT CPU recipe (2,000 iterations) | {nanogpt['full_val_loss']:.4f} | "
            f"{nanogpt['full_val_loss'] - base_loss:+.4f} | {nanogpt['wall_s']:.1f} | "
            f"{nanogpt['wall_s'] / base_wall:.2f} | {nanogpt['load_before']} → {nanogpt['load_after']} |"
        )
    return "\n".join(lines) + "\n"


def run(quick: bool = True) -> list[Row]:
    from benchmarks.common import results_dir

    env = {**os.environ, "TQDM_DISABLE": "1"}
    extra = QUICK if quick else {}
    out: list[Row] = []
    suffix = "-quick" if quick else ""
    progress = results_dir() / f"speedrun-runs{suffix}.json"
    done: dict[str, Any] = {"switches": []}

    def save() -> None:  # after every training: a long run stopped half-way still leaves its rows
        progress.write_text(json.dumps(done, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="scratchllm-bench-speedrun-") as tmp:
        tmp = Path(tmp)
        data, _ = prepare_char_shakespeare(tmp, env)
        # The most informative runs first: the baseline, Muon, the recipe, nanoGPT, then the others.
        first = done["baseline_first"] = _train(data, tmp / "base-a", extra, env, "char-shakespeare")
        save()
        order = [0, None, "nanogpt", *range(1, len(SWITCHES))]
        for item in order:
            if item is None:
                speedrun = done["speedrun"] = {
                    "name": "speedrun preset",
                    **_train(data, tmp / "speedrun", extra, env, "speedrun"),
                }
            elif item == "nanogpt":
                nanogpt = done["nanogpt"] = _nanogpt(data, tmp / "nanogpt", env, quick)
            else:
                name, overrides = SWITCHES[item]
                r = _train(data, tmp / f"switch-{item}", {**overrides, **extra}, env, "char-shakespeare")
                done["switches"].append({"name": name, "overrides": overrides, **r})
            save()
        last = done["baseline_last"] = _train(data, tmp / "base-b", extra, env, "char-shakespeare")
        save()
    switched = sorted(done["switches"], key=lambda r: [n for n, _ in SWITCHES].index(r["name"]))
    baseline = {
        "final_val_loss": (first["final_val_loss"] + last["final_val_loss"]) / 2,
        "wall_s": (first["wall_s"] + last["wall_s"]) / 2,
        "load_before": first["load_before"],
        "load_after": last["load_after"],
        "runs": [first, last],
    }
    speed = step_speed(steps_per_turn=5 if quick else 20, repeat=3 if quick else 7)
    table = ablation_markdown(baseline, [*switched, speedrun], nanogpt)
    (results_dir() / f"speedrun-ablation{suffix}.md").write_text(table)
    done.update(baseline=baseline, step_speed=speed)
    save()
    for r in switched:
        out.append(
            Row(
                name=f"ablation: {r['name']} vs char-shakespeare preset" + (" (quick)" if quick else ""),
                ours=r["final_val_loss"],
                peer=baseline["final_val_loss"],
                unit="val loss (whole split)" if not quick else "val loss (10 steps)",
                peer_name="the preset (mean of a run before and after)",
                higher_is_better=False,
                extra={
                    "wall_s": r["wall_s"],
                    "baseline_wall_s": baseline["wall_s"],
                    "time_ratio": round(r["wall_s"] / baseline["wall_s"], 3),
                    "load": [r["load_before"], r["load_after"]],
                },
            )
        )
    target = nanogpt["full_val_loss"]
    reached = speedrun["final_val_loss"] <= target
    out.append(
        Row(
            name="speedrun preset: wall time to nanoGPT's 2,000-iteration val loss"
            + (" (quick)" if quick else ""),
            ours=speedrun["wall_s"],
            peer=nanogpt["wall_s"],
            unit="s wall (incl. start-up)",
            peer_name=f"nanoGPT CPU recipe (val {target:.4f})",
            higher_is_better=False,
            target="" if quick else "≥ 2× (≤ 0.5× the time), val ≤ nanoGPT's",
            met=None if quick else (reached and speedrun["wall_s"] <= 0.5 * nanogpt["wall_s"]),
            extra={
                "speedrun_val_loss": speedrun["final_val_loss"],
                "nanogpt_val_loss": target,
                "nanogpt_wall_s": nanogpt["wall_s"],
                "load": [speedrun["load_before"], speedrun["load_after"]],
            },
        )
    )
    out.append(
        Row(
            name="train step at nanoGPT's CPU config (4L/4H/128, ctx 64, batch 12, GPT-2 arch)",
            ours=speed["ours"]["median_s_per_step"] * 1e3,
            peer=speed["nanogpt"]["median_s_per_step"] * 1e3,
            unit="ms/step (median)",
            peer_name="nanoGPT's iteration (its batch loading included)",
            higher_is_better=False,
            target="" if quick else "≥ 1.1×",
            met=None
            if quick
            else speed["nanogpt"]["median_s_per_step"] >= 1.1 * speed["ours"]["median_s_per_step"],
            extra=speed,
        )
    )
    return out


if __name__ == "__main__":
    from benchmarks.common import format_table

    print(format_table(run(quick="--full" not in sys.argv)))
