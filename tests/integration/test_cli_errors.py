"""Bad input through the real CLI: one line on stderr, exit code 2, nothing changed on disk.

Each case is one command a user could type. The check is the same for all of them: the only
stderr line is ``scratchllm VERB: error: ...`` (no traceback), the exit code is the documented
one, and no file under the workspace was created, changed or removed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
from integration_cli import TINY, cli, ok


def snapshot(root: Path) -> dict[str, str]:
    """Every file's hash and every directory (an empty --out left behind counts as a change)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def bad(workspace) -> Path:
    """Damaged copies of the tiny run, and malformed user files."""
    ws = workspace
    root = ws.root / "bad"
    root.mkdir()
    run = ws.run

    shutil.copytree(run, root / "truncated")
    with open(root / "truncated" / "model.safetensors", "r+b") as f:
        f.truncate(100)
    shutil.copytree(run, root / "garbage")
    with open(root / "garbage" / "model.safetensors", "r+b") as f:
        f.write(struct.pack("<Q", 24) + b"{this is not json......}")
    shutil.copytree(run, root / "noconfig")
    (root / "noconfig" / "config.json").unlink()
    # a BPE tokenizer (300 ids) beside a model trained with 61 characters
    shutil.copytree(workspace.char_run, root / "vocab")
    shutil.copy(workspace.bpe_tok, root / "vocab" / "tokenizer.json")
    (root / "bert-hf").mkdir()
    (root / "bert-hf" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))

    (root / "no-tab.tsv").write_text("abc\tcba\nno tab here\nxy\tyx\n")
    (root / "columns.tsv").write_text("body\tcategory\nhello\tx\nbye\ty\n")
    (root / "labels.tsv").write_text(
        "text\tlabel\n" + "".join(f"line {i}\t{'ab'[i % 2]}\n" for i in range(20))
    )
    (root / "no-output.json").write_text(json.dumps([{"instruction": "say hi", "input": ""}] * 8))
    (root / "bad.toml").write_text("[model\nn_layer = ")
    # shards too short for one window of the tiny preset's 32 + 1 tokens (val: ~25 tokens)
    (root / "short.txt").write_text("the king is here\n" * 6)
    ok("prepare", "--tokenizer", ws.char_tok, "--input", root / "short.txt", "--out", root / "short",
       "--val-fraction", "0.25")  # fmt: skip
    # shards holding an id the vocabulary does not have; shards whose tokenizer.json was replaced
    shutil.copytree(ws.char_data, root / "big-ids")
    with open(root / "big-ids" / "val.bin", "r+b") as f:
        f.write(struct.pack("<H", 60_000))
    shutil.copytree(ws.char_data, root / "swapped-tok")
    shutil.copy(ws.bpe_tok, root / "swapped-tok" / "tokenizer.json")
    # TSV texts with quotes are plain characters; a TAB inside a text is refused
    (root / "tab-in-text.tsv").write_text("text\tlabel\nfine\ta\nhas\ta tab\tb\n")
    (root / "a-file").write_text("not a directory")
    return root


# A learning rate this large makes the loss non-finite within a couple of steps.
NAN_RECIPE = ["--set", "max_steps=20", "--set", "lr=1e38", "--set", "warmup_steps=0", "--set", "grad_clip=0"]
NAN_RECIPE += ["--set", "max_bad_steps=2"]


def cases(ws, bad: Path) -> dict[str, tuple[int, list]]:
    prompt = ["--prompt", "hi"]
    compare = ["compare", "--data", ws.char_data, "--max-steps", "1"]
    return {
        "missing model": (2, ["generate", "--model", bad / "nope", *prompt]),
        "truncated safetensors": (2, ["generate", "--model", bad / "truncated", *prompt]),
        "garbage safetensors header": (2, ["generate", "--model", bad / "garbage", *prompt]),
        "missing config.json": (2, ["generate", "--model", bad / "noconfig", *prompt]),
        "tokenizer/model vocab mismatch": (2, ["generate", "--model", bad / "vocab", *prompt]),
        "eval on shards of another tokenizer": (2, ["eval", "--model", ws.char_run, "--data", ws.bpe_data]),
        "resume on shards of another tokenizer": (
            2,
            ["train", "--data", ws.bpe_data, "--out", ws.char_run, "--resume"],
        ),
        "prompt outside char vocabulary": (2, ["generate", "--model", ws.char_run, "--prompt", "h€llo"]),
        "max-new-tokens 0": (2, ["generate", "--model", ws.run, *prompt, "--max-new-tokens", "0"]),
        "temperature -1": (2, ["generate", "--model", ws.run, *prompt, "--temperature", "-1"]),
        "top-p 0": (2, ["generate", "--model", ws.run, *prompt, "--top-p", "0"]),
        "top-p 1.5": (2, ["generate", "--model", ws.run, *prompt, "--top-p", "1.5"]),
        "top-k 0": (2, ["generate", "--model", ws.run, *prompt, "--top-k", "0"]),
        "unknown preset": (2, ["train", "--data", ws.char_data, "--out", bad / "o1", "--preset", "nope"]),
        "unknown preset (inspect)": (2, ["inspect", "--preset", "nope"]),
        "unknown --set key": (2, ["train", "--data", ws.char_data, "--out", bad / "o2", "--set", "nope=1"]),
        "bad TOML": (2, ["train", "--data", ws.char_data, "--out", bad / "o3", "--config", bad / "bad.toml"]),
        "train into a populated run": (2, ["train", "--data", ws.char_data, "--out", ws.char_run, *TINY]),
        "prepare into populated dir": (
            2,
            ["prepare", "--tokenizer", ws.char_tok, "--input", ws.char_text, "--out", ws.char_data],
        ),
        "tokenizer over existing file": (
            2,
            ["tokenizer", "train", "--kind", "char", "--input", ws.char_text, "--out", ws.char_tok],
        ),
        "convert --to-hf into populated dir": (2, ["convert", "--to-hf", ws.run, "--out", ws.char_run]),
        "to-hf with char tokenizer": (2, ["convert", "--to-hf", ws.char_run, "--out", bad / "o4"]),
        "non-GPT-2 HF dir (convert)": (2, ["convert", "--from-hf", bad / "bert-hf", "--out", bad / "o5"]),
        "non-GPT-2 HF dir (convert, nested --out)": (
            2,
            ["convert", "--from-hf", bad / "bert-hf", "--out", bad / "o12" / "deeper"],
        ),
        "compare with an unknown key in a variant": (
            2,
            [*compare, "--variants", "x:foo=1", "--out", bad / "o13"],
        ),
        "compare with a bad second variant": (
            2,
            [*compare, "--variants", "a:;b:nope=1", "--out", bad / "o14"],
        ),
        "translate --max-len 0": (2, ["translate", "--model", ws.run, "--text", "a", "--max-len", "0"]),
        "translate --beam 0": (2, ["translate", "--model", ws.run, "--text", "a", "--beam", "0"]),
        "non-GPT-2 HF dir (generate)": (2, ["generate", "--model", bad / "bert-hf", *prompt]),
        "fill-mask on a GPT": (2, ["fill-mask", "--model", ws.run, "--text", "a [MASK] b"]),
        "translate on a GPT": (2, ["translate", "--model", ws.run, "--text", "a"]),
        "classify on a GPT": (2, ["classify", "--model", ws.run, "--text", "a"]),
        "lora merge without adapters": (2, ["lora", "merge", "--model", ws.run, "--out", bad / "o6"]),
        "seq2seq TSV without tab": (
            2,
            ["train", "--arch", "seq2seq", "--data", bad / "no-tab.tsv", "--out", bad / "o7", *TINY],
        ),
        "classification file missing columns": (
            2,
            ["finetune", "classify", "--model", ws.run, "--data", bad / "columns.tsv", "--out", bad / "o8"],
        ),
        "instruction records without output": (
            2,
            ["finetune", "instruct", "--model", ws.run, "--data", bad / "no-output.json", "--out", bad / "o"],
        ),
        "finetune --epochs 0": (
            2,
            [
                "finetune",
                "classify",
                "--model",
                ws.run,
                "--data",
                bad / "labels.tsv",
                "--out",
                bad / "o10",
                "--epochs",
                "0",
            ],
        ),
        "lr=inf (no run dir written)": (
            2,
            ["train", "--data", ws.char_data, "--out", bad / "o20", *TINY, "--set", "lr=inf"],
        ),
        "weight_decay=nan (no run dir written)": (
            2,
            ["train", "--data", ws.char_data, "--out", bad / "o21", *TINY, "--set", "weight_decay=nan"],
        ),
        "shards with ids beyond the vocabulary (train)": (
            2,
            ["train", "--data", bad / "big-ids", "--out", bad / "o22", *TINY],
        ),
        "shards with ids beyond the vocabulary (eval)": (
            2,
            ["eval", "--model", ws.char_run, "--data", bad / "big-ids"],
        ),
        "shards whose tokenizer.json was replaced": (
            2,
            ["train", "--data", bad / "swapped-tok", "--out", bad / "o23", *TINY],
        ),
        "--out under a file (train)": (
            2,
            ["train", "--data", ws.char_data, "--out", bad / "a-file" / "run", *TINY],
        ),
        "--out under a file (prepare)": (
            2,
            [
                "prepare",
                "--tokenizer",
                ws.char_tok,
                "--input",
                ws.char_text,
                "--out",
                bad / "a-file" / "data",
            ],
        ),
        "--out under a file (tokenizer)": (
            2,
            [
                "tokenizer",
                "train",
                "--kind",
                "char",
                "--input",
                ws.char_text,
                "--out",
                bad / "a-file" / "tok.json",
            ],
        ),
        "--out under a file (convert)": (2, ["convert", "--to-hf", ws.run, "--out", bad / "a-file" / "hf"]),
        "--out in /proc (prepare)": (
            2,
            [
                "prepare",
                "--tokenizer",
                ws.char_tok,
                "--input",
                ws.char_text,
                "--out",
                "/proc/scratchllm-test/data",
            ],
        ),
        "--out in /proc (train)": (
            2,
            ["train", "--data", ws.char_data, "--out", "/proc/scratchllm-test", *TINY],
        ),
        "--config is a directory": (
            2,
            ["train", "--data", ws.char_data, "--out", bad / "o24", "--config", bad],
        ),
        "TSV with a TAB inside a text": (
            2,
            [
                "finetune",
                "classify",
                "--model",
                ws.run,
                "--data",
                bad / "tab-in-text.tsv",
                "--out",
                bad / "o25",
            ],
        ),
        "finetune --lora-r 0": (
            2,
            [
                "finetune",
                "instruct",
                "--model",
                ws.run,
                "--data",
                bad / "no-output.json",
                "--out",
                bad / "o26",
                "--lora-r",
                "0",
            ],
        ),
        "finetune classify --max-length 0": (
            2,
            [
                "finetune",
                "classify",
                "--model",
                ws.run,
                "--data",
                bad / "labels.tsv",
                "--out",
                bad / "o27",
                "--max-length",
                "0",
            ],
        ),
        "finetune instruct --max-new-tokens 0": (
            2,
            [
                "finetune",
                "instruct",
                "--model",
                ws.run,
                "--data",
                bad / "no-output.json",
                "--out",
                bad / "o28",
                "--max-new-tokens",
                "0",
            ],
        ),
        "corpus shorter than one window (no run dir written)": (
            2,
            ["train", "--data", bad / "short", "--out", bad / "o11", *TINY],
        ),
        "non-finite loss stops with exit 3": (
            3,
            ["train", "--data", ws.char_data, "--out", bad / "nan", *TINY, *NAN_RECIPE],
        ),
    }


# The case names, for parametrize (the paths are only known once the workspace exists).
_PLACEHOLDER = SimpleNamespace(
    **{k: Path() for k in ("run", "char_run", "char_data", "bpe_data", "char_tok", "char_text")}
)
CASE_NAMES = list(cases(_PLACEHOLDER, Path()))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_line_and_changes_nothing(name, workspace, bad):
    expected_rc, argv = cases(workspace, bad)[name]
    before = snapshot(workspace.root)
    res = cli(*argv)
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert res.rc == expected_rc, (name, res.rc, res.err[-2000:])
    assert "Traceback" not in res.err
    errors = [line for line in lines if line.startswith(f"scratchllm {argv[0]}: error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], (name, lines[-5:])
    after = snapshot(workspace.root)
    if expected_rc == 3:  # the stopped run keeps what it wrote; nothing else may change
        after = {k: v for k, v in after.items() if not k.startswith("bad/nan")}
    assert after == before, (name, set(after.items()) ^ set(before.items()))


@pytest.mark.parametrize("flag", ["--max-len", "--beam"])
def test_translate_names_the_bad_length_flag(flag, workspace):
    """--max-len 0 / --beam 0 are refused before the model is loaded, naming the flag."""
    res = cli("translate", "--model", workspace.root / "no-such-model", "--text", "a", flag, "0")
    assert res.rc == 2 and f"{flag} must be >= 1" in res.err, res.err


def test_generate_from_bert_and_fill_mask_without_mask(workspace, shared_data):
    """A BERT run: generate refuses it, fill-mask refuses text without [MASK], eval refuses to
    score it as a next-token language model."""
    bert = workspace.root / "bert"
    res = cli("train", "--arch", "bert", "--data", workspace.char_text, "--out", bert, *TINY, "--quiet")
    assert res.rc == 0, res.err[-2000:]
    for argv, verb in [
        (["generate", "--model", bert, "--prompt", "hi"], "generate"),
        (["fill-mask", "--model", bert, "--text", "no mask here"], "fill-mask"),
        (["eval", "--model", bert, "--data", workspace.char_data, "--task", "lm"], "eval"),
    ]:
        res = cli(*argv)
        assert res.rc == 2 and res.err.strip().startswith(f"scratchllm {verb}: error: "), res.err
        assert res.err.strip().count("\n") == 0
    fill = cli("fill-mask", "--model", bert, "--text", "the [MASK]ing", "--json")
    assert fill.rc == 0, fill.err


def test_outputs_on_a_read_only_filesystem_are_one_line_errors(workspace, tmp_path):
    """Every verb that writes gets the same one line on a read-only directory (root ignores file
    permissions, so the test mounts a read-only tmpfs; it needs root to mount)."""
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({r.stderr.decode().strip()})")
    ws = workspace
    try:
        for argv in (
            ["train", "--data", ws.char_data, "--out", ro / "run", *TINY],
            ["prepare", "--tokenizer", ws.char_tok, "--input", ws.char_text, "--out", ro / "data"],
            ["tokenizer", "train", "--kind", "char", "--input", ws.char_text, "--out", ro / "tok.json"],
            ["convert", "--to-hf", ws.run, "--out", ro / "hf"],
            ["inspect", "--model", ws.run, "--embedding-plot", ro / "emb.png"],
        ):
            res = cli(*argv)
            lines = [line for line in res.err.splitlines() if line.strip()]
            assert res.rc == 2 and "Traceback" not in res.err, (argv[0], res.err[-1500:])
            assert (
                lines[-1].startswith(f"scratchllm {argv[0]}: error: ")
                and "Read-only file system" in lines[-1]
            )
            assert str(ro) in lines[-1], lines[-1]  # it names the path
    finally:
        subprocess.run(["umount", str(ro)], check=False)
