import subprocess
import sys

import pytest

from scratchllm.cli.main import VERBS, _available, main


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
