"""Fitting scaling laws to a sweep: the two estimators of Hoffmann et al. (2022, "Chinchilla").

A sweep gives points ``(N, D, C, L)``: a model with ``N`` parameters trained on ``D`` tokens, which
cost ``C`` FLOPs and reached validation loss ``L``. Two questions: how does the best loss fall with
compute, and how should a budget be split between a bigger model and more tokens?

**Approach 2 — iso-FLOP profiles.** All points of one budget ``C`` cost the same compute, so the
curve of ``L`` against ``log N`` is an *iso-FLOP profile*: small models are under-sized, big ones
under-trained, and the bottom of the valley is the best split. Fit a parabola
``L = c2·(ln N)² + c1·ln N + c0`` per budget; its vertex is the optimal size ``N*`` (and
``D* = C / flops_per_token(N*)``). Across budgets, straight lines in log-log space give the power
laws ``N* = k_N·C^a`` and ``D* = k_D·C^b``. Chinchilla found ``a ≈ b ≈ 0.5``: double the compute,
grow the model and the data by √2 each.

**Approach 3 — a parametric loss.** Fit every point at once with

    L(N, D) = E + A / N^α + B / D^β

``E`` is the loss of a perfect model (the entropy of the text), ``A/N^α`` the penalty for a finite
model and ``B/D^β`` for finite data. Like the paper we fit ``log L`` (so every point weighs the
same whatever its loss), write the model as ``log L̂ = LSE(a − α·ln N, b − β·ln D, e)`` with
``A = eᵃ, B = eᵇ, E = eᵉ`` (positive by construction) and ``α, β ≥ 0``, minimise the **Huber**
loss of the residuals ``log L̂ − log L`` (δ = 10⁻³: robust to a few bad points) with **L-BFGS**,
started from a grid of initial values because the objective has local minima. Minimising ``L(N, D)`` under
``C = 6ND`` gives ``N* = G·(C/6)^(β/(α+β))``: the exponents ``a = β/(α+β)``, ``b = α/(α+β)``.

**Uncertainty.** A handful of points cannot pin five constants down, so every constant comes with a
**bootstrap** interval: draw a new data set from the one measured, refit, repeat, and report
percentiles of the refitted values. Approach 3 resamples the points with replacement; approach 2
adds resampled parabola residuals back onto the fitted parabolas (resampling 4–6 points within a
budget mostly leaves too few distinct sizes for a parabola). Wide intervals are the honest answer
of a small sweep; the paper's own table reports 10th–90th percentiles, and so do we by default.

Everything here is numpy + scipy on plain arrays; nothing knows about models or training.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scratchllm.errors import ScratchLLMError

#: The Huber threshold on log-loss residuals used by Hoffmann et al. (2022).
HUBER_DELTA = 1e-3
#: Their grid of initial values for L-BFGS (A = exp(a), B = exp(b), E = exp(e)).
INIT_GRID: dict[str, tuple[float, ...]] = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}
#: L-BFGS runs of the main fit (chosen from the grid by :func:`select_starts`).
MAX_STARTS = 64
#: How many distinct optima of the main fit each bootstrap refit starts from.
BOOTSTRAP_STARTS = 4


# ============================================================================ a FLOPs-per-token map
@dataclass
class FlopsMap:
    """Training FLOPs per token as a function of N, from the models a sweep trained.

    The exact count depends on the shape (layers, width, context), not on N alone. Between the
    sweep's models it is interpolated smoothly (a monotone cubic in log-log space, exact at every
    model); above them it continues as ``6N + k·N^γ`` (the extra head and attention FLOPs grow
    like the width, more slowly than N), below them along the end slope. With
    ``pairs=[(N, 6N), ...]`` it is exactly ``6N``: the papers' ``C = 6ND``.
    """

    pairs: list[tuple[float, float]]

    def __post_init__(self) -> None:
        uniq: dict[float, float] = {}
        for n, f in self.pairs:
            uniq[float(n)] = float(f)
        if not uniq or any(n <= 0 or f <= 0 for n, f in uniq.items()):
            raise ScratchLLMError("a FLOPs-per-token map needs at least one (N > 0, flops > 0) pair")
        self.pairs = sorted(uniq.items())
        self._xs = np.log([p[0] for p in self.pairs])
        self._ys = np.log([p[1] for p in self.pairs])
        self._pchip = None
        if len(self.pairs) >= 2:
            from scipy.interpolate import PchipInterpolator

            self._pchip = PchipInterpolator(self._xs, self._ys, extrapolate=False)
            self._slopes = (float(self._pchip(self._xs[0], 1)), float(self._pchip(self._xs[-1], 1)))
        # Above the largest model: 6N plus the excess, growing like N^gamma (from the last two).
        n_hi, f_hi = self.pairs[-1]
        self._excess_hi = f_hi - 6 * n_hi
        self._gamma = 0.5
        if len(self.pairs) >= 2:
            n_lo2, f_lo2 = self.pairs[-2]
            e2 = f_lo2 - 6 * n_lo2
            if self._excess_hi > 0 and e2 > 0:
                self._gamma = float(
                    np.clip(math.log(self._excess_hi / e2) / math.log(n_hi / n_lo2), 0.0, 1.0)
                )

    @classmethod
    def six_n(cls) -> FlopsMap:
        """The papers' approximation, ``6N`` FLOPs per token."""
        return cls([(1.0, 6.0), (1e12, 6e12)])

    def _one(self, n: float) -> float:
        x = math.log(n)
        lo, hi = self._xs[0], self._xs[-1]
        if self._pchip is not None and lo <= x <= hi:
            return math.exp(float(self._pchip(x)))
        if x > hi:
            n_hi, f_hi = self.pairs[-1]
            if self._excess_hi >= 0:
                return 6 * n + self._excess_hi * (n / n_hi) ** self._gamma
            slope = self._slopes[1] if self._pchip is not None else 1.0
            return math.exp(self._ys[-1] + slope * (x - hi))
        slope = self._slopes[0] if self._pchip is not None else 1.0
        return math.exp(self._ys[0] + slope * (x - lo))

    def __call__(self, n: float | np.ndarray) -> np.ndarray | float:
        arr = np.asarray(n, dtype=float)
        if arr.ndim == 0:
            return self._one(float(arr))
        return np.array([self._one(float(v)) for v in arr.ravel()]).reshape(arr.shape)


# ============================================================================ approach 2
@dataclass
class Parabola:
    """``L = c2·x² + c1·x + c0`` with ``x = ln N`` (one budget's iso-FLOP profile)."""

    coef: tuple[float, float, float]
    #: the vertex, when the parabola opens upwards (a minimum exists).
    x_min: float | None
    loss_min: float | None
    residuals: list[float]

    @property
    def convex(self) -> bool:
        return self.x_min is not None

    def __call__(self, x: np.ndarray | float) -> np.ndarray | float:
        return np.polyval(self.coef, x)


def fit_parabola(log_n: Sequence[float], loss: Sequence[float]) -> Parabola:
    """Least-squares parabola through ``(ln N, L)``; needs three distinct sizes."""
    x = np.asarray(log_n, dtype=float)
    y = np.asarray(loss, dtype=float)
    if len(np.unique(x)) < 3:
        raise ScratchLLMError("an iso-FLOP parabola needs at least 3 different model sizes in the budget")
    c2, c1, c0 = np.polyfit(x, y, 2)
    residuals = (y - np.polyval([c2, c1, c0], x)).tolist()
    if c2 <= 0:
        return Parabola((c2, c1, c0), None, None, residuals)
    x_min = -c1 / (2 * c2)
    return Parabola((c2, c1, c0), float(x_min), float(np.polyval([c2, c1, c0], x_min)), residuals)


def fit_power_law(c: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """``y = k·C^exponent`` by least squares in log-log space; returns ``(exponent, k)``."""
    lc, ly = np.log(np.asarray(c, dtype=float)), np.log(np.asarray(y, dtype=float))
    if len(np.unique(lc)) < 2:
        raise ScratchLLMError("a power law in C needs at least 2 different budgets")
    slope, intercept = np.polyfit(lc, ly, 1)
    return float(slope), float(math.exp(intercept))


@dataclass
class IsoFlopBudget:
    budget: float
    n_points: int
    parabola: Parabola | None
    n_opt: float | None
    d_opt: float | None
    loss_opt: float | None
    #: the vertex lies inside the range of sizes trained at this budget (else it is extrapolated).
    bracketed: bool
    best_observed: dict[str, float]
    note: str | None = None


@dataclass
class Approach2:
    budgets: list[IsoFlopBudget]
    a: float | None = None
    k_n: float | None = None
    b: float | None = None
    k_d: float | None = None

    @property
    def usable(self) -> list[IsoFlopBudget]:
        return [b for b in self.budgets if b.n_opt is not None]


def _group(budget: np.ndarray) -> list[tuple[float, np.ndarray]]:
    return [(float(c), np.flatnonzero(budget == c)) for c in np.unique(budget)]


def approach2(
    n: Sequence[float],
    loss: Sequence[float],
    budget: Sequence[float],
    flops: FlopsMap,
) -> Approach2:
    """Iso-FLOP parabolas per budget, then power laws ``N* ∝ C^a`` and ``D* ∝ C^b`` across budgets.

    A budget whose parabola has fewer than 3 sizes or opens downwards gets no optimum (``note``
    says why) and is left out of the power laws. ``a`` and ``b`` need 2 budgets with an optimum.
    """
    n_arr, l_arr, c_arr = (np.asarray(v, dtype=float) for v in (n, loss, budget))
    out = Approach2(budgets=[])
    for c, idx in _group(c_arr):
        best = int(idx[np.argmin(l_arr[idx])])
        entry = IsoFlopBudget(
            budget=c,
            n_points=len(idx),
            parabola=None,
            n_opt=None,
            d_opt=None,
            loss_opt=None,
            bracketed=False,
            best_observed={
                "N": float(n_arr[best]),
                "D": float(c / flops(n_arr[best])),
                "loss": float(l_arr[best]),
            },
        )
        x = np.log(n_arr[idx])
        if len(np.unique(x)) < 3:
            entry.note = f"only {len(np.unique(x))} model size(s): a parabola needs 3"
        else:
            par = fit_parabola(x, l_arr[idx])
            entry.parabola = par
            if not par.convex:
                entry.note = "the losses do not curve upwards (no minimum): widen the range of sizes"
            else:
                entry.n_opt = float(math.exp(par.x_min))
                entry.d_opt = float(c / flops(entry.n_opt))
                entry.loss_opt = par.loss_min
                entry.bracketed = bool(x.min() <= par.x_min <= x.max())
                if not entry.bracketed:
                    side = "smallest" if par.x_min < x.min() else "largest"
                    entry.note = (
                        f"the minimum lies beyond the {side} model trained at this budget "
                        "(extrapolated): add sizes on that side"
                    )
        out.budgets.append(entry)
    usable = out.usable
    if len({b.budget for b in usable}) >= 2:
        cs = [b.budget for b in usable]
        out.a, out.k_n = fit_power_law(cs, [b.n_opt for b in usable])
        out.b, out.k_d = fit_power_law(cs, [b.d_opt for b in usable])
    return out


# ============================================================================ approach 3
@dataclass
class Parametric:
    """``L(N, D) = E + A/N^α + B/D^β`` (fitted in log space with a Huber loss)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    #: the Huber objective at the optimum (sum over points, in units of δ).
    objective: float = float("nan")
    #: the raw parameters (a, b, e, alpha, beta) of the best start, and the best few starts.
    theta: tuple[float, ...] = ()
    best_starts: list[tuple[float, ...]] = field(default_factory=list)
    n_starts: int = 0
    converged_starts: int = 0

    def __call__(self, n: Any, d: Any) -> Any:
        n = np.asarray(n, dtype=float)
        d = np.asarray(d, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    @property
    def has_optimum(self) -> bool:
        """Both exponents clearly positive (else the loss never trades N against D)."""
        return self.alpha > 1e-6 and self.beta > 1e-6 and self.A > 1e-12 and self.B > 1e-12

    @property
    def a(self) -> float:
        """Exponent of ``N* ∝ C^a`` implied under ``C = 6ND``: ``β / (α + β)`` (NaN if both are 0)."""
        total = self.alpha + self.beta
        return self.beta / total if total > 0 else float("nan")

    @property
    def b(self) -> float:
        """Exponent of ``D* ∝ C^b`` implied under ``C = 6ND``: ``α / (α + β)`` (NaN if both are 0)."""
        total = self.alpha + self.beta
        return self.alpha / total if total > 0 else float("nan")

    def optimum(self, budget: float, flops: FlopsMap) -> tuple[float, float, float]:
        """``(N*, D*, L*)`` minimising the loss at compute ``budget`` with ``D = C / flops(N)``."""
        from scipy.optimize import minimize_scalar

        if not self.has_optimum:
            raise ScratchLLMError(
                f"the parametric fit (A = {self.A:.3g}, α = {self.alpha:.3g}, B = {self.B:.3g}, "
                f"β = {self.beta:.3g}) has a vanishing N or D term, so it predicts no compute-optimal size"
            )

        def loss_at(x: float) -> float:
            n = math.exp(x)
            with np.errstate(all="ignore"):
                value = float(self(n, budget / flops(n)))
            return value if math.isfinite(value) else math.inf

        # Under C = 6ND the optimum is closed-form (computed in logs: no under/overflow); it
        # centres the search, which then follows the real flops_per_token.
        log_g = (math.log(self.alpha) + math.log(self.A) - math.log(self.beta) - math.log(self.B)) / (
            self.alpha + self.beta
        )
        x0 = min(max(log_g + self.a * math.log(budget / 6), 0.0), 70.0)
        lo, hi = max(x0 - 25, -5.0), x0 + 25
        res = minimize_scalar(loss_at, bounds=(lo, hi), method="bounded", options={"xatol": 1e-9})
        if not (lo + 1e-3 < float(res.x) < hi - 1e-3):
            raise ScratchLLMError(
                "the parametric fit has no compute-optimal size inside 1 to 1e30 parameters"
            )
        n_opt = math.exp(float(res.x))
        d_opt = budget / float(flops(n_opt))
        return n_opt, d_opt, float(res.fun)


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float):
    """Huber loss (in units of δ) of ``LSE(a − α ln N, b − β ln D, e) − ln L`` and its gradient."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(axis=0)
    w = np.exp(terms - top)
    s = w.sum(axis=0)
    pred = top + np.log(s)
    r = pred - log_l
    abs_r = np.abs(r)
    small = abs_r <= delta
    value = np.where(small, 0.5 * r * r / delta, abs_r - 0.5 * delta).sum()
    dr = np.where(small, r / delta, np.sign(r))  # d huber / d r
    p = w / s  # softmax weights: d pred / d term
    grad = np.array(
        [
            (dr * p[0]).sum(),
            (dr * p[1]).sum(),
            (dr * p[2]).sum(),
            -(dr * p[0] * log_n).sum(),
            -(dr * p[1] * log_d).sum(),
        ]
    )
    return float(value), grad


def _lbfgs(start: Sequence[float], args: tuple) -> tuple[np.ndarray, float, bool]:
    from scipy.optimize import minimize

    res = minimize(
        _objective,
        np.asarray(start, dtype=float),
        args=args,
        jac=True,
        method="L-BFGS-B",
        # The exponents stay >= 0: a loss that grows with N or D is not what the law describes.
        bounds=[(None, None), (None, None), (None, None), (0.0, None), (0.0, None)],
        # Tight tolerances: the objective is small (residuals of ~1e-2), and the loose defaults
        # can stop well short of the optimum.
        # (Looser tolerances moved the bootstrap intervals by 5-30 % on the default sweep: its
        # objective is flat along A, B, E, so a refit must really converge to mean anything.)
        options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10, "maxcor": 20},
    )
    return res.x, float(res.fun), bool(res.success)


def init_grid(grid: dict[str, Sequence[float]] | None = None) -> np.ndarray:
    """Every combination of the grid's initial values, as rows ``(a, b, e, alpha, beta)``."""
    g = grid or INIT_GRID
    mesh = np.meshgrid(g["a"], g["b"], g["e"], g["alpha"], g["beta"], indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def grid_objective(thetas: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float):
    """The Huber objective at many parameter rows at once (vectorised; no gradient)."""
    a, b, e, alpha, beta = (thetas[:, i : i + 1] for i in range(5))
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(thetas), len(log_n)))])
    r = np.logaddexp.reduce(terms, axis=0) - log_l
    abs_r = np.abs(r)
    return np.where(abs_r <= delta, 0.5 * r * r / delta, abs_r - 0.5 * delta).sum(axis=1)


def select_starts(grid_rows: np.ndarray, values: np.ndarray, max_starts: int) -> np.ndarray:
    """Which grid rows to start L-BFGS from: for every ``(α, β)`` of the grid the ``(a, b, e)`` that
    fits best there (local minima live mostly along the exponents), then the best rows overall."""
    order = np.argsort(values, kind="stable")
    chosen: list[int] = []
    seen_exponents: set[tuple[float, float]] = set()
    for i in order:
        key = (float(grid_rows[i, 3]), float(grid_rows[i, 4]))
        if key not in seen_exponents:
            seen_exponents.add(key)
            chosen.append(int(i))
    chosen = chosen[:max_starts]
    for i in order:
        if len(chosen) >= max_starts:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return grid_rows[chosen]


def fit_parametric(
    n: Sequence[float],
    d: Sequence[float],
    loss: Sequence[float],
    *,
    starts: np.ndarray | Sequence[Sequence[float]] | None = None,
    grid: dict[str, Sequence[float]] | None = None,
    max_starts: int = MAX_STARTS,
    delta: float = HUBER_DELTA,
    keep_best: int = BOOTSTRAP_STARTS,
) -> Parametric:
    """Approach 3: L-BFGS from many initial values, keep the lowest objective.

    ``starts`` (rows ``(a, b, e, alpha, beta)``) are used as given. Otherwise the objective is
    evaluated at every point of ``grid`` (default :data:`INIT_GRID`, the paper's 4,500 points) and
    L-BFGS runs from ``max_starts`` of them (:func:`select_starts`); ``max_starts=0`` runs it from
    every grid point (slow: minutes). Needs at least 5 points (there are 5 constants).
    """
    log_n, log_d, log_l = (np.log(np.asarray(v, dtype=float)) for v in (n, d, loss))
    if len(log_l) < 5:
        raise ScratchLLMError(
            f"the parametric fit has 5 constants and needs at least 5 points (got {len(log_l)})"
        )
    if not np.all(np.isfinite(log_l)):
        raise ScratchLLMError("the parametric fit needs finite, positive losses")
    if starts is None:
        rows = init_grid(grid)
        starts = rows
        if max_starts and len(rows) > max_starts:
            starts = select_starts(rows, grid_objective(rows, log_n, log_d, log_l, delta), max_starts)
    starts = np.asarray(starts, dtype=float)
    args = (log_n, log_d, log_l, delta)
    results = []
    converged = 0
    for start in starts:
        theta, value, ok = _lbfgs(start, args)
        converged += ok
        if np.all(np.isfinite(theta)) and math.isfinite(value):
            results.append((value, theta))
    if not results:
        raise ScratchLLMError("the parametric fit did not converge from any initial value")
    results.sort(key=lambda r: r[0])
    value, theta = results[0]
    a, b, e, alpha, beta = (float(t) for t in theta)
    distinct: list[tuple[float, ...]] = []
    for _, th in results:
        t = tuple(float(x) for x in th)
        if all(np.max(np.abs(np.subtract(t, u))) > 1e-3 for u in distinct):
            distinct.append(t)
        if len(distinct) >= keep_best:
            break
    return Parametric(
        E=math.exp(e),
        A=math.exp(a),
        B=math.exp(b),
        alpha=alpha,
        beta=beta,
        objective=value,
        theta=(a, b, e, alpha, beta),
        best_starts=distinct,
        n_starts=len(starts),
        converged_starts=converged,
    )


# ============================================================================ bootstrap
def percentile_interval(values: Sequence[float], level: float) -> list[float] | None:
    """The central ``level`` interval of bootstrap values (None when there are none)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return None
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def bootstrap(
    fn: Callable[[Any], dict[str, float] | None],
    draw: Callable[[np.random.Generator], Any],
    *,
    samples: int,
    seed: int,
) -> tuple[dict[str, list[float]], int]:
    """Call ``fn(draw(rng))`` ``samples`` times; ``fn`` returns named values, or None when the
    resample cannot be fitted (counted as failed). Returns the values (aligned by draw) and the
    number of failures."""
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    failed = 0
    for _ in range(samples):
        try:
            got = fn(draw(rng))
        except ScratchLLMError:
            got = None
        if got is None:
            failed += 1
            continue
        for k, v in got.items():
            values.setdefault(k, []).append(v)
    return values, failed


def parabola_residual_draw(
    r2: Approach2, n: np.ndarray, loss: np.ndarray, budget: np.ndarray
) -> Callable[[np.random.Generator], np.ndarray] | None:
    """A residual bootstrap for approach 2: new losses = each budget's fitted parabola + residuals
    drawn (with replacement) from all budgets' residuals, inflated by ``sqrt(n / (n - p))`` for
    the ``p = 3`` fitted coefficients per parabola. (Resampling *points* within a budget of 4-6
    sizes mostly repeats sizes until no parabola fits.) None when no residual is left over."""
    fitted = loss.copy()
    resid: list[float] = []
    n_coef = 0
    for bud in r2.budgets:
        if bud.parabola is None:
            continue
        idx = np.flatnonzero(budget == bud.budget)
        fitted[idx] = bud.parabola(np.log(n[idx]))
        resid += bud.parabola.residuals
        n_coef += 3
    dof = len(resid) - n_coef
    if dof <= 0:
        return None
    pool = np.asarray(resid) * math.sqrt(len(resid) / dof)
    mask = np.isin(budget, [b.budget for b in r2.budgets if b.parabola is not None])

    def draw(rng: np.random.Generator) -> np.ndarray:
        out = loss.copy()
        out[mask] = fitted[mask] + rng.choice(pool, size=int(mask.sum()), replace=True)
        return out

    return draw


# ============================================================================ the whole fit
@dataclass
class FitInput:
    """The sweep's points as arrays (one entry per finished point)."""

    n: np.ndarray
    d: np.ndarray
    loss: np.ndarray
    budget: np.ndarray
    flops: FlopsMap

    @classmethod
    def from_points(cls, points: Sequence[dict[str, Any]], *, n_key: str = "N") -> FitInput:
        """From sweep.json point records: ``N`` (or ``n_key``), ``D``, ``budget``, ``val_loss``,
        ``flops_per_token``."""
        pts = [p for p in points if p.get("val_loss") is not None]
        bad = [p.get("name", "?") for p in pts if not (math.isfinite(p["val_loss"]) and p["val_loss"] > 0)]
        if bad:
            raise ScratchLLMError(
                f"points with a non-finite validation loss cannot be fitted: {', '.join(bad)}"
            )
        return cls(
            n=np.array([p[n_key] for p in pts], dtype=float),
            d=np.array([p["D"] for p in pts], dtype=float),
            loss=np.array([p["val_loss"] for p in pts], dtype=float),
            budget=np.array([p["budget"] for p in pts], dtype=float),
            flops=FlopsMap([(p[n_key], p["flops_per_token"]) for p in pts]),
        )


def _approach2_values(fi: FitInput, loss: np.ndarray) -> dict[str, float] | None:
    r = approach2(fi.n, loss, fi.budget, fi.flops)
    if r.a is None or len(r.usable) < len(np.unique(fi.budget)):
        return None  # a budget lost its minimum in this resample
    vals = {"a": r.a, "b": r.b, "k_N": r.k_n, "k_D": r.k_d}
    for bud in r.usable:
        vals[f"N_opt@{bud.budget:g}"] = bud.n_opt
        vals[f"D_opt@{bud.budget:g}"] = bud.d_opt
        vals[f"tokens_per_param@{bud.budget:g}"] = bud.d_opt / bud.n_opt
    return vals


def _approach3_values(
    fi: FitInput, idx: np.ndarray, starts: list[tuple[float, ...]], budgets: list[float]
) -> dict[str, float] | None:
    p = fit_parametric(fi.n[idx], fi.d[idx], fi.loss[idx], starts=starts)
    vals = {"E": p.E, "A": p.A, "B": p.B, "alpha": p.alpha, "beta": p.beta, "a": p.a, "b": p.b}
    for c in budgets:
        # A resample without an optimum still counts for E, A, B, α, β (dropping it would
        # narrow their intervals); it only adds nothing to the optima's.
        try:
            n_opt, d_opt, _ = p.optimum(c, fi.flops)
        except ScratchLLMError:
            break
        else:
            vals[f"N_opt@{c:g}"] = n_opt
            vals[f"D_opt@{c:g}"] = d_opt
            vals[f"tokens_per_param@{c:g}"] = d_opt / n_opt
    return vals


def _with_interval(value: float | None, boots: dict[str, list[float]], key: str, level: float) -> dict:
    if value is not None and not math.isfinite(value):
        value = None  # JSON has no NaN
    return {"value": value, "interval": percentile_interval(boots.get(key, []), level)}


def fit_sweep(
    fi: FitInput,
    *,
    bootstrap_samples: int = 200,
    level: float = 0.8,
    seed: int = 0,
    grid: dict[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Approaches 2 and 3 with bootstrap intervals, as one JSON-able dict (what fit.json holds)."""
    if not 0 < level < 1:
        raise ScratchLLMError(f"the interval level must be between 0 and 1 (got {level})")
    if bootstrap_samples < 0:
        raise ScratchLLMError(f"--bootstrap must be >= 0 (got {bootstrap_samples})")
    budgets = sorted({float(c) for c in fi.budget})
    all_idx = np.arange(len(fi.loss))
    out: dict[str, Any] = {
        "points": len(fi.loss),
        "budgets": budgets,
        "bootstrap": {"samples": bootstrap_samples, "level": level, "seed": seed},
    }

    # ---- approach 2 ----
    r2 = approach2(fi.n, fi.loss, fi.budget, fi.flops)
    draw2 = parabola_residual_draw(r2, fi.n, fi.loss, fi.budget) if r2.a is not None else None
    boots2, failed2 = (
        bootstrap(lambda loss: _approach2_values(fi, loss), draw2, samples=bootstrap_samples, seed=seed)
        if draw2 is not None and bootstrap_samples
        else ({}, 0)
    )
    per_budget = []
    for bud in r2.budgets:
        row: dict[str, Any] = {
            "budget": bud.budget,
            "points": bud.n_points,
            "parabola_ln_n": list(bud.parabola.coef) if bud.parabola else None,
            "residuals": bud.parabola.residuals if bud.parabola else None,
            "N_opt": _with_interval(bud.n_opt, boots2, f"N_opt@{bud.budget:g}", level),
            "D_opt": _with_interval(bud.d_opt, boots2, f"D_opt@{bud.budget:g}", level),
            "tokens_per_param": _with_interval(
                bud.d_opt / bud.n_opt if bud.n_opt else None,
                boots2,
                f"tokens_per_param@{bud.budget:g}",
                level,
            ),
            "loss_opt": bud.loss_opt,
            "bracketed": bud.bracketed,
            "best_observed": bud.best_observed,
        }
        if bud.note:
            row["note"] = bud.note
        per_budget.append(row)
    out["approach2"] = {
        "per_budget": per_budget,
        "a": _with_interval(r2.a, boots2, "a", level),
        "b": _with_interval(r2.b, boots2, "b", level),
        "k_N": _with_interval(r2.k_n, boots2, "k_N", level),
        "k_D": _with_interval(r2.k_d, boots2, "k_D", level),
        "bootstrap_failed": failed2,
        "bootstrap_method": "residual (pooled parabola residuals added back to the fitted parabolas)",
    }
    if r2.a is not None and draw2 is None:
        out["approach2"]["note"] = (
            "no interval: every budget has exactly 3 sizes, so no residual is left over"
        )
    if r2.a is None:
        out["approach2"]["note"] = (
            "needs at least 2 budgets whose iso-FLOP profile has a minimum (3+ sizes, curving upwards)"
        )

    # ---- approach 3 ----
    if len(fi.loss) < 5:
        out["approach3"] = {"note": f"needs at least 5 points (got {len(fi.loss)})"}
        return out
    p = fit_parametric(fi.n, fi.d, fi.loss, grid=grid)
    boots3, failed3 = (
        bootstrap(
            lambda idx: _approach3_values(fi, idx, p.best_starts, budgets),
            lambda rng: rng.choice(all_idx, size=len(all_idx), replace=True),
            samples=bootstrap_samples,
            seed=seed + 1,
        )
        if bootstrap_samples
        else ({}, 0)
    )
    pred = p(fi.n, fi.d)
    log_res = np.log(pred) - np.log(fi.loss)
    a3: dict[str, Any] = {
        name: _with_interval(getattr(p, name), boots3, name, level)
        for name in ("E", "A", "B", "alpha", "beta", "a", "b")
    }
    a3_budgets = []
    no_optimum = None
    for c in budgets:
        try:
            n_opt, d_opt, l_opt = p.optimum(c, fi.flops)
        except ScratchLLMError as err:
            no_optimum = str(err)
            a3_budgets = []
            break
        else:
            a3_budgets.append(
                {
                    "budget": c,
                    "N_opt": _with_interval(n_opt, boots3, f"N_opt@{c:g}", level),
                    "D_opt": _with_interval(d_opt, boots3, f"D_opt@{c:g}", level),
                    "tokens_per_param": _with_interval(
                        d_opt / n_opt, boots3, f"tokens_per_param@{c:g}", level
                    ),
                    "loss_opt": l_opt,
                }
            )
    if no_optimum:
        a3["note"] = no_optimum
    a3.update(
        {
            "per_budget": a3_budgets,
            "predicted": pred.tolist(),
            "log_residuals": log_res.tolist(),
            "rms_log_residual": float(np.sqrt(np.mean(log_res**2))),
            "max_abs_log_residual": float(np.max(np.abs(log_res))),
            "huber_delta": HUBER_DELTA,
            "objective": p.objective,
            "theta": list(p.theta),
            "starts": p.n_starts,
            "converged_starts": p.converged_starts,
            "bootstrap_failed": failed3,
            "bootstrap_method": "case resampling of all points",
        }
    )
    out["approach3"] = a3
    # The raw resamples, aligned by draw: `--plan` turns them into intervals at any budget.
    out["bootstrap"]["samples"] = {
        "approach2": {k: boots2.get(k, []) for k in ("a", "k_N", "b", "k_D")},
        "approach3": {k: boots3.get(k, []) for k in ("E", "A", "B", "alpha", "beta")},
    }
    return out


def parametric_from_fit(fit: dict[str, Any]) -> Parametric | None:
    """The approach-3 law stored in a fit.json document (None when there is none)."""
    a3 = fit.get("approach3") or {}
    try:
        return Parametric(**{k: float(a3[k]["value"]) for k in ("E", "A", "B", "alpha", "beta")})
    except (KeyError, TypeError, ValueError):
        return None


# ============================================================================ planning a budget
def plan_budget(fit: dict[str, Any], budget: float) -> dict[str, Any]:
    """The compute-optimal ``N`` and ``D`` for ``budget`` FLOPs from a finished fit (fit.json).

    Approach 2 evaluates its power laws ``N* = k_N·C^a``, ``D* = k_D·C^b``; approach 3 minimises
    its ``L(N, D)`` along ``D = C / flops_per_token(N)``. Intervals come from the stored bootstrap
    resamples. ``extrapolation`` says how far the budget lies outside the fitted ones (1 = inside).
    """
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise ScratchLLMError(f"--budget must be a positive number of FLOPs (got {budget!r})")
    level = float((fit.get("bootstrap") or {}).get("level", 0.8))
    samples = (fit.get("bootstrap") or {}).get("samples") or {}
    budgets = [float(c) for c in fit.get("budgets") or []]
    flops = FlopsMap([tuple(p) for p in fit.get("flops_per_token") or []] or FlopsMap.six_n().pairs)
    out: dict[str, Any] = {"budget": budget, "level": level, "count": fit.get("count", "non-embedding")}
    if budgets:
        lo, hi = min(budgets), max(budgets)
        out["fitted_budgets"] = [lo, hi]
        out["extrapolation"] = max(budget / hi, lo / budget, 1.0)

    a2 = fit.get("approach2") or {}
    a, k_n = (a2.get(k, {}).get("value") for k in ("a", "k_N"))
    b, k_d = (a2.get(k, {}).get("value") for k in ("b", "k_D"))
    if None not in (a, k_n, b, k_d):
        s2 = samples.get("approach2") or {}
        n_s = [k * budget**e for k, e in zip(s2.get("k_N", []), s2.get("a", []))]
        d_s = [k * budget**e for k, e in zip(s2.get("k_D", []), s2.get("b", []))]
        n_opt, d_opt = k_n * budget**a, k_d * budget**b
        out["approach2"] = {
            "N_opt": {"value": n_opt, "interval": percentile_interval(n_s, level)},
            "D_opt": {"value": d_opt, "interval": percentile_interval(d_s, level)},
            "tokens_per_param": {
                "value": d_opt / n_opt,
                "interval": percentile_interval([d / n for n, d in zip(n_s, d_s)], level),
            },
        }
    law = parametric_from_fit(fit)
    if law is not None and law.has_optimum:
        n_opt, d_opt, l_opt = law.optimum(budget, flops)
        s3 = samples.get("approach3") or {}
        draws = list(zip(*(s3.get(k, []) for k in ("E", "A", "B", "alpha", "beta"))))
        opts = []
        for E, A, B, alpha, beta in draws:
            with contextlib.suppress(ScratchLLMError), np.errstate(all="ignore"):
                opts.append(Parametric(E, A, B, alpha, beta).optimum(budget, flops))
        out["approach3"] = {
            "N_opt": {"value": n_opt, "interval": percentile_interval([o[0] for o in opts], level)},
            "D_opt": {"value": d_opt, "interval": percentile_interval([o[1] for o in opts], level)},
            "tokens_per_param": {
                "value": d_opt / n_opt,
                "interval": percentile_interval([o[1] / o[0] for o in opts], level),
            },
            "loss": l_opt,
        }
    if "approach2" not in out and "approach3" not in out:
        why2 = a2.get("note") or "has no power laws"
        why3 = (fit.get("approach3") or {}).get("note")
        if why3 is None and law is not None:
            why3 = (
                f"A = {law.A:.3g}, α = {law.alpha:.3g}, B = {law.B:.3g}, β = {law.beta:.3g} leave no optimum"
            )
        raise ScratchLLMError(
            f"this fit predicts no optimum (approach 2: {why2}; approach 3: {why3 or 'not fitted'}); "
            "train more sizes per budget, on both sides of the optimum"
        )
    return out
