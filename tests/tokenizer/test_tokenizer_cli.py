"""`scratchllm tokenizer ...`: train/encode/decode/show, bad inputs as one-line errors, no torch."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from scratchllm.cli.main import main
from scratchllm.tokenizer import load_tokenizer


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # exactly one line
    assert err.startswith("scratchllm tokenizer: error: ")
    return err


@pytest.fixture
def corpus(tmp_path):
    """About 100 KB of English prose from the embedded corpus (no ../shared needed)."""
    from scratchllm.data import default_corpus

    path = tmp_path / "corpus.txt"
    path.write_text(default_corpus()[:100_000], encoding="utf-8")
    return path


def test_train_encode_decode_show(tmp_path, corpus, capsys):
    out = tmp_path / "tok.json"
    args = ["tokenizer", "train", "--kind", "bpe", "--vocab-size", "300", "--input", str(corpus)]
    assert main([*args, "--out", str(out), "--quiet", "--special-tokens", "<|endoftext|>", "<|pad|>"]) == 0
    assert "wrote" in capsys.readouterr().out
    tok = load_tokenizer(out)
    assert tok.vocab_size == 300 and tok.special_tokens == {"<|endoftext|>": 298, "<|pad|>": 299}

    assert (
        main(["tokenizer", "encode", "--tokenizer", str(out), "--text", "the picture<|endoftext|>", "--json"])
        == 0
    )
    ids = json.loads(capsys.readouterr().out)["ids"]
    assert ids == tok.encode("the picture<|endoftext|>") and 298 not in ids, "literal text by default"
    assert tok.decode(ids) == "the picture<|endoftext|>"
    encode = ["tokenizer", "encode", "--tokenizer", str(out), "--text", "the picture<|endoftext|>"]
    assert main([*encode, "--allow-special", "--json"]) == 0
    ids = json.loads(capsys.readouterr().out)["ids"]
    assert ids == tok.encode("the picture<|endoftext|>", allowed_special="all") and ids[-1] == 298
    show = ["tokenizer", "show", "--tokenizer", str(out), "--text", "a<|pad|>", "--no-color"]
    assert main(show) == 0 and "|299]" not in capsys.readouterr().out
    assert main([*show, "--allow-special"]) == 0 and "[<|pad|>|299]" in capsys.readouterr().out

    assert main(["tokenizer", "decode", "--tokenizer", str(out), "--ids", ",".join(map(str, ids))]) == 0
    assert capsys.readouterr().out == "the picture<|endoftext|>\n"

    assert main(["tokenizer", "show", "--tokenizer", str(out), "--text", "the picture\n", "--no-color"]) == 0
    shown = capsys.readouterr().out.splitlines()
    pieces = [tok.decode([i]).replace("\n", "\\n") for i in tok.encode("the picture\n")]
    assert shown[0] == "".join(f"[{p}|{i}]" for p, i in zip(pieces, tok.encode("the picture\n")))
    assert shown[0].endswith("[\\n|10]")  # the newline is made visible; byte 10 is id 10
    assert "tokens" in shown[1]


def test_show_gpt2_plain_and_coloured(gpt2_files, capsys):
    assert (
        main(["tokenizer", "show", "--tokenizer", str(gpt2_files), "--text", "Hello world", "--no-color"])
        == 0
    )
    assert capsys.readouterr().out.splitlines()[0] == "[Hello|15496][ world|995]"
    assert (
        main(["tokenizer", "show", "--tokenizer", str(gpt2_files), "--text", "Hello world", "--color"]) == 0
    )
    out = capsys.readouterr().out
    assert "\x1b[48;5;" in out and "Hello" in out and "15496" in out
    # a character split over two tokens shows its bytes
    assert main(["tokenizer", "show", "--tokenizer", str(gpt2_files), "--text", "🤖", "--no-color"]) == 0
    assert "\\x" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["char", "word"])
def test_train_other_kinds(tmp_path, corpus, capsys, kind):
    out = tmp_path / f"{kind}.json"
    assert (
        main(["tokenizer", "train", "--kind", kind, "--input", str(corpus), "--out", str(out), "--json"]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == kind and load_tokenizer(out).kind == kind


def test_train_on_default_corpus(tmp_path, capsys):
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--kind", "char", "--out", str(out), "--quiet"]) == 0
    assert "trained on" in capsys.readouterr().out
    assert load_tokenizer(out).vocab_size > 50  # the corpus is English prose plus code symbols


def _bad_input(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda d: d / "missing.txt", "not found"),
        (lambda d: _bad_input(d, "empty.txt", b""), "is empty"),
        (lambda d: _bad_input(d, "model.bin", b"GPT\x00\x01\x02weights"), "NUL byte at byte offset 3"),
        (lambda d: _bad_input(d, "latin1.txt", "café".encode("latin-1")), "invalid UTF-8 byte 0xe9"),
        (lambda d: d, "contains no non-empty input files"),
        (lambda d: _bad_input(d, "bad.jsonl", b'{"text": "ok"}\nnot json\n'), "bad.jsonl:2: not JSON"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, make_input, message):
    path = make_input(tmp_path)
    rc = main(["tokenizer", "train", "--input", str(path), "--out", str(tmp_path / "tok.json")])
    assert rc == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "tok.json").exists()


def test_vocab_size_too_small_and_existing_output(tmp_path, corpus, capsys):
    out = tmp_path / "tok.json"
    base = ["tokenizer", "train", "--input", str(corpus), "--out", str(out), "--quiet"]
    assert main([*base, "--vocab-size", "256"]) == 2
    assert "at least 256" in _error_line(capsys)
    assert main([*base, "--vocab-size", "260", "--special-tokens", "a", "b", "c", "d", "e"]) == 2
    assert "= 261" in _error_line(capsys)

    out.write_text("precious")
    assert main([*base, "--vocab-size", "300"]) == 2
    assert "--force" in _error_line(capsys)
    assert out.read_text() == "precious"  # untouched
    assert main([*base, "--vocab-size", "300", "--force"]) == 0
    assert load_tokenizer(out).vocab_size == 300


def test_decode_bad_ids(gpt2_files, capsys):
    assert main(["tokenizer", "decode", "--tokenizer", str(gpt2_files), "--ids", "1", "x"]) == 2
    assert "not an integer" in _error_line(capsys)
    assert main(["tokenizer", "decode", "--tokenizer", str(gpt2_files), "--ids", "50257"]) == 2
    assert "outside" in _error_line(capsys)


def test_tokenizer_command_does_not_import_torch(tmp_path, corpus):
    # Neither torch nor the optional readers' libraries (pyarrow, zstandard) for plain text.
    out = tmp_path / "tok.json"
    code = (
        "import sys\n"
        "from scratchllm.cli.main import main\n"
        f"assert main(['tokenizer', 'train', '--input', {str(corpus)!r}, '--out', {str(out)!r}, "
        "'--vocab-size', '300', '--quiet']) == 0\n"
        f"assert main(['tokenizer', 'show', '--tokenizer', {str(out)!r}, '--text', 'hi']) == 0\n"
        f"assert main(['tokenizer', 'encode', '--tokenizer', {str(out)!r}, '--text', 'hi']) == 0\n"
        f"assert main(['tokenizer', 'decode', '--tokenizer', {str(out)!r}, '--ids', '104']) == 0\n"
        "for heavy in ('torch', 'pyarrow', 'zstandard', 'numpy'):\n"
        "    assert heavy not in sys.modules, f'scratchllm tokenizer must not import {heavy}'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_show_gpt2_without_torch(gpt2_files):
    code = (
        "import sys\nfrom scratchllm.cli.main import main\n"
        f"assert main(['tokenizer', 'show', '--tokenizer', {str(gpt2_files)!r}, '--text', 'hi']) == 0\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_cli_training_is_byte_identical_for_any_worker_count(tmp_path, corpus):
    outs = []
    for workers in ("1", "2"):
        outs.append(tmp_path / f"tok-{workers}.json")
        args = ["--input", str(corpus), str(corpus), "--out", str(outs[-1]), "--workers", workers, "--quiet"]
        assert main(["tokenizer", "train", "--vocab-size", "700", "--pattern", "gpt4", *args]) == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("doc", ["README.md", "docs/guide/tokenizer.md"])
def test_documented_encode_json_is_what_the_command_prints(doc, gpt2_files, capsys):
    """Issue 13.11: the docs showed a list where --json prints an object; they must agree."""
    lines = [
        line
        for line in (ROOT / doc).read_text(encoding="utf-8").splitlines()
        if "tokenizer encode" in line and "--json" in line
    ]
    assert lines, f"{doc} has no 'tokenizer encode ... --json' example"
    for line in lines:
        command, _, shown = line.partition("#")
        args = shlex.split(command)[1:]  # drop "scratchllm"
        args[args.index("--tokenizer") + 1] = str(gpt2_files)
        assert main(args) == 0
        assert json.loads(capsys.readouterr().out) == json.loads(shown.strip())


def test_encode_and_decode_json_schema(tmp_path, corpus, capsys):
    """--json is a stable object: encode {"ids", "count"}, decode {"text", "count"}."""
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--kind", "char", "--input", str(corpus), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--text", "hello", "--json"]) == 0
    encoded = json.loads(capsys.readouterr().out)
    assert set(encoded) == {"ids", "count"} and encoded["count"] == len(encoded["ids"]) == 5
    ids = ",".join(map(str, encoded["ids"]))
    assert main(["tokenizer", "decode", "--tokenizer", str(out), "--ids", ids, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"text": "hello", "count": 5}
