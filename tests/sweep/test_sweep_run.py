"""A sweep end to end on tiny models: every artefact, skipping finished points, resuming.

The reference is one uninterrupted 2 budgets x 2 sizes sweep; interrupted sweeps (a crash between
points, a point paused mid-training, a point directory left half-written) must finish with the
very same losses — training is deterministic and resuming from a checkpoint is bit-exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sweep_helpers import TINY_SETS

from scratchllm.cli.main import main
from scratchllm.errors import ScratchLLMError
from scratchllm.sweep import runner
from scratchllm.sweep.ladder import parse_budgets, parse_sizes
from scratchllm.sweep.plots import PLOTS
from scratchllm.sweep.runner import Recipe, Sweep

BUDGETS = "6e8,1.2e9"
SIZES = "L1-d16,L1-d24"
POINTS = ["C6e8_L1-d16", "C6e8_L1-d24", "C1.2e9_L1-d16", "C1.2e9_L1-d24"]


def sweep_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "sweep",
        "--data",
        str(data),
        "--out",
        str(out),
        "--budgets",
        BUDGETS,
        "--sizes",
        SIZES,
        "--bootstrap",
        "10",
        "--quiet",
        *TINY_SETS,
        *extra,
    ]


def make_sweep(data: Path, out: Path) -> Sweep:
    recipe = Recipe(data=str(data), overrides=["context_length=32", "batch_size=4"])
    return Sweep(out, recipe, parse_budgets(BUDGETS), parse_sizes(SIZES), bootstrap=10, progress=False)


def losses(out: Path) -> dict[str, float]:
    doc = json.loads((out / "sweep.json").read_text())
    return {p["name"]: p["val_loss"] for p in doc["points"]}


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "sweep"
    assert main(sweep_args(tiny_data, out)) == 0
    return out


def test_sweep_writes_every_artefact(reference: Path, capsys) -> None:
    doc = json.loads((reference / "sweep.json").read_text())
    assert doc["status"] == "finished" and [p["name"] for p in doc["points"]] == POINTS
    for p in doc["points"]:
        assert p["N"] < p["N_total"] and p["D"] == p["steps"] * 128
        assert p["C"] == pytest.approx(p["D"] * p["flops_per_token"]) and p["C"] > p["C_6ND"]
        assert p["C"] == pytest.approx(p["budget"], rel=0.01)  # the budget is spent, to a step
        assert 1.0 < p["val_loss"] < 5.0 and p["seconds"] > 0 and p["steps"] >= 50
        run = reference / p["run_dir"]
        assert (run / "point.json").is_file() and (run / "model.safetensors").is_file()
        cfg = json.loads((run / "config.json").read_text())
        # The schedule is as long as the budget: max_steps from D, warm-up at most 10 % of it.
        assert (
            cfg["train"]["max_steps"] == p["steps"] and cfg["train"]["warmup_steps"] <= p["steps"] // 10 + 1
        )
        assert cfg["model"]["n_embd"] == p["n_embd"] and cfg["train"]["seed"] == 1337
    assert "D x (6 x N_matmul" in doc["conventions"]["C"] and "non-embedding" in doc["conventions"]["N"]
    fit = json.loads((reference / "fit.json").read_text())
    # Two sizes per budget: no parabola, and 4 points are too few for the parametric law; both say so.
    assert "a parabola needs 3" in fit["approach2"]["per_budget"][0]["note"]
    assert "at least 5 points" in fit["approach3"]["note"]
    table = (reference / "sweep.md").read_text()
    assert "| budget C | size | N |" in table and "Chinchilla" in table
    assert table.count("| L1-d16 |") == 2
    for name in PLOTS:
        assert (reference / name).read_bytes()[:4] == b"\x89PNG"


def test_a_finished_sweep_is_not_trained_again(reference: Path, tiny_data, monkeypatch, capsys) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(runner, "train_point", fail)
    before = losses(reference)
    assert main([*sweep_args(tiny_data, reference), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["trained"] == 0 and summary["skipped"] == 4
    assert losses(reference) == before


def test_resume_after_a_crash_between_points(reference: Path, tiny_data, tmp_path, monkeypatch) -> None:
    out = tmp_path / "sweep"
    real = runner.train_point
    calls: list[str] = []

    def crash_on_third(recipe, overrides, run_dir, **kwargs):
        calls.append(run_dir.name)
        if len(calls) == 3:
            raise RuntimeError("simulated crash (power cut, OOM kill...)")
        return real(recipe, overrides, run_dir, **kwargs)

    monkeypatch.setattr(runner, "train_point", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(sweep_args(tiny_data, out))
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["status"] == "running" and len(doc["points"]) == 2
    assert not (out / "fit.json").exists()

    calls.clear()

    def count(recipe, overrides, run_dir, **kwargs):
        calls.append(run_dir.name)
        return real(recipe, overrides, run_dir, **kwargs)

    monkeypatch.setattr(runner, "train_point", count)
    assert main(sweep_args(tiny_data, out)) == 0
    assert len(calls) == 2  # only the two points that had not finished
    assert losses(out) == losses(reference)
    assert all((out / name).is_file() for name in ("fit.json", "sweep.md", *PLOTS))


def test_a_point_paused_mid_training_resumes_from_its_checkpoint(
    reference: Path, tiny_data, tmp_path
) -> None:
    out = tmp_path / "sweep"
    sweep = make_sweep(tiny_data, out)
    sweep.prepare()
    result = sweep.run(stop_at={"C6e8_L1-d24": 20})  # as if Ctrl-C arrived at step 20
    assert result.interrupted == "stop_at" and len(result.points) == 1
    paused = out / "runs" / "C6e8_L1-d24"
    assert not (paused / "point.json").exists()
    assert (paused / "checkpoints" / "step-00000020").is_dir()
    assert json.loads((out / "sweep.json").read_text())["status"] == "interrupted"

    again = make_sweep(tiny_data, out)
    again.prepare()
    result = again.run()
    assert result.interrupted is None and result.trained == 3 and result.skipped == 1
    rec = json.loads((paused / "point.json").read_text())
    assert rec["resumed"] is True
    assert losses(out) == losses(reference)  # resumed bit-exactly


def test_a_half_written_point_directory_is_trained_again(reference: Path, tiny_data, tmp_path) -> None:
    out = tmp_path / "sweep"
    sweep = make_sweep(tiny_data, out)
    sweep.prepare()
    # What a kill -9 before the first checkpoint leaves: the run's files, no checkpoint, no marker.
    broken = out / "runs" / "C6e8_L1-d16"
    (broken / "checkpoints" / ".tmp-step-00000010-123").mkdir(parents=True)
    (broken / "config.json").write_text("{not json")
    (broken / "metrics.jsonl").write_text('{"event": "train", "step": 10, "loss": 9.0}\n{"ev')
    result = sweep.run()
    assert result.trained == 4
    assert losses(out) == losses(reference)
    # A damaged marker of a finished point is not trusted either: that point is trained again.
    (out / "runs" / "C6e8_L1-d24" / "point.json").write_text("{")
    again = make_sweep(tiny_data, out)
    again.prepare()
    assert again.run().trained == 1 and losses(out) == losses(reference)


def test_another_recipe_in_the_same_directory_is_refused(
    reference: Path, tiny_data, tmp_path, capsys
) -> None:
    out = tmp_path / "sweep"
    assert main(sweep_args(tiny_data, out)) == 0
    capsys.readouterr()
    assert main([*sweep_args(tiny_data, out), "--set", "lr=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "another recipe" in err and "lr" in err and err.count("\n") == 1
    # --force starts over with the new recipe (and removes only what a sweep writes).
    (out / "notes.txt").write_text("mine")
    assert main([*sweep_args(tiny_data, out), "--set", "lr=1e-3", "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert losses(out) != losses(reference)


def test_a_directory_that_is_not_a_sweep_is_refused(tiny_data, tmp_path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    assert main(sweep_args(tiny_data, out)) == 2
    assert "is not a sweep" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_three_sizes_fit_both_approaches_on_real_runs(tiny_data, tmp_path, capsys) -> None:
    """Three sizes at two budgets: both fits produce numbers from real training, and --plan answers
    (or, when a fit this small has no optimum, says so in one line). The plan arithmetic itself is
    tested on a known law in test_sweep_logic.py."""
    out = tmp_path / "sweep"
    args = [*sweep_args(tiny_data, out), "--sizes", "L1-d16,L1-d24,L2-d24"]
    args[args.index("--budgets") + 1] = "1.2e9,2.4e9"
    assert main(args) == 0
    capsys.readouterr()
    fit = json.loads((out / "fit.json").read_text())
    a2, a3 = fit["approach2"], fit["approach3"]
    assert all(len(b["parabola_ln_n"]) == 3 and len(b["residuals"]) == 3 for b in a2["per_budget"])
    assert all(isinstance(a3[k]["value"], float) for k in ("E", "A", "B", "alpha", "beta"))
    assert a3["alpha"]["value"] >= 0 and a3["beta"]["value"] >= 0
    assert len(a3["predicted"]) == len(a3["log_residuals"]) == 6
    rc = main(["sweep", "--plan", "--budget", "5e9", "--fit", str(out)])
    captured = capsys.readouterr()
    if rc == 0:
        assert "N* =" in captured.out and "nearest ladder size: L" in captured.out
    else:
        assert rc == 2 and captured.err.count("\n") == 1 and "predicts no optimum" in captured.err


def test_invalid_sweep_settings_raise(tiny_data, tmp_path) -> None:
    recipe = Recipe(data=str(tiny_data))
    with pytest.raises(ScratchLLMError, match="per-budget"):
        Sweep(tmp_path / "s", recipe, parse_budgets(BUDGETS), parse_sizes("auto"), per_budget=2)
    with pytest.raises(ScratchLLMError, match="--set train.max_steps: a sweep sets max_steps"):
        Recipe(data=str(tiny_data), overrides=["train.max_steps=5"]).user_overrides()
