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
3. **the recipe** — ``--preset speedrun`` (the switches that won, in the fewest steps that still
   beat nanoGPT's loss: 180);
4. **nanoGPT** — :mod:`benchmarks.nanogpt_peer`, nanoGPT's README CPU recipe (GPT-2 architecture,
   batch 12, 2,000 iterations, evaluations every 250) as a child process, its final weights scored
   on the same whole val split with ``scratchllm eval``. The target (issue 21): the speedrun preset
   reaches nanoGPT's 2,000-iteration val loss in ≤ 0.5× nanoGPT's wall time (both whole runs,
   start-up and evaluations included);
5. **step speed** at nanoGPT's own config (4 layers, 4 heads, width 128, context 64, batch 12, GPT-2
   architecture, the char vocabulary): one step of the trainer's own loop
   (:func:`scratchllm.train.loop.optimizer_step` on a real session: shard sampler, forward,
   backward, clip, the non-finite/spike checks, fused AdamW) against nanoGPT's iteration
   (:class:`benchmarks.nanogpt_peer.Trainer`, its batch loading included), **each in its own
   process as its program runs** (ours with the CLI's ``OMP_WAIT_POLICY=PASSIVE`` and the loop's
   allocator setting), taking turns, 20 steps per turn; then both under ``torch.compile``
   (``--set compile=true``; nanoGPT's own default). ``python -m benchmarks.bench_speedrun --full
   --step-only`` re-measures just these rows from the saved runs;
6. **BPE** — a BPE tokenizer of 2,048 ids trained on tinyshakespeare and its shards; nanoGPT's
   recipe on those shards sets the loss (its final weights on the whole val split), and
   ``--preset bpe-shakespeare``'s wall time to that loss is read off its evaluation curve (the
   process's wall clock minus what it ran after that evaluation).
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
from benchmarks.common import Row

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


#: The BPE recipe's vocabulary: ~2k ids, ~2.9 characters per token on tinyshakespeare.
BPE_VOCAB = 2048


def prepare_bpe_shakespeare(tmp: Path, env: dict[str, str]) -> Path:
    """A BPE tokenizer of :data:`BPE_VOCAB` ids trained on tinyshakespeare, and its shards, under
    ``tmp/bpe-data`` (as a user makes them)."""
    from benchmarks.bench_quality import SHARED_DATA, _run

    text = SHARED_DATA / "tinyshakespeare.txt"
    tok = tmp / "bpe.json"
    _run(
        [*SCRATCHLLM, "tokenizer", "train", "--kind", "bpe", "--vocab-size", str(BPE_VOCAB), "--quiet"]
        + ["--input", str(text), "--out", str(tok)],
        env,
    )
    _run(
        [
            *SCRATCHLLM,
            "prepare",
            "--tokenizer",
            str(tok),
            "--input",
            str(text),
            "--out",
            str(tmp / "bpe-data"),
        ]
        + ["--quiet"],
        env,
    )
    return tmp / "bpe-data"


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


#: nanoGPT's CPU config in scratchllm's keys: the same function as its model (GPT-2 architecture
#: without biases, exact GELU, learned positions, LayerNorm, tied head) and its training settings.
NANOGPT_AS_OURS: dict[str, Any] = {
    "n_layer": 4,
    "n_head": 4,
    "n_embd": 128,
    "context_length": 64,
    "dropout": 0.0,
    "bias": False,
    "activation": "gelu_erf",
    "pos_emb": "learned",
    "norm": "layernorm",
    "tie_weights": True,
    "batch_size": 12,
    "lr": 1e-3,
    "min_lr": 1e-4,
    "warmup_steps": 100,
    "max_steps": 2000,
    "weight_decay": 0.1,
    "beta2": 0.99,
    "grad_clip": 1.0,
    "eval_interval": 0,
    "eval_steps": 1,
}


def _our_loop_step(data: Path, run_dir: Path, compile: bool) -> Any:
    """One call = one optimizer step of **the trainer's own loop** (:func:`~scratchllm.train.loop.
    optimizer_step`: batch from the shard sampler, forward, backward, clip, the loss-spike and
    non-finite checks, the step) at nanoGPT's config, on real shards."""
    from scratchllm.train.loop import optimizer_step, start_session
    from scratchllm.train.pretrain import setup_pretraining

    overrides = {**NANOGPT_AS_OURS, "compile": compile}
    s = setup_pretraining(data, run_dir, use_default_preset=False, overrides=overrides, device="cpu")
    session, state = start_session(
        s.model,
        s.task,
        s.train_config,
        run_dir,
        arch=s.arch,
        tokenizer=s.tokenizer,
        resume=False,
        force=False,
        model_config=s.model_config,
        extra_config=None,
        allow_world_size_change=False,
        echo=None,
    )
    return lambda: optimizer_step(session, state)


def _step_worker(side: str, data: str, compile: str) -> int:
    """A child process holding one side's training state; each line on stdin ("N") runs N steps and
    answers with the seconds they took. Each side runs as its own program would: ours with what
    ``scratchllm train`` sets up (the CLI's OpenMP wait policy, :func:`~scratchllm.device.
    choose_wait_policy`, and the loop's session), nanoGPT's as ``python train.py`` (nothing). The
    first line says "ready" and the wait policy the worker runs with."""
    if side == "ours":
        from scratchllm.device import choose_wait_policy

        choose_wait_policy()  # as scratchllm/cli/main.py does for `train`
    import torch

    from benchmarks.nanogpt_peer import Recipe, Trainer
    from scratchllm.data.shards import load_shards
    from scratchllm.device import wait_policy

    with tempfile.TemporaryDirectory(prefix="scratchllm-bench-step-") as d:
        if side == "ours":
            fn = _our_loop_step(Path(data), Path(d) / "run", compile=compile == "1")
        else:
            peer = Trainer(data, load_shards(data).vocab_size, Recipe())
            if compile == "1":
                peer.model = torch.compile(peer.model)  # what nanoGPT's compile=True does
            fn = peer.iteration
        print("ready", wait_policy(), flush=True)
        for line in sys.stdin:
            t0 = time.perf_counter()
            for _ in range(int(line)):
                fn()
            print(time.perf_counter() - t0, flush=True)
    return 0


def step_speed(
    data: Path, steps_per_turn: int = 20, repeat: int = 7, compiled: bool = True
) -> dict[str, Any]:
    """Our training loop's step vs nanoGPT's iteration at nanoGPT's CPU config on the same shards
    (seconds/step): each side in **its own process**, as each program runs (:func:`_step_worker`),
    taking turns — one turn of ``steps_per_turn`` steps each, a warm-up turn first, ``repeat``
    timed turns. With ``compiled``, then both under ``torch.compile`` (nanoGPT's own default is
    ``compile=True``; its README's CPU command turns it off): the warm-up turn compiles."""
    import statistics

    def start(side: str, compile: bool) -> subprocess.Popen:
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.bench_speedrun",
                "step-worker",
                side,
                str(data),
                str(int(compile)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parents[1],
        )
        ready = p.stdout.readline().split()
        if ready[:1] != ["ready"]:
            raise RuntimeError(f"the {side} step-speed worker failed to start")
        policies[side] = ready[1]
        return p

    policies: dict[str, str] = {}

    def pair(compile: bool) -> dict[str, list[float]]:
        # one after the other, so that ours decides its wait policy on a machine as quiet as a
        # user's who starts `scratchllm train` (not while the peer is still importing torch)
        procs = {side: start(side, compile) for side in ("nanogpt", "ours")}
        times: dict[str, list[float]] = {side: [] for side in procs}
        try:
            for turn in range(repeat + 1):
                for side, p in procs.items():
                    p.stdin.write(f"{steps_per_turn}\n")
                    p.stdin.flush()
                    seconds = float(p.stdout.readline())
                    if turn:  # turn 0 warms up (and compiles)
                        times[side].append(seconds / steps_per_turn)
        finally:
            for p in procs.values():
                p.stdin.close()
                p.wait(timeout=60)
        return times

    out: dict[str, Any] = {}
    runs = {"": pair(False), **({"_compiled": pair(True)} if compiled else {})}
    for suffix, times in runs.items():
        for side, t in times.items():
            out[side + suffix] = {"median_s_per_step": statistics.median(t), "min_s_per_step": min(t)}
    out["ours_wait_policy"] = policies["ours"]
    return out


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
    suffix = "-quick" if quick else ""
    progress = results_dir() / f"speedrun-runs{suffix}.json"
    done: dict[str, Any] = {"switches": []}

    def save() -> None:  # after every training: a long run stopped half-way still leaves its rows
        progress.write_text(json.dumps(done, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="scratchllm-bench-speedrun-") as tmp:
        tmp = Path(tmp)
        data, _ = prepare_char_shakespeare(tmp, env)
        # The most informative runs first: the baseline, Muon, the recipe, nanoGPT, then the others.
        done["baseline_first"] = _train(data, tmp / "base-a", extra, env, "char-shakespeare")
        save()
        order = [0, None, "nanogpt", *range(1, len(SWITCHES))]
        for item in order:
            if item is None:
                done["speedrun"] = {
                    "name": "speedrun preset",
                    **_train(data, tmp / "speedrun", extra, env, "speedrun"),
                }
            elif item == "nanogpt":
                done["nanogpt"] = _nanogpt(data, tmp / "nanogpt", env, quick)
            else:
                name, overrides = SWITCHES[item]
                r = _train(data, tmp / f"switch-{item}", {**overrides, **extra}, env, "char-shakespeare")
                done["switches"].append({"name": name, "overrides": overrides, **r})
            save()
        done["baseline_last"] = _train(data, tmp / "base-b", extra, env, "char-shakespeare")
        save()
        done["step_speed"] = step_speed(
            data, steps_per_turn=5 if quick else 20, repeat=3 if quick else 7, compiled=not quick
        )
        save()
        # BPE: nanoGPT's recipe on the same BPE shards sets the loss; our preset's time to it.
        bpe = prepare_bpe_shakespeare(tmp, env)
        nanogpt_bpe = done["nanogpt_bpe"] = _nanogpt(bpe, tmp / "nanogpt-bpe", env, quick)
        save()
        before = _load()
        bpe_run = train_and_time(
            bpe, tmp / "bpe-run", extra, env, preset="bpe-shakespeare", target=nanogpt_bpe["full_val_loss"]
        )
        done["bpe_shakespeare"] = {**bpe_run, "load_before": before, "load_after": _load()}
        save()
    rows = _rows(done, quick)
    save()  # with the baseline's mean
    return rows


def _rows(done: dict[str, Any], quick: bool) -> list[Row]:
    """The ablation table (written beside the results) and the summary rows, from the saved runs."""
    from benchmarks.common import results_dir

    suffix = "-quick" if quick else ""
    out: list[Row] = []
    first, last, speed = done["baseline_first"], done["baseline_last"], done["step_speed"]
    speedrun, nanogpt = done["speedrun"], done["nanogpt"]
    nanogpt_bpe, ours_bpe = done["nanogpt_bpe"], done["bpe_shakespeare"]
    switched = sorted(done["switches"], key=lambda r: [n for n, _ in SWITCHES].index(r["name"]))
    baseline = {
        "final_val_loss": (first["final_val_loss"] + last["final_val_loss"]) / 2,
        "wall_s": (first["wall_s"] + last["wall_s"]) / 2,
        "load_before": first["load_before"],
        "load_after": last["load_after"],
        "runs": [first, last],
    }
    table = ablation_markdown(baseline, [*switched, speedrun], nanogpt)
    (results_dir() / f"speedrun-ablation{suffix}.md").write_text(table)
    done["baseline"] = baseline
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
    bpe_target = nanogpt_bpe["full_val_loss"]
    bpe_time = ours_bpe["to_target_s"]
    out.append(
        Row(
            name=f"bpe-shakespeare preset (BPE {BPE_VOCAB}): wall time to nanoGPT's 2,000-iteration val loss"
            + (" (quick)" if quick else ""),
            # not reached: the whole run's time stands in (the row says so in `reached`)
            ours=bpe_time if bpe_time is not None else ours_bpe["wall_s"],
            peer=nanogpt_bpe["wall_s"],
            unit="s wall (incl. start-up)",
            peer_name=f"nanoGPT CPU recipe on the same BPE shards (val {bpe_target:.4f})",
            higher_is_better=False,
            extra={
                "reached": bpe_time is not None,
                "reached_at_step": ours_bpe["target_step"],
                "bpe_final_val_loss": ours_bpe["final_val_loss"],
                "bpe_wall_s": ours_bpe["wall_s"],
                "nanogpt_val_loss": bpe_target,
                "load": [ours_bpe["load_before"], ours_bpe["load_after"]],
            },
        )
    )
    out.append(
        Row(
            name="train step at nanoGPT's CPU config (4L/4H/128, ctx 64, batch 12, GPT-2 arch), eager",
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
    if "ours_compiled" in speed:
        out.append(
            Row(
                name="the same step, both under torch.compile (--set compile=true; nanoGPT's default)",
                ours=speed["ours_compiled"]["median_s_per_step"] * 1e3,
                peer=speed["nanogpt_compiled"]["median_s_per_step"] * 1e3,
                unit="ms/step (median)",
                peer_name="nanoGPT's iteration, its model compiled",
                higher_is_better=False,
                extra={
                    "ours_compiled_vs_ours_eager": round(
                        speed["ours"]["median_s_per_step"] / speed["ours_compiled"]["median_s_per_step"], 3
                    ),
                    "ours_compiled_vs_nanogpt_eager": round(
                        speed["nanogpt"]["median_s_per_step"] / speed["ours_compiled"]["median_s_per_step"], 3
                    ),
                },
            )
        )
    return out


def rerun_step_speed() -> list[Row]:
    """``--step-only``: measure the step rows again and rebuild every row from the saved full runs
    (``speedrun-runs.json``) — the trainings take ~25 minutes, the step rows ~4."""
    from benchmarks.common import results_dir

    progress = results_dir() / "speedrun-runs.json"
    done = json.loads(progress.read_text())
    env = {**os.environ, "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory(prefix="scratchllm-bench-speedrun-") as tmp:
        data, _ = prepare_char_shakespeare(Path(tmp), env)
        done["step_speed"] = step_speed(data)
    progress.write_text(json.dumps(done, indent=2) + "\n")
    return _rows(done, quick=False)


if __name__ == "__main__":
    if sys.argv[1:2] == ["step-worker"]:
        sys.exit(_step_worker(*sys.argv[2:5]))
    from benchmarks.common import format_table

    if "--step-only" in sys.argv:
        from benchmarks.common import write_results
        from benchmarks.run import write_summary

        write_results("speedrun", rows := rerun_step_speed())
        write_summary(quick=False)
    else:
        rows = run(quick="--full" not in sys.argv)
    print(format_table(rows))
