"""Scaling laws you can run: train a ladder of model sizes at several compute budgets, fit L(N, D).

For every compute budget C (training FLOPs) the sweep trains several model sizes, each for exactly
the tokens its budget buys (the learning-rate schedule is stretched over that length), all with
the same recipe and seed, through the one training loop. Then it fits the two estimators of
Hoffmann et al. (2022): iso-FLOP parabolas (approach 2: optimal N* and D* per budget, N* ∝ C^a,
D* ∝ C^b) and the parametric L(N, D) = E + A/N^α + B/D^β (approach 3), with bootstrap intervals.

Output in --out: sweep.json (every point: N, D, C, val loss, time), fit.json, sweep.md (tables),
loss_vs_compute.png, isoflop.png, optimal_nd.png, predicted_vs_actual.png and runs/<point>/
(ordinary run directories). N counts non-embedding parameters; C = D x (6 N_matmul + the
attention term). The default recipe is the char-shakespeare preset with batch 16 (--preset,
--config and --set change it for every point). Re-running the same command skips finished
points (an interrupted sweep resumes; new budgets add points); --plan answers "how big a model
for my compute?". On a busy machine set OMP_NUM_THREADS=1.

examples:
  scratchllm sweep --data default                      # the embedded corpus, ~11 CPU-minutes
  scratchllm sweep --data default --dry-run            # list the points without training
  scratchllm sweep --plan --budget 1e13                # optimal N and D from the finished fit
  scratchllm sweep --data data/shakespeare --out sw --budgets 1e11,3e11,1e12 --sizes L1-d32,L2-d48,L2-d64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scratchllm.cli.common import add_config_args, add_json_arg, add_seed_arg, print_json

DEFAULT_OUT = "runs/sweep"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.add_argument("--data", help="prepared data directory (from 'scratchllm prepare'), or 'default'")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"sweep directory (default {DEFAULT_OUT})")
    p.add_argument("--force", action="store_true", help="start the sweep in --out over")
    p.add_argument(
        "--budgets",
        help="comma-separated training-FLOP budgets (default 1e10,3e10,1e11,3e11,1e12)",
    )
    p.add_argument(
        "--sizes",
        default="auto",
        help="auto (sizes around each budget's optimum, default), all, or a list like L1-d32,L2-d48",
    )
    p.add_argument("--per-budget", type=int, default=None, help="--sizes auto: sizes per budget (default 5)")
    add_config_args(p)
    add_seed_arg(p)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda or mps")
    p.add_argument(
        "--count",
        choices=["non-embedding", "total"],
        default="non-embedding",
        help="which parameter count the fits use (default non-embedding, as Kaplan et al.)",
    )
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per fit (default 200)")
    p.add_argument("--dry-run", action="store_true", help="list the points the sweep would train, then stop")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-point lines")
    planning = p.add_argument_group("planning from a finished fit")
    planning.add_argument(
        "--plan", action="store_true", help="print the compute-optimal N and D for --budget"
    )
    planning.add_argument("--budget", help="--plan: the training-FLOP budget, e.g. 1e13")
    planning.add_argument(
        "--fit", help=f"--plan: a sweep directory or its fit.json (default: --out, {DEFAULT_OUT})"
    )
    add_json_arg(p)


def _load_fit(path: str) -> tuple[dict, str]:
    from scratchllm.errors import ScratchLLMError
    from scratchllm.io import read_json

    p = Path(path)
    fit_path = p / "fit.json" if p.is_dir() or not p.suffix else p
    if not fit_path.is_file():
        raise ScratchLLMError(
            f"no finished fit at {fit_path}: run 'scratchllm sweep --data default --out {p}' first, "
            "or pass --fit SWEEP_DIR"
        )
    fit = read_json(fit_path, "sweep fit")
    if not isinstance(fit, dict) or "approach2" not in fit:
        raise ScratchLLMError(f"{fit_path} is not a scratchllm sweep fit (fit.json from 'scratchllm sweep')")
    return fit, str(fit_path)


def _plan(args: argparse.Namespace) -> int:
    from scratchllm.errors import ScratchLLMError
    from scratchllm.sweep.fit import plan_budget
    from scratchllm.sweep.ladder import parse_budget
    from scratchllm.sweep.report import plan_lines

    if args.budget is None:
        raise ScratchLLMError("--plan needs --budget C (training FLOPs, e.g. --budget 1e13)")
    given = [f"--{k}" for k in ("data", "budgets") if getattr(args, k)]
    if given:
        raise ScratchLLMError(f"--plan reads a finished fit and trains nothing; drop {', '.join(given)}")
    budget = parse_budget(args.budget)
    fit, source = _load_fit(args.fit or args.out)
    plan = plan_budget(fit, budget)
    if args.json:
        print_json({**plan, "fit": source})
    else:
        print("\n".join(plan_lines(plan, fit, source)))
    return 0


def _summary(result) -> dict:
    fit = result.fit or {}
    a2, a3 = fit.get("approach2") or {}, fit.get("approach3") or {}
    per_budget = a2.get("per_budget") or [{}]
    return {
        "out": str(result.out),
        "points": len(result.points),
        "trained": result.trained,
        "skipped": result.skipped,
        "seconds": round(result.seconds, 1),
        "approach2": {k: a2.get(k) for k in ("a", "b", "k_N", "k_D")},
        "approach3": {k: a3.get(k) for k in ("E", "A", "B", "alpha", "beta", "a", "b") if k in a3},
        "tokens_per_param_at_largest_budget": per_budget[-1].get("tokens_per_param"),
        "files": [str(p) for p in result.artefacts],
    }


def _print_dry_run(specs, plan) -> None:
    from scratchllm.sweep.report import num

    print(f"{'point':<22} {'N':>9} {'D (tokens)':>11} {'steps':>7} {'tokens/param':>12} {'C (FLOPs)':>10}")
    for s in specs:
        print(
            f"{s.name:<22} {s.count.n_params:>9,} {s.tokens:>11,} {s.steps:>7,} "
            f"{s.tokens / s.count.n_params:>12.1f} {num(s.flops):>10}"
        )
    total = sum(s.flops for s in specs)
    print(
        f"{len(specs)} points, {num(total)} FLOPs and {sum(s.tokens for s in specs):,} tokens in all "
        f"(batch {plan.tokens_per_step:,} tokens/step); --sizes auto adds sizes where a minimum is on an edge"
    )


def run(args: argparse.Namespace) -> int:
    from scratchllm.errors import ScratchLLMError

    if args.plan:
        return _plan(args)
    if args.budget is not None:
        raise ScratchLLMError("--budget goes with --plan; to train at several budgets use --budgets")
    if not args.data:
        raise ScratchLLMError(
            "--data is required: a prepared data directory or 'default' "
            "(or --plan --budget C to read a finished fit)"
        )
    if args.per_budget is not None and args.per_budget < 3:
        raise ScratchLLMError(f"--per-budget must be >= 3 (a parabola needs 3 sizes; got {args.per_budget})")
    if args.bootstrap < 0:
        raise ScratchLLMError(f"--bootstrap must be >= 0 (got {args.bootstrap})")

    from scratchllm.sweep.ladder import DEFAULT_PER_BUDGET, parse_budgets, parse_sizes
    from scratchllm.sweep.runner import Recipe, Sweep

    budgets = parse_budgets(args.budgets)
    sizes = parse_sizes(args.sizes)

    common = dict(config_file=args.config, overrides=list(args.overrides), seed=args.seed, device=args.device)
    if args.preset is None and args.config is None:
        recipe = Recipe.default(args.data, **common)  # char-shakespeare with batch 16
    else:
        recipe = Recipe(data=args.data, preset=args.preset, **common)
    recipe.user_overrides()  # refuse --set of the keys the sweep owns, before anything is read

    def echo(msg: str) -> None:
        if not (args.quiet or args.json):
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)

    sweep = Sweep(
        args.out,
        recipe,
        budgets,
        sizes,
        per_budget=args.per_budget or DEFAULT_PER_BUDGET,
        count=args.count,
        bootstrap=args.bootstrap,
        force=args.force,
        progress=not (args.quiet or args.json),
        echo=echo,
    )
    if args.dry_run:
        plan = sweep.prepare(dry_run=True)
        specs = sweep.dry_run()
        if args.json:
            print_json(
                [
                    {"name": s.name, "N": s.count.n_params, "D": s.tokens, "steps": s.steps, "C": s.flops}
                    for s in specs
                ]
            )
        else:
            _print_dry_run(specs, plan)
        return 0
    sweep.prepare()
    if sizes.mode == "list" and len(sizes.sizes) < 3:
        echo(
            f"note: with {len(sizes.sizes)} size(s) per budget there is no iso-FLOP parabola to fit "
            "(approach 2 needs 3 or more)"
        )
    result = sweep.run()
    if result.interrupted:
        print(
            f"{result.interrupted}: the sweep stopped after {len(result.points)} finished point(s); "
            "run the same command again to continue",
            file=sys.stderr,
        )
        return 130 if result.interrupted == "SIGINT" else 0
    summary = _summary(result)
    if args.json:
        print_json(summary)
        return 0
    from scratchllm.sweep.report import with_interval

    a2, a3 = summary["approach2"], summary["approach3"]
    print(
        f"{summary['points']} points ({result.trained} trained now, {result.skipped} already done) in "
        f"{result.seconds:.0f} s; everything is in {result.out}"
    )
    a, b = with_interval(a2["a"]), with_interval(a2["b"])
    print(f"approach 2 (iso-FLOP): N* ∝ C^a, a = {a}; D* ∝ C^b, b = {b}")
    if "alpha" in a3:
        print(
            f"approach 3 (L = E + A/N^α + B/D^β): E = {with_interval(a3['E'])}, "
            f"α = {with_interval(a3['alpha'])}, β = {with_interval(a3['beta'])}, "
            f"A = {with_interval(a3['A'])}, B = {with_interval(a3['B'])}"
        )
    tpp = with_interval(summary["tokens_per_param_at_largest_budget"])
    print(f"tokens per parameter at the largest budget: {tpp}")
    print(f"tables: {result.out}/sweep.md; plots: {', '.join(Path(p).name for p in result.artefacts)}")
    print(f"next: scratchllm sweep --plan --budget 1e13 --fit {result.out}")
    return 0
