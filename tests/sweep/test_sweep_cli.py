"""`scratchllm sweep`: bad input is one line on stderr, exit code 2, and leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sweep_helpers import TINY_SETS

from scratchllm.cli.main import main


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("scratchllm sweep: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--budgets", "1e3,1e4"], ("too small", "use budgets >=")),
        (["--budgets", "abc,1e9"], ("'abc' is not a number",)),
        (["--budgets", "1e9"], ("at least 2 budgets",)),
        (["--budgets", "1e9,0"], ("positive",)),
        (["--set", "n_layer=3"], ("sets n_layer itself", "--sizes")),
        (["--set", "max_steps=3"], ("sets max_steps itself",)),
        (["--set", "no_such_key=3"], ("unknown config key",)),
        (["--sizes", "L2x48"], ("bad model size",)),
        (["--sizes", "L1-d30-h4"], ("not divisible",)),
        (["--per-budget", "2"], ("--per-budget must be >= 3",)),
        (["--bootstrap", "-1"], ("--bootstrap must be >= 0",)),
        (["--budget", "1e9"], ("--budget goes with --plan",)),
        (["--preset", "nope"], ("unknown preset",)),
    ],
)
def test_bad_sweep_input(tiny_data, tmp_path, capsys, extra, needles) -> None:
    out = tmp_path / "sweep"
    assert main(["sweep", "--data", str(tiny_data), "--out", str(out), *TINY_SETS, *extra]) == 2
    one_line_error(capsys, *needles)
    assert not out.exists()  # a failed check leaves no directory behind


def test_missing_or_bad_data(tmp_path, capsys) -> None:
    assert main(["sweep", "--out", str(tmp_path / "s")]) == 2
    one_line_error(capsys, "--data is required")
    assert main(["sweep", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s")]) == 2
    one_line_error(capsys)
    assert not (tmp_path / "s").exists()


def test_plan_errors(tmp_path, capsys) -> None:
    assert main(["sweep", "--plan", "--fit", str(tmp_path)]) == 2
    one_line_error(capsys, "--plan needs --budget")
    assert main(["sweep", "--plan", "--budget", "lots", "--fit", str(tmp_path)]) == 2
    one_line_error(capsys, "'lots' is not a number")
    assert main(["sweep", "--plan", "--budget", "1e13", "--fit", str(tmp_path / "nothing")]) == 2
    one_line_error(capsys, "no finished fit", "scratchllm sweep --data default")
    assert main(["sweep", "--plan", "--budget", "1e13", "--out", str(tmp_path / "nothing")]) == 2
    one_line_error(capsys, "no finished fit")
    (tmp_path / "fit.json").write_text(json.dumps({"something": "else"}))
    assert main(["sweep", "--plan", "--budget", "1e13", "--fit", str(tmp_path)]) == 2
    one_line_error(capsys, "not a scratchllm sweep fit")
    (tmp_path / "fit.json").write_text("{truncated")
    assert main(["sweep", "--plan", "--budget", "1e13", "--fit", str(tmp_path / "fit.json")]) == 2
    one_line_error(capsys)
    assert main(["sweep", "--plan", "--budget", "1e13", "--data", "default", "--fit", str(tmp_path)]) == 2
    one_line_error(capsys, "drop --data")


def test_dry_run_lists_points_and_writes_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "sweep"
    assert main(["sweep", "--data", "default", "--out", str(out), "--dry-run", "--json"]) == 0
    points = json.loads(capsys.readouterr().out)
    assert not out.exists()
    budgets = {p["name"].split("_")[0] for p in points}
    assert budgets == {"C1e10", "C3e10", "C1e11", "C3e11", "C1e12"}
    assert all(
        p["steps"] >= 50 and p["C"] == pytest.approx(float(p["name"][1:].split("_")[0]), rel=0.02)
        for p in points
    )
    # --sizes auto: a window of consecutive ladder sizes per budget, larger sizes for larger budgets.
    first = {b: min(p["N"] for p in points if p["name"].startswith(b + "_")) for b in budgets}
    assert first["C1e12"] > first["C1e10"]


def test_sweep_is_listed_in_help(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "sweep" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    help_text = capsys.readouterr().out
    assert "--plan" in help_text and "--budgets" in help_text and "examples:" in help_text


def test_sweep_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import scratchllm.cli.sweep, scratchllm.sweep.ladder, scratchllm.sweep.fit\n"
        "assert 'torch' not in sys.modules, 'the sweep CLI must import torch lazily'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
