import os
import subprocess
import sys
import time

import pytest

from scratchllm import device
from scratchllm.cli.main import SPIN_IF_QUIET, VERBS, _available, main
from scratchllm.device import busy_cores, choose_wait_policy, wait_policy


def test_help_lists_available_verbs(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for verb in _available():
        assert verb in out


def test_no_arguments_prints_help(capsys):
    assert main([]) == 0
    assert "usage: scratchllm" in capsys.readouterr().out


def test_top_level_help_runs_without_torch():
    code = (
        "import sys; from scratchllm.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'scratchllm --help must not import torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_unknown_verb_is_one_line_error(capsys):
    assert main(["no-such-verb"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown command" in err


def test_every_available_verb_has_help():
    for verb in _available():
        proc = subprocess.run(
            [sys.executable, "-m", "scratchllm", verb, "--help"], capture_output=True, text=True
        )
        assert proc.returncode == 0, (verb, proc.stderr)
        assert "usage: scratchllm " + verb in proc.stdout
    assert set(_available()) <= set(VERBS)


# ----------------------------------------------------------------------------- OpenMP wait policy
def _policy_after_main(args: list[str], env: dict[str, str]) -> str:
    """OMP_WAIT_POLICY as a fresh process's ``main(args)`` left it (args fail to parse on purpose:
    the policy is decided before the verb's parser runs, and nothing trains)."""
    code = (
        "import os, sys\nfrom scratchllm.cli.main import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print(os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True
    )
    return proc.stdout.strip().splitlines()[-1]


def test_a_busy_machine_makes_openmp_threads_sleep():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "LOCAL_WORLD_SIZE")}
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores(0.2) > 0.5  # the spinning sibling shows
        assert _policy_after_main(["train", "--no-such-option"], env) == "PASSIVE"
    finally:
        busy.kill()
        busy.wait()
    # the user's own setting always wins; verbs outside SPIN_IF_QUIET sleep without looking
    assert _policy_after_main(["train", "--no-such-option"], {**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
    assert "serve" not in SPIN_IF_QUIET
    assert _policy_after_main(["serve", "--no-such-option"], env) == "PASSIVE"


def test_wait_policy_decision(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    import torch  # noqa: F401  (loaded: its OpenMP runtime has read the setting already)

    assert choose_wait_policy() == "loaded" and "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delitem(sys.modules, "torch")  # pretend it is not (only membership is checked)
    measured = []
    monkeypatch.setattr(device, "busy_cores", lambda window_s: measured.append(window_s) or 0.1)
    assert choose_wait_policy() == "spin" and "OMP_WAIT_POLICY" not in os.environ
    assert wait_policy() == "default"
    monkeypatch.setattr(device, "busy_cores", lambda window_s: 0.9)
    assert choose_wait_policy() == "passive" and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert choose_wait_policy() == "yours"  # set now: never changed again
    assert wait_policy() == "passive"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setattr(device, "busy_cores", lambda window_s: None)  # cannot tell: sleep
    assert choose_wait_policy() == "passive"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    n = len(measured)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun processes share the cores: no look
    monkeypatch.setattr(device, "busy_cores", lambda window_s: measured.append(window_s) or 0.0)
    assert choose_wait_policy() == "passive" and len(measured) == n
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert choose_wait_policy(spin_if_quiet=False) == "passive" and len(measured) == n
    monkeypatch.delenv("OMP_WAIT_POLICY")
    # a container allowed 1.5 cores of the 4 it sees: spinning threads would burn the quota
    monkeypatch.setattr(device, "available_cores", lambda: 4)
    monkeypatch.setattr(device, "cpu_quota_cores", lambda: 1.5)
    assert choose_wait_policy() == "passive" and len(measured) == n
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setattr(device, "cpu_quota_cores", lambda: 4.0)
    assert choose_wait_policy() == "spin" and len(measured) == n + 1
