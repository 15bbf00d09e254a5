"""The sweep's planning on a known law: training replaced by L(N, D), so the whole ladder runs in seconds.

``--sizes auto`` must centre each budget's window, widen it when the minimum sits on an edge, move
up the ladder with the budget, and the fits must then recover the law the losses came from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scratchllm.cli.main import main
from scratchllm.sweep import runner
from scratchllm.sweep.fit import FlopsMap, Parametric
from scratchllm.sweep.ladder import parse_budgets, parse_sizes
from scratchllm.sweep.runner import PointOutcome, Recipe, Sweep

# A law whose optimum needs only ~2 tokens per parameter ((B/A)^2 under C = 6ND), so that the
# Chinchilla prior of 20 puts the first window too low and the sweep has to widen it upwards.
LAW = Parametric(E=1.0, A=10.0, B=14.0, alpha=0.5, beta=0.5)
BUDGETS = "3e9,1e10,3e10,1e11"


@pytest.fixture
def synthetic_training(monkeypatch):
    """Replace training by the law: the loss of N parameters after max_steps x 128 tokens."""
    calls: list[str] = []

    def fake_train_point(recipe, overrides, run_dir, **kwargs):
        from scratchllm.sweep.flops import count_model

        calls.append(run_dir.name)
        run_dir.mkdir(parents=True, exist_ok=True)
        sizes = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("model.")}
        model_cfg, _, _ = runner.resolve_point(recipe, overrides, run_dir)
        assert all(getattr(model_cfg, k) == v for k, v in sizes.items())
        n = count_model(model_cfg, 32).n_params
        steps = overrides["train.max_steps"]
        loss = float(LAW(n, steps * 128))
        return PointOutcome(loss, loss, steps, steps * 128, 0.01, 1.0, n)

    monkeypatch.setattr(runner, "train_point", fake_train_point)
    return calls


def test_auto_windows_widen_and_recover_the_law(tiny_data, tmp_path, synthetic_training, capsys) -> None:
    out = tmp_path / "sweep"
    recipe = Recipe(data=str(tiny_data), overrides=["context_length=32", "batch_size=4"])
    messages: list[str] = []
    sweep = Sweep(
        out,
        recipe,
        parse_budgets(BUDGETS),
        parse_sizes("auto"),
        per_budget=3,
        bootstrap=20,
        progress=False,
        echo=messages.append,
    )
    sweep.prepare()
    planned = {s.name for s in sweep.dry_run()}
    result = sweep.run()
    assert result.interrupted is None and result.trained == len(result.points) == len(synthetic_training)

    by_budget: dict[float, list[dict]] = {}
    for p in result.points:
        by_budget.setdefault(p["budget"], []).append(p)
    first = sorted(by_budget[3e9], key=lambda p: p["N"])
    # The prior window had its minimum on the upper edge, so the sweep added sizes above it.
    assert len(first) == 5 and {p["name"] for p in first} - planned == {"C3e9_L2-d24", "C3e9_L2-d32"}
    assert any("on the edge" in m and "adding L2-d24" in m for m in messages)
    # Later windows follow the optimum up the ladder.
    smallest = [min(p["N"] for p in by_budget[c]) for c in sorted(by_budget)]
    assert smallest == sorted(smallest) and smallest[-1] > smallest[0]

    fit = json.loads((out / "fit.json").read_text())
    a3 = fit["approach3"]
    assert a3["alpha"]["value"] == pytest.approx(0.5, abs=0.01)
    assert a3["beta"]["value"] == pytest.approx(0.5, abs=0.01)
    assert a3["E"]["value"] == pytest.approx(1.0, rel=0.01)
    assert a3["rms_log_residual"] < 1e-3
    flops = FlopsMap([tuple(p) for p in fit["flops_per_token"]])
    inside = [b for b in fit["approach2"]["per_budget"] if b["bracketed"]]
    assert len(inside) >= 3
    for b in inside:  # the parabola's vertex is close to the law's own optimum
        true_n, true_d, _ = LAW.optimum(b["budget"], flops)
        assert b["N_opt"]["value"] == pytest.approx(true_n, rel=0.25)
        assert b["tokens_per_param"]["value"] == pytest.approx(true_d / true_n, rel=0.5)

    # --plan reads the fit back: approach 3's answer is the law's own optimum at that budget.
    assert main(["sweep", "--plan", "--budget", "3e11", "--fit", str(out), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    true_n, true_d, _ = LAW.optimum(3e11, flops)
    assert plan["approach3"]["N_opt"]["value"] == pytest.approx(true_n, rel=0.05)
    assert plan["approach3"]["D_opt"]["value"] == pytest.approx(true_d, rel=0.05)
    assert plan["approach2"]["N_opt"]["value"] == pytest.approx(true_n, rel=0.5)
    assert plan["extrapolation"] == pytest.approx(3.0)
    assert main(["sweep", "--plan", "--budget", "3e11", "--fit", str(out)]) == 0
    text = capsys.readouterr().out
    assert "approach 2 (iso-FLOP power laws): N* =" in text and "3.0x outside" in text


def test_sizes_all_trains_every_size_that_fits(tiny_data, tmp_path, synthetic_training) -> None:
    recipe = Recipe(data=str(tiny_data), overrides=["context_length=32", "batch_size=4"])
    sweep = Sweep(
        tmp_path / "s", recipe, parse_budgets("3e9,1e10"), parse_sizes("all"), bootstrap=0, progress=False
    )
    plan = sweep.prepare()
    result = sweep.run()
    for c in (3e9, 1e10):
        expected = {p.name for p in plan.candidates(c)}
        assert {p["name"] for p in result.points if p["budget"] == c} == expected
        assert all(p["steps"] >= 50 for p in result.points)
    fit = json.loads((tmp_path / "s" / "fit.json").read_text())
    assert fit["bootstrap"]["samples"]["approach3"]["alpha"] == []  # --bootstrap 0: no intervals
    assert fit["approach3"]["alpha"]["interval"] is None


def test_the_fit_can_use_total_parameters(tiny_data, tmp_path, synthetic_training) -> None:
    recipe = Recipe(data=str(tiny_data), overrides=["context_length=32", "batch_size=4"])
    out = tmp_path / "s"
    sweep = Sweep(out, recipe, parse_budgets("3e9,1e10"), parse_sizes("all"), count="total", bootstrap=0)
    sweep.prepare()
    sweep.run()
    fit = json.loads((out / "fit.json").read_text())
    doc = json.loads((out / "sweep.json").read_text())
    assert fit["count"] == "total" and doc["settings"]["fit_count"] == "total"
    ns = {n for n, _ in fit["flops_per_token"]}
    assert ns == {p["N_total"] for p in doc["points"]}
    assert "fits use **total** N" in Path(out / "sweep.md").read_text()
