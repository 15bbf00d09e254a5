"""The scaling-law fits recover known constants from losses made by a known L(N, D)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scratchllm.errors import ScratchLLMError
from scratchllm.sweep.fit import (
    FitInput,
    FlopsMap,
    Parametric,
    approach2,
    fit_parabola,
    fit_parametric,
    fit_sweep,
    plan_budget,
)

# Hoffmann et al. (2022) eq. 10: the law every synthetic loss below is drawn from.
TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
LAW = Parametric(**TRUE)


def isoflop_design(budgets=(1e18, 3e18, 1e19, 3e19, 1e20), per_budget=7, spread=8.0):
    """Chinchilla's design: at each budget, sizes spread (in log N) around the true optimum, C = 6ND."""
    n, d, c = [], [], []
    for budget in budgets:
        n_opt = LAW.optimum(budget, FlopsMap.six_n())[0]
        for f in np.geomspace(1 / spread, spread, per_budget):
            n.append(n_opt * f)
            d.append(budget / (6 * n_opt * f))
            c.append(budget)
    return np.array(n), np.array(d), np.array(c)


def noisy_losses(n, d, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return LAW(n, d) * np.exp(rng.normal(0.0, sigma, len(n)))


def test_parametric_fit_recovers_exact_constants():
    n, d, _ = isoflop_design()
    fit = fit_parametric(n, d, LAW(n, d))
    for key, value in TRUE.items():
        assert getattr(fit, key) == pytest.approx(value, rel=2e-3), key
    assert fit.objective < 1e-3 and fit.n_starts == 64


def test_parametric_fit_recovers_constants_through_noise():
    n, d, c = isoflop_design()
    loss = noisy_losses(n, d, sigma=0.002, seed=1)
    fit = fit_parametric(n, d, loss)
    assert fit.alpha == pytest.approx(TRUE["alpha"], abs=0.03)
    assert fit.beta == pytest.approx(TRUE["beta"], abs=0.03)
    assert pytest.approx(TRUE["E"], rel=0.05) == fit.E
    # The implied exponents of the compute-optimal frontier: a = beta/(alpha+beta) = 0.45.
    assert fit.a == pytest.approx(0.4516, abs=0.02)
    assert fit.a + fit.b == pytest.approx(1.0)


def test_parametric_fit_is_robust_to_an_outlier():
    """The Huber loss barely moves for one point 20 % off, where least squares would."""
    n, d, _ = isoflop_design()
    loss = LAW(n, d)
    loss[5] *= 1.2
    fit = fit_parametric(n, d, loss)
    assert fit.alpha == pytest.approx(TRUE["alpha"], abs=0.01)
    assert fit.beta == pytest.approx(TRUE["beta"], abs=0.01)


def test_approach2_recovers_the_frontier_exponents():
    n, d, c = isoflop_design()
    loss = noisy_losses(n, d, sigma=0.001, seed=2)
    r = approach2(n, loss, c, FlopsMap.six_n())
    assert all(b.bracketed for b in r.budgets)
    # Under C = 6ND the true law's optimum grows as C^(beta/(alpha+beta)) and D* as C^(alpha/(alpha+beta)).
    assert r.a == pytest.approx(0.4516, abs=0.02)
    assert r.b == pytest.approx(0.5484, abs=0.02)
    assert r.a + r.b == pytest.approx(1.0, abs=1e-9)  # D* = C / 6N* exactly
    for b in r.budgets:
        true_n = LAW.optimum(b.budget, FlopsMap.six_n())[0]
        assert b.n_opt == pytest.approx(true_n, rel=0.15)


def test_parabola_vertex_and_its_failures():
    x = np.log([1e3, 1e4, 1e5, 1e6])
    par = fit_parabola(x, 0.5 * (x - math.log(3e4)) ** 2 + 2.0)
    assert math.exp(par.x_min) == pytest.approx(3e4) and par.loss_min == pytest.approx(2.0)
    assert not fit_parabola(x, -(x**2)).convex
    with pytest.raises(ScratchLLMError, match="at least 3"):
        fit_parabola(x[:2], [1.0, 2.0])
    # A budget whose losses only fall is flagged (no minimum), one whose minimum lies outside the
    # sizes is marked as extrapolated, and a budget with 2 sizes has no parabola at all.
    budgets = [1.0] * 3 + [2.0] * 3 + [3.0] * 2
    n = [1e3, 1e4, 1e5, 1e3, 1e4, 1e5, 1e3, 1e4]
    loss = [3.0, 2.5, 1.0, 2.0, 1.9, 1.85, 2.0, 1.0]
    r = approach2(n, loss, budgets, FlopsMap.six_n())
    notes = {b.budget: b for b in r.budgets}
    assert notes[1.0].note and "curve upwards" in notes[1.0].note and notes[1.0].n_opt is None
    assert notes[3.0].note and "a parabola needs 3" in notes[3.0].note
    assert r.a is None  # no two budgets with a minimum
    loss2 = [3.0, 2.0, 1.5, 3.0, 2.0, 1.6]
    r2 = approach2(n[:6], loss2, budgets[:6], FlopsMap.six_n())
    assert not r2.budgets[0].bracketed and "beyond the largest" in r2.budgets[0].note


def test_fit_sweep_intervals_and_plan():
    n, d, c = isoflop_design(per_budget=6)
    loss = noisy_losses(n, d, sigma=0.003, seed=3)
    fit = fit_sweep(FitInput(n, d, loss, c, FlopsMap.six_n()), bootstrap_samples=40, seed=0)
    a2, a3 = fit["approach2"], fit["approach3"]
    for entry in (a2["a"], a2["b"], a3["alpha"], a3["beta"], a3["E"]):
        lo, hi = entry["interval"]
        assert lo < hi and lo <= entry["value"] <= hi
    assert a2["a"]["interval"][0] < 0.4516 < a2["a"]["interval"][1] + 0.02
    assert len(fit["bootstrap"]["samples"]["approach3"]["alpha"]) == 40 - a3["bootstrap_failed"]
    assert len(a3["log_residuals"]) == len(loss) and a3["rms_log_residual"] < 0.01
    # Tokens per parameter at each budget are reported by both approaches and agree roughly.
    for b2, b3 in zip(a2["per_budget"], a3["per_budget"]):
        assert b2["tokens_per_param"]["value"] == pytest.approx(b3["tokens_per_param"]["value"], rel=0.35)

    # --plan: approach 3's optimum is the closed form N* = G (C/6)^a under C = 6ND.
    plan = plan_budget(fit, 1e21)
    law = Parametric(**{k: a3[k]["value"] for k in ("E", "A", "B", "alpha", "beta")})
    g = (law.alpha * law.A / (law.beta * law.B)) ** (1 / (law.alpha + law.beta))
    assert plan["approach3"]["N_opt"]["value"] == pytest.approx(g * (1e21 / 6) ** law.a, rel=1e-4)
    assert plan["approach3"]["D_opt"]["value"] == pytest.approx(
        1e21 / (6 * plan["approach3"]["N_opt"]["value"])
    )
    assert plan["approach2"]["N_opt"]["value"] == pytest.approx(a2["k_N"]["value"] * 1e21 ** a2["a"]["value"])
    lo, hi = plan["approach2"]["N_opt"]["interval"]
    assert lo < plan["approach2"]["N_opt"]["value"] < hi
    assert plan["extrapolation"] == pytest.approx(10.0)
    with pytest.raises(ScratchLLMError, match="positive"):
        plan_budget(fit, -1.0)


def test_three_sizes_per_budget_leave_no_residual_for_an_interval():
    n, d, c = isoflop_design(budgets=(1e18, 1e19), per_budget=3)
    fit = fit_sweep(FitInput(n, d, LAW(n, d), c, FlopsMap.six_n()), bootstrap_samples=5)
    assert fit["approach2"]["a"]["value"] is not None and fit["approach2"]["a"]["interval"] is None
    assert "no interval" in fit["approach2"]["note"]
    assert "E" in fit["approach3"]  # 6 points: enough for the parametric fit


def test_flops_map():
    six = FlopsMap.six_n()
    assert six(1e6) == pytest.approx(6e6) and np.allclose(six(np.array([10.0, 1e9])), [60.0, 6e9])
    # exact at the models it was built from, monotone between them, 6N + a slower term above
    pairs = [(1e3, 2e4), (1e4, 9e4), (1e5, 7e5)]
    fm = FlopsMap(pairs)
    for n, f in pairs:
        assert fm(n) == pytest.approx(f)
    grid = fm(np.geomspace(1e3, 1e5, 50))
    assert np.all(np.diff(grid) > 0)
    assert fm(1e8) / 6e8 == pytest.approx(1.0, abs=0.05)
    assert fm(1e2) < 2e4
    with pytest.raises(ScratchLLMError):
        FlopsMap([(0.0, 1.0)])


def test_from_points_refuses_non_finite_losses():
    pts = [{"name": "p", "N": 10, "D": 10, "budget": 1.0, "val_loss": float("nan"), "flops_per_token": 60.0}]
    with pytest.raises(ScratchLLMError, match="non-finite"):
        FitInput.from_points(pts)
