"""Run a scaling-law sweep: a ladder of model sizes at several compute budgets, one recipe.

Every point is an ordinary run directory, ``SWEEP/runs/C<budget>_<size>/``, trained by the
project's one training loop with the same recipe and seed; only the size and the length differ.
The length comes from the budget: ``D = C / flops_per_token`` tokens, i.e. ``D / (batch ·
context)`` optimizer steps, and the learning-rate schedule (warm-up, cosine decay to ``min_lr``)
is stretched over exactly those steps (the Chinchilla paper's point: a cosine cycle longer than
the run leaves a model under-trained, which skews every fit). Each point is evaluated once, at
the end, on the whole validation split.

**Resuming.** A finished point writes ``point.json`` into its run directory (atomically, after
training); a re-run of the same command skips it. A point that was interrupted (Ctrl-C, SIGTERM, a
crash) continues from its newest valid checkpoint, or starts again when it has none. ``sweep.json``
is rewritten after every point, so an interrupted sweep loses at most the point in progress.

**Training machinery.** :func:`resolve_point` and :func:`train_point` are the only two functions
that call :mod:`scratchllm.train`; everything else here is planning and bookkeeping.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.sweep.flops import CONVENTIONS, ModelCount, count_model
from scratchllm.sweep.ladder import (
    DEFAULT_PER_BUDGET,
    DEFAULT_PRESET,
    DEFAULT_RECIPE_OVERRIDES,
    MAX_WIDEN,
    MIN_STEPS,
    PRIOR_TOKENS_PER_PARAM,
    Size,
    SizeChoice,
    format_budget,
    window,
)

FORMAT_VERSION = 1
SWEEP_FILE = "sweep.json"
FIT_FILE = "fit.json"
TABLE_FILE = "sweep.md"
POINT_FILE = "point.json"
RUNS_DIR = "runs"
DATA_DIR = "data"
#: Everything a sweep writes at its top level (``--force`` removes these and nothing else).
OUTPUTS = (SWEEP_FILE, FIT_FILE, TABLE_FILE, RUNS_DIR)
#: Keys the sweep sets for every point; ``--set`` may not change them.
OWNED_KEYS = {
    "n_layer": "--sizes",
    "n_embd": "--sizes",
    "n_head": "--sizes",
    "ffn_hidden": "the ladder (8/3 or 4 times the width)",
    "vocab_size": "the data",
    "max_steps": "each point's compute budget",
    "eval_interval": "the sweep (one evaluation, at the end)",
    "eval_steps": "the sweep (the whole validation split)",
    "sample_interval": "the sweep (no samples)",
}
#: Train-config keys that do not change results, left out of the recipe fingerprint.
UNFINGERPRINTED = {"device"}
#: The final evaluation scores at most this many windows (the whole split of the default corpus).
EVAL_MAX_WINDOWS = 4096


@dataclass
class Recipe:
    """What every point shares: data, base config (preset / TOML / --set) and seed."""

    data: str
    preset: str | None = DEFAULT_PRESET
    config_file: str | None = None
    #: the user's ``--set key=value`` items (keys the sweep owns are refused).
    overrides: Sequence[str] = ()
    seed: int | None = None
    device: str | None = None
    #: applied before ``overrides`` (the default recipe's own settings, e.g. its batch size).
    base_overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def default(cls, data: str, **kwargs: Any) -> Recipe:
        """The sweep's default recipe (:data:`~.ladder.DEFAULT_PRESET` + its overrides)."""
        return cls(data=data, preset=DEFAULT_PRESET, base_overrides=dict(DEFAULT_RECIPE_OVERRIDES), **kwargs)

    def user_overrides(self) -> dict[str, Any]:
        """``base_overrides`` then ``--set``, as one dict (refusing ``--set`` of the sweep's keys)."""
        from scratchllm.config import parse_set_args

        sets = parse_set_args(self.overrides)
        for key in sets:
            bare = key.split(".", 1)[1] if key.startswith(("model.", "train.")) else key
            if bare in OWNED_KEYS:
                raise ScratchLLMError(
                    f"--set {key}: a sweep sets {bare} itself (from {OWNED_KEYS[bare]}); remove it"
                )
        return {**self.base_overrides, **sets}


@dataclass
class PointOutcome:
    """What training one point produced (read back from the loop's result)."""

    val_loss: float | None
    train_loss: float | None
    steps: int
    tokens_seen: int
    train_seconds: float
    tokens_per_s: float
    n_params: int
    interrupted: str | None = None
    resumed_from: int | None = None


# ============================================================================ training machinery
def resolve_point(
    recipe: Recipe, overrides: dict[str, Any], run_dir: Path
) -> tuple[Any, Any, dict[str, Any]]:
    """The resolved ``(model_config, train_config, data_info)`` of a point; nothing is written.

    One of the two places that call the training package (see :func:`train_point`).
    """
    from scratchllm.train.pretrain import setup_pretraining

    setup = setup_pretraining(
        recipe.data,
        run_dir,
        arch="gpt",
        preset=recipe.preset,
        config_file=recipe.config_file,
        overrides={**recipe.user_overrides(), **overrides},
        seed=recipe.seed,
        device=recipe.device,
        use_default_preset=False,  # the recipe says exactly what a point is
    )
    return setup.model_config, setup.train_config, dict(setup.extra.get("data") or {})


def train_point(
    recipe: Recipe,
    overrides: dict[str, Any],
    run_dir: Path,
    *,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    stop_at: int | None = None,
) -> PointOutcome:
    """Train one point with the one training loop, continuing it from a checkpoint if it has one.

    A run directory with a valid checkpoint resumes (bit-exact on the same machine); one without
    (a crash before the first save, a config that no longer fits) starts over in place.
    ``stop_at`` pauses after that step, as an interruption would (tests use it).
    """
    from scratchllm.train.checkpoint import find_resumable_checkpoint
    from scratchllm.train.loop import train
    from scratchllm.train.pretrain import setup_pretraining

    say = echo or (lambda msg: None)
    sets = {**recipe.user_overrides(), **overrides}

    def setup(resume: bool) -> Any:
        return setup_pretraining(
            recipe.data,
            run_dir,
            arch="gpt",
            preset=recipe.preset,
            config_file=recipe.config_file,
            overrides=sets,
            seed=recipe.seed,
            device=recipe.device,
            resume=resume,
            use_default_preset=False,
        )

    resume = (run_dir / "config.json").is_file() and find_resumable_checkpoint(run_dir)[0] is not None
    try:
        s = setup(resume)
    except ScratchLLMError as err:
        if not resume:
            raise
        say(f"warning: cannot continue {run_dir.name} ({err}); training it again from the start")
        resume = False
        s = setup(False)
    result = train(
        s.model,
        s.task,
        s.train_config,
        run_dir,
        arch=s.arch,
        tokenizer=s.tokenizer,
        resume=resume,
        force=not resume,
        model_config=s.model_config,
        extra_config=s.extra or None,
        progress=progress,
        echo=echo,
        stop_at=stop_at,
    )
    scores = result.last_eval
    if not scores and result.interrupted is None and result.step >= s.train_config.max_steps:
        # Resumed from the final checkpoint of a run whose marker was lost: nothing left to train,
        # so evaluate those weights as the loop would have at its last step.
        import torch

        s.model.eval()
        with torch.no_grad():
            scores = dict(s.task.evaluate(s.model, max_batches=s.train_config.eval_steps))
    return PointOutcome(
        val_loss=scores.get("val_loss"),
        train_loss=result.final_loss,
        steps=result.step,
        tokens_seen=result.tokens_seen,
        train_seconds=result.elapsed,
        tokens_per_s=result.tokens_per_s,
        n_params=int(s.model.num_params(exclude_embeddings=True)),
        interrupted=result.interrupted,
        resumed_from=result.resumed_from,
    )


# ============================================================================ planning
@dataclass
class PointSpec:
    """One planned point: a size trained for a budget's worth of tokens."""

    budget: float
    size: Size
    count: ModelCount
    steps: int
    tokens_per_step: int
    overrides: dict[str, Any]

    @property
    def name(self) -> str:
        return f"C{format_budget(self.budget)}_{self.size.name}"

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def flops(self) -> float:
        return self.tokens * self.count.flops_per_token


@dataclass
class Plan:
    """The resolved recipe and every size's count: enough to plan points at any budget."""

    model_config: Any
    train_config: Any
    data_info: dict[str, Any]
    context_length: int
    tokens_per_step: int
    eval_steps: int
    ladder: list[tuple[Size, ModelCount]]

    def steps_for(self, count: ModelCount, budget: float) -> int:
        return int(round(budget / count.flops_per_token / self.tokens_per_step))

    def min_budget(self) -> float:
        """The smallest budget that gives the smallest size :data:`MIN_STEPS` steps."""
        count = min((c for _, c in self.ladder), key=lambda c: c.flops_per_token)
        return (MIN_STEPS - 0.5) * self.tokens_per_step * count.flops_per_token

    def point(self, budget: float, size: Size, count: ModelCount) -> PointSpec:
        steps = self.steps_for(count, budget)
        warmup = min(self.train_config.warmup_steps, max(1, round(0.1 * steps)))
        overrides: dict[str, Any] = {
            **{f"model.{k}": v for k, v in size.model_overrides(self.model_config.activation).items()},
            "train.max_steps": steps,
            "train.warmup_steps": warmup,
            "train.eval_interval": 0,
            "train.eval_steps": self.eval_steps,
            "train.sample_interval": 0,
        }
        return PointSpec(budget, size, count, steps, self.tokens_per_step, overrides)

    def candidates(self, budget: float) -> list[PointSpec]:
        """Every ladder size with at least :data:`MIN_STEPS` steps at this budget, smallest first."""
        pts = [self.point(budget, s, c) for s, c in self.ladder]
        return sorted((p for p in pts if p.steps >= MIN_STEPS), key=lambda p: p.count.n_params)


def make_plan(recipe: Recipe, sizes: Sequence[Size], scratch_dir: Path) -> Plan:
    """Resolve the recipe once and count every size (on the meta device: nothing is allocated)."""
    smallest = min(sizes, key=lambda s: (s.n_layer * s.n_embd**2, s))
    probe = {f"model.{k}": v for k, v in smallest.model_overrides("gelu").items()}
    probe.pop("model.ffn_hidden")  # the activation is not known yet; the default is fine for a probe
    model_cfg, train_cfg, data_info = resolve_point(recipe, probe, scratch_dir)
    ctx = train_cfg.context_length or model_cfg.context_length
    tokens_per_step = train_cfg.batch_size * ctx * train_cfg.grad_accum_steps
    val_tokens = int(data_info.get("val_tokens") or 0)
    windows = min(max(1, (val_tokens - 1) // ctx), EVAL_MAX_WINDOWS)
    eval_steps = max(1, math.ceil(windows / train_cfg.batch_size))
    ladder = []
    for size in sizes:
        try:
            cfg = dataclasses.replace(model_cfg, **size.model_overrides(model_cfg.activation))
        except ScratchLLMError as err:
            raise ScratchLLMError(f"model size {size.name} does not fit the recipe: {err}") from None
        ladder.append((size, count_model(cfg, ctx)))
    ladder.sort(key=lambda sc: sc[1].n_params)
    return Plan(model_cfg, train_cfg, data_info, ctx, tokens_per_step, eval_steps, ladder)


def check_budgets(plan: Plan, budgets: Sequence[float], mode: str) -> None:
    """One-line errors for budgets the ladder cannot use (too small for the smallest size, or
    leaving fewer than 3 sizes for the parabola)."""
    floor = plan.min_budget()
    smallest_size, smallest = min(plan.ladder, key=lambda sc: sc[1].flops_per_token)
    for c in budgets:
        steps = plan.steps_for(smallest, c)
        if steps < MIN_STEPS:
            raise ScratchLLMError(
                f"budget {format_budget(c)} FLOPs is too small: the smallest model ({smallest_size.name}, "
                f"{smallest.n_params:,} params, {smallest.flops_per_token:,.0f} FLOPs/token) would train "
                f"for {steps} step(s) of {plan.tokens_per_step:,} tokens and a point needs >= {MIN_STEPS}; "
                f"use budgets >= {format_budget(float(f'{floor:.2g}'))}"
            )
        fit = plan.candidates(c)
        if len(fit) < 3 and mode != "list":
            names = ", ".join(p.size.name for p in fit)
            raise ScratchLLMError(
                f"budget {format_budget(c)} FLOPs leaves only {len(fit)} model size(s) with >= {MIN_STEPS} "
                f"steps ({names}); an iso-FLOP parabola needs 3: use a larger budget"
            )


# ============================================================================ the sweep
@dataclass
class SweepResult:
    out: Path
    points: list[dict[str, Any]]
    fit: dict[str, Any] | None
    interrupted: str | None = None
    trained: int = 0
    skipped: int = 0
    seconds: float = 0.0
    artefacts: list[Path] = field(default_factory=list)


def _recipe_fingerprint(plan: Plan) -> dict[str, Any]:
    from scratchllm.config import to_dict

    model = {k: v for k, v in to_dict(plan.model_config).items() if k not in OWNED_KEYS}
    train = {
        k: v
        for k, v in to_dict(plan.train_config).items()
        if k not in OWNED_KEYS and k not in UNFINGERPRINTED and k != "warmup_steps"
    }
    train["warmup_steps_cap"] = plan.train_config.warmup_steps
    data = {k: plan.data_info.get(k) for k in ("tokenizer_sha256", "train_tokens", "val_tokens")}
    return {"model": model, "train": train, "data": data}


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key} {va!r} -> {vb!r}")
    return out


def _read_json(path: Path) -> Any:
    from scratchllm.io import read_json

    return read_json(path, "sweep file")


class Sweep:
    """Plans, trains (skipping finished points), fits and reports one sweep directory."""

    def __init__(
        self,
        out: str | Path,
        recipe: Recipe,
        budgets: Sequence[float],
        sizes: SizeChoice,
        *,
        per_budget: int = DEFAULT_PER_BUDGET,
        count: str = "non-embedding",
        bootstrap: int = 200,
        level: float = 0.8,
        force: bool = False,
        progress: bool = True,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        if per_budget < 3:
            raise ScratchLLMError(f"--per-budget must be >= 3 (a parabola needs 3 sizes; got {per_budget})")
        if count not in ("non-embedding", "total"):
            raise ScratchLLMError(f"--count must be non-embedding or total (got {count!r})")
        self.out = Path(out)
        self.recipe = recipe
        self.budgets = sorted(budgets)
        self.sizes = sizes
        self.per_budget = per_budget
        self.count = count
        self.bootstrap = bootstrap
        self.level = level
        self.force = force
        self.progress = progress
        self.say = echo or (lambda msg: None)
        self.plan: Plan | None = None
        self.records: dict[str, dict[str, Any]] = {}
        self._t0 = time.perf_counter()

    # ------------------------------------------------------------------ checks before writing
    def _check_out(self) -> dict[str, Any] | None:
        """The existing sweep.json (None for a new sweep); refuse a directory that is not ours."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise ScratchLLMError(f"sweep directory {out} exists and is not a directory")
        sweep_file = out / SWEEP_FILE
        if self.force or not out.is_dir():
            return None
        if sweep_file.is_file():
            doc = _read_json(sweep_file)
            if not isinstance(doc, dict) or "recipe" not in doc:
                raise ScratchLLMError(f"{sweep_file} is not a scratchllm sweep file; choose another --out")
            return doc
        others = [p.name for p in out.iterdir() if p.name != DATA_DIR]
        if others:
            raise ScratchLLMError(
                f"sweep directory {out} already contains files ({', '.join(sorted(others)[:3])}) and is "
                "not a sweep; choose another --out or pass --force"
            )
        return None

    def prepare(self, *, dry_run: bool = False) -> Plan:
        """Resolve the recipe, count the ladder, check the budgets and the output directory.

        ``--data default`` makes char-level shards of the embedded corpus in ``SWEEP/data`` (once;
        for a ``dry_run`` in a temporary directory). Nothing else is written; when a check fails, a
        directory this call created is removed again.
        """
        existing = self._check_out()
        created = not self.out.exists()
        scratch = None
        try:
            if str(self.recipe.data) == "default":
                if dry_run and not (self.out / DATA_DIR / "meta.json").is_file():
                    import tempfile

                    scratch = Path(tempfile.mkdtemp(prefix="scratchllm-sweep-"))
                    self.recipe.data = str(prepare_default_data(scratch))
                    created = False
                else:
                    self.recipe.data = str(prepare_default_data(self.out))
            plan = make_plan(self.recipe, self.sizes.sizes, self.out / RUNS_DIR)
            check_budgets(plan, self.budgets, self.sizes.mode)
            if existing is not None:
                diff = _differences(existing.get("recipe") or {}, _recipe_fingerprint(plan))
                if diff:
                    raise ScratchLLMError(
                        f"{self.out} holds a sweep with another recipe ({'; '.join(diff[:3])}); "
                        "use another --out, or --force to start over"
                    )
        except BaseException:
            if created and self.out.is_dir():
                shutil.rmtree(self.out, ignore_errors=True)
            raise
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        self.plan = plan
        return plan

    def dry_run(self) -> list[PointSpec]:
        """The points the sweep would train first (``auto`` may widen a window once it sees losses)."""
        plan = self.plan or self.prepare()
        specs: list[PointSpec] = []
        previous: list[tuple[float, float]] = []
        for c in self.budgets:
            chosen = self._initial_window(plan, c, previous)
            specs += chosen
            mid = chosen[len(chosen) // 2]
            previous.append((c, mid.count.n_params))
        return specs

    # ------------------------------------------------------------------ per-budget sizes
    def _target_log_n(self, plan: Plan, budget: float, previous: list[tuple[float, float]]) -> float:
        """Where ``auto`` centres a budget's window: the trend of earlier optima, else the prior."""
        if len(previous) >= 2:
            from scratchllm.sweep.fit import fit_power_law

            a, k = fit_power_law([c for c, _ in previous], [n for _, n in previous])
            a = min(max(a, 0.2), 0.9)  # a wild early trend should not throw the window off the ladder
            c_last, n_last = previous[-1]
            return math.log(n_last) + a * math.log(budget / c_last)
        if previous:
            c_prev, n_prev = previous[-1]
            return math.log(n_prev) + 0.5 * math.log(budget / c_prev)
        cands = plan.candidates(budget)
        best = min(cands, key=lambda p: abs(math.log(p.tokens / p.count.n_params / PRIOR_TOKENS_PER_PARAM)))
        return math.log(best.count.n_params)

    def _initial_window(
        self, plan: Plan, budget: float, previous: list[tuple[float, float]]
    ) -> list[PointSpec]:
        cands = plan.candidates(budget)
        if self.sizes.mode != "auto":
            return cands
        lo, hi = window(
            [math.log(p.count.n_params) for p in cands],
            self._target_log_n(plan, budget, previous),
            self.per_budget,
        )
        return cands[lo:hi]

    # ------------------------------------------------------------------ records
    def _record(
        self, spec: PointSpec, outcome: PointOutcome, seconds: float, resumed: bool
    ) -> dict[str, Any]:
        train_tokens = int(self.plan.data_info.get("train_tokens") or 0) if self.plan else 0
        n = spec.count.n_params
        return {
            "name": spec.name,
            "budget": spec.budget,
            "size": spec.size.name,
            "n_layer": spec.size.n_layer,
            "n_embd": spec.size.n_embd,
            "n_head": spec.size.n_head,
            "N": n,
            "N_total": spec.count.n_params_total,
            "flops_per_token": spec.count.flops_per_token,
            "steps": spec.steps,
            "D": spec.tokens,
            "C": spec.flops,
            "C_6ND": 6.0 * n * spec.tokens,
            "tokens_per_param": spec.tokens / n,
            "epochs": spec.tokens / train_tokens if train_tokens else None,
            "val_loss": outcome.val_loss,
            "train_loss": outcome.train_loss,
            "seconds": round(seconds, 2),
            "train_seconds": round(outcome.train_seconds, 2),
            "tokens_per_s": round(outcome.tokens_per_s, 1),
            "resumed": resumed,
            "run_dir": f"{RUNS_DIR}/{spec.name}",
            "overrides": spec.overrides,
        }

    def _finished(self, spec: PointSpec) -> dict[str, Any] | None:
        """The point's record when it already finished with this very spec (else None)."""
        path = self.out / RUNS_DIR / spec.name / POINT_FILE
        if not path.is_file():
            return None
        try:
            rec = _read_json(path)
        except ScratchLLMError:
            return None  # a damaged marker: train the point again
        if not isinstance(rec, dict) or rec.get("val_loss") is None:
            return None
        if rec.get("overrides") != spec.overrides or rec.get("N") != spec.count.n_params:
            raise ScratchLLMError(
                f"{path.parent} was trained with different settings than this sweep plans; "
                "use another --out, or --force to start over"
            )
        return rec

    def _run_point(self, spec: PointSpec, tag: str, stop_at: int | None) -> PointOutcome | None:
        from scratchllm.io import atomic_write_json

        done = self._finished(spec)
        tag = f"{tag} {spec.name}: N={spec.count.n_params:,}, D={spec.tokens:,} tokens ({spec.steps} steps)"
        if done is not None:
            self.records[spec.name] = done
            self.say(f"{tag}: done before, val loss {done['val_loss']:.4f} (skipped)")
            self._skipped += 1
            return None
        run_dir = self.out / RUNS_DIR / spec.name
        resumed = run_dir.is_dir() and any(run_dir.iterdir())
        self.say(f"{tag}{' (continuing an interrupted run)' if resumed else ''} ...")
        t0 = time.perf_counter()
        outcome = self._train(spec, run_dir, stop_at)
        seconds = time.perf_counter() - t0
        if outcome.interrupted:
            return outcome
        if outcome.n_params != spec.count.n_params:  # the planned count must be the trained model's
            raise ScratchLLMError(
                f"{spec.name}: planned {spec.count.n_params:,} non-embedding parameters but trained "
                f"{outcome.n_params:,}; this is a bug, please report it"
            )
        if outcome.val_loss is None or not math.isfinite(outcome.val_loss):
            raise ScratchLLMError(f"{spec.name}: training finished without a finite validation loss")
        rec = self._record(spec, outcome, seconds, resumed)
        atomic_write_json(run_dir / POINT_FILE, rec)
        self.records[spec.name] = rec
        self._trained += 1
        self.say(
            f"    val loss {outcome.val_loss:.4f} in {seconds:.1f} s ({outcome.tokens_per_s:,.0f} tokens/s)"
        )
        return outcome

    def _train(self, spec: PointSpec, run_dir: Path, stop_at: int | None) -> PointOutcome:
        def echo(msg: str) -> None:
            if not msg.startswith("step "):  # the loop's own eval line: the sweep prints its own
                self.say(f"    {msg}")

        return train_point(
            self.recipe, spec.overrides, run_dir, progress=self.progress, echo=echo, stop_at=stop_at
        )

    # ------------------------------------------------------------------ sweep.json
    def document(self, status: str) -> dict[str, Any]:
        from scratchllm import __version__

        plan = self.plan
        assert plan is not None
        points = sorted(self.records.values(), key=lambda r: (r["budget"], r["N"]))
        return {
            "format_version": FORMAT_VERSION,
            "scratchllm_version": __version__,
            "status": status,
            "recipe": _recipe_fingerprint(plan),
            "settings": {
                "data": str(self.recipe.data),
                "preset": self.recipe.preset,
                "config_file": self.recipe.config_file,
                "overrides": [
                    *(f"{k}={v}" for k, v in self.recipe.base_overrides.items()),
                    *self.recipe.overrides,
                ],
                "seed": plan.train_config.seed,
                "budgets": self.budgets,
                "sizes": self.sizes.mode if self.sizes.mode != "list" else [s.name for s in self.sizes.sizes],
                "per_budget": self.per_budget,
                "min_steps": MIN_STEPS,
                "fit_count": self.count,
            },
            "conventions": CONVENTIONS,
            "context_length": plan.context_length,
            "batch_size": plan.train_config.batch_size,
            "tokens_per_step": plan.tokens_per_step,
            "eval_windows": min(plan.eval_steps * plan.train_config.batch_size, EVAL_MAX_WINDOWS),
            "data": plan.data_info,
            "ladder": [
                {"size": s.name, "n_layer": s.n_layer, "n_embd": s.n_embd, "n_head": s.n_head, **c.to_dict()}
                for s, c in plan.ladder
            ],
            "points": points,
            "seconds": round(sum(p.get("seconds", 0.0) for p in points), 1),
        }

    def _write_sweep(self, status: str) -> None:
        from scratchllm.io import atomic_write_json

        atomic_write_json(self.out / SWEEP_FILE, self.document(status))

    # ------------------------------------------------------------------ run
    def run(self, *, stop_at: dict[str, int] | None = None) -> SweepResult:
        """Train every planned point (skipping finished ones), then fit and write the report.

        ``stop_at`` maps point names to a step at which to pause them (as an interruption would).
        """
        from scratchllm.sweep.fit import approach2

        plan = self.plan or self.prepare()
        self._trained = self._skipped = 0
        self._start_dir()
        previous: list[tuple[float, float]] = []
        index, total = 0, len(self.dry_run())
        for c in self.budgets:
            chosen = self._initial_window(plan, c, previous)
            cands = plan.candidates(c)
            widened = 0
            while True:
                for spec in chosen:
                    if spec.name in self.records:
                        continue
                    index += 1
                    outcome = self._run_point(spec, f"[{index}/{total}]", (stop_at or {}).get(spec.name))
                    if outcome is not None and outcome.interrupted:
                        self._write_sweep("interrupted")
                        return self._result(outcome.interrupted)
                    self._write_sweep("running")
                recs = [self.records[s.name] for s in chosen]
                extra = self._widen(chosen, cands, recs) if self.sizes.mode == "auto" else None
                if extra is None or widened >= MAX_WIDEN:
                    break
                edge = f"the minimum at {format_budget(c)} is on the edge of its sizes"
                self.say(f"    {edge}: adding {extra.size.name}")
                chosen = sorted([*chosen, extra], key=lambda p: p.count.n_params)
                widened += 1
                total += 1
            # Where this budget's optimum was: the next budget's window is centred on the trend.
            r2 = approach2(
                [r["N"] for r in recs], [r["val_loss"] for r in recs], [c] * len(recs), _flops_of(recs)
            )
            opt = r2.budgets[0]
            previous.append(
                (c, opt.n_opt if opt.n_opt is not None and opt.bracketed else opt.best_observed["N"])
            )
        self._write_sweep("finished")
        self.say(f"fitting {len(self.records)} points ({self.bootstrap} bootstrap resamples) ...")
        self.fit = self.refit()
        return self._result(None)

    @property
    def _n_key(self) -> str:
        return "N" if self.count == "non-embedding" else "N_total"

    def _widen(
        self, chosen: list[PointSpec], cands: list[PointSpec], recs: list[dict[str, Any]]
    ) -> PointSpec | None:
        """The next size to add when the lowest loss sits at an edge of the budget's sizes."""
        losses = [r["val_loss"] for r in recs]
        best = min(range(len(losses)), key=lambda i: losses[i])
        names = [p.name for p in cands]
        if best == 0:
            i = names.index(chosen[0].name)
            return cands[i - 1] if i > 0 else None
        if best == len(chosen) - 1:
            i = names.index(chosen[-1].name)
            return cands[i + 1] if i + 1 < len(cands) else None
        return None

    def _start_dir(self) -> None:
        """Create the directory, or (with --force) remove what an earlier sweep wrote there."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.force:
            for name in OUTPUTS:
                p = self.out / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
            from scratchllm.sweep.plots import PLOTS

            for name in PLOTS:
                (self.out / name).unlink(missing_ok=True)
            self.force = False  # only once: a resumed run() must not wipe what this one trained

    def refit(self) -> dict[str, Any]:
        """Fit the finished points and write fit.json, the Markdown table and the plots."""
        from scratchllm.io import atomic_write_json, atomic_write_text
        from scratchllm.sweep.fit import FitInput, fit_sweep
        from scratchllm.sweep.plots import write_plots
        from scratchllm.sweep.report import markdown_report

        doc = self.document("finished")
        fi = FitInput.from_points(doc["points"], n_key=self._n_key)
        fit = fit_sweep(fi, bootstrap_samples=self.bootstrap, level=self.level, seed=doc["settings"]["seed"])
        fit = {
            "format_version": FORMAT_VERSION,
            "count": self.count,
            "conventions": CONVENTIONS,
            "context_length": doc["context_length"],
            "tokens_per_step": doc["tokens_per_step"],
            "ladder": doc["ladder"],
            "flops_per_token": [[float(n), float(f)] for n, f in fi.flops.pairs],
            **fit,
        }
        atomic_write_json(self.out / FIT_FILE, fit)
        atomic_write_text(self.out / TABLE_FILE, markdown_report(doc, fit))
        self.artefacts = write_plots(doc, fit, self.out)
        return fit

    def _result(self, interrupted: str | None) -> SweepResult:
        return SweepResult(
            out=self.out,
            points=sorted(self.records.values(), key=lambda r: (r["budget"], r["N"])),
            fit=getattr(self, "fit", None) if interrupted is None else None,
            interrupted=interrupted,
            trained=self._trained,
            skipped=self._skipped,
            seconds=time.perf_counter() - self._t0,
            artefacts=list(getattr(self, "artefacts", [])),
        )


def _flops_of(recs: list[dict[str, Any]]) -> Any:
    from scratchllm.sweep.fit import FlopsMap

    return FlopsMap([(r["N"], r["flops_per_token"]) for r in recs])


def prepare_default_data(out: Path) -> Path:
    """Char-level shards of the embedded corpus in ``out/data``, as ``scratchllm demo`` makes them
    (reused when they are already there: ``meta.json`` is written last, so it marks them complete)."""
    data_dir = Path(out) / DATA_DIR
    if (data_dir / "meta.json").is_file():
        return data_dir
    from scratchllm.data.corpus import default_corpus
    from scratchllm.data.prepare import prepare
    from scratchllm.tokenizer import CharTokenizer

    prepare(CharTokenizer.train(default_corpus()), None, data_dir, force=True, progress=False)
    return data_dir
