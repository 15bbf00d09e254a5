"""Train, inspect and use tokenizers (char, word, byte-level BPE, GPT-2).

  scratchllm tokenizer train --kind bpe --vocab-size 4096 --input corpus.txt --out tok.json
  scratchllm tokenizer encode --tokenizer tok.json --text "Hello world"
  scratchllm tokenizer encode --tokenizer tok.json --text "a<|endoftext|>b" --allow-special
  scratchllm tokenizer decode --tokenizer tok.json --ids 15496 995
  scratchllm tokenizer show --tokenizer tok.json --text "Hello world"

--tokenizer accepts a tokenizer JSON file, a run directory, or a directory with GPT-2's
encoder.json + vocab.bpe (or Hugging Face's vocab.json + merges.txt / tokenizer.json).
Special-token strings in --text are ordinary text unless --allow-special is given.
This command never imports torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from scratchllm.cli.clean import add_input_args
from scratchllm.cli.common import (
    add_allow_special_arg,
    add_json_arg,
    add_out_arg,
    allowed_special,
    print_json,
)
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.base import EOT

DEFAULT_BPE_VOCAB = 4096


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    t = sub.add_parser("train", help="train a tokenizer on text files (or the embedded default corpus)")
    t.add_argument(
        "--kind", choices=["bpe", "char", "word"], default="bpe", help="tokenizer kind (default bpe)"
    )
    t.add_argument(
        "--vocab-size",
        type=int,
        help=f"number of ids including special tokens (bpe: default {DEFAULT_BPE_VOCAB}, at least 256 + "
        "specials; word: keep the most frequent words; char: not used)",
    )
    t.add_argument(
        "--input",
        nargs="+",
        metavar="FILE_OR_DIR",
        help="files or directories, read as prepare reads them: text, Markdown, JSON lines, Parquet, "
        "optionally compressed (default: the embedded default corpus)",
    )
    add_out_arg(t, help="tokenizer JSON file to write")
    t.add_argument(
        "--special-tokens",
        nargs="*",
        default=[EOT],
        metavar="TOKEN",
        help=f"special tokens, given the last ids (default {EOT}; word always adds <|unk|>)",
    )
    t.add_argument(
        "--pattern",
        default="gpt2",
        help="bpe pre-tokenisation regex: gpt2 (default), gpt4, or a custom regex",
    )
    t.add_argument(
        "--workers", type=int, default=None, help="bpe word-counting processes (default: automatic)"
    )
    t.add_argument(
        "--quiet", action="store_true", help="no progress bar (none either when stderr is not a terminal)"
    )
    add_json_arg(t)
    add_input_args(t)

    e = sub.add_parser("encode", help="print the token ids of a text")
    _add_tokenizer_arg(e)
    e.add_argument("--text", help="text to encode (default: read standard input)")
    add_allow_special_arg(e)
    add_json_arg(e)

    d = sub.add_parser("decode", help="print the text of token ids")
    _add_tokenizer_arg(d)
    d.add_argument(
        "--ids", nargs="+", required=True, help="token ids (space or comma separated, or a JSON list)"
    )
    add_json_arg(d)

    s = sub.add_parser("show", help="print a text split into coloured tokens with their ids")
    _add_tokenizer_arg(s)
    s.add_argument("--text", help="text to show (default: read standard input)")
    add_allow_special_arg(s)
    colour = s.add_mutually_exclusive_group()
    colour.add_argument("--no-color", action="store_true", help="plain output: [Hello|15496][ world|995]")
    colour.add_argument("--color", action="store_true", help="colours even when stdout is not a terminal")


def _add_tokenizer_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", required=True, help="tokenizer JSON, run dir, or GPT-2 / HF tokenizer dir")


def run(args: argparse.Namespace) -> int:
    return {"train": _train, "encode": _encode, "decode": _decode, "show": _show}[args.action](args)


# ----------------------------------------------------------------------------- train
def _training_texts(args: argparse.Namespace) -> tuple[Iterable[str], str]:
    """The documents to train on (streamed) and a description of where they came from.

    Inputs are found and read by :class:`scratchllm.data.readers.Inputs`, the rule ``prepare`` and
    ``clean`` use too; everything is checked (and bad records handled per ``--on-error``) first.
    """
    if args.input:
        from scratchllm.data.readers import Inputs

        inputs = Inputs(
            args.input,
            text_field=args.text_field,
            include=args.include,
            exclude=args.exclude,
            on_error=args.on_error,
        )
        inputs.scan(progress=not args.quiet and sys.stderr.isatty())
        names = [f.name for f in inputs.files]
        source = ", ".join(names[:5]) + (f" and {len(names) - 5} more file(s)" if len(names) > 5 else "")
        if inputs.errors.total:
            source += f" ({inputs.errors.total} bad record(s) skipped)"
        return (doc.text for doc in inputs.documents()), source
    from scratchllm.data.corpus import DEFAULT_CORPUS_NAME, default_corpus

    return [default_corpus()], DEFAULT_CORPUS_NAME


class _Counted:
    """Iterate texts once, counting their characters (the trainer consumes them as a stream)."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts, self.chars = texts, 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            self.chars += len(text)
            yield text


def _joined(texts: _Counted, source: str) -> str:
    text = "\n".join(texts)
    if not text:
        raise ScratchLLMError(f"no text to train on in {source}")
    return text


def _train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ScratchLLMError(f"{out} already exists; choose another --out or pass --force to overwrite")
    if out.is_dir():
        raise ScratchLLMError(
            f"--out {out} is a directory; give a file name such as {out / 'tokenizer.json'}"
        )
    specials = list(dict.fromkeys(args.special_tokens))
    if args.kind == "bpe":  # check before reading a large corpus
        from scratchllm.tokenizer.bpe import _check_vocab_size, resolve_pattern

        vocab_size = args.vocab_size or DEFAULT_BPE_VOCAB
        _check_vocab_size(vocab_size, specials)
        resolve_pattern(args.pattern)
    stream, source = _training_texts(args)
    texts = _Counted(stream)
    t0 = time.perf_counter()
    if args.kind == "bpe":
        from scratchllm.tokenizer.bpe import train_bpe

        tok = train_bpe(
            texts,
            vocab_size,
            pattern=args.pattern,
            special_tokens=specials,
            workers=args.workers,
            progress=not args.quiet and sys.stderr.isatty(),
        )
    elif args.kind == "word":
        from scratchllm.tokenizer.word import WordTokenizer

        tok = WordTokenizer.train(_joined(texts, source), args.vocab_size, specials)
    else:
        from scratchllm.tokenizer.char import CharTokenizer

        tok = CharTokenizer.train(_joined(texts, source), specials)
        if args.vocab_size and args.vocab_size < tok.vocab_size:
            raise ScratchLLMError(
                f"the text has {tok.vocab_size - len(specials)} distinct characters "
                f"(+{len(specials)} special), "
                f"more than --vocab-size {args.vocab_size}; a char tokenizer cannot drop characters"
            )
    seconds = time.perf_counter() - t0
    tok.save(out)
    n_chars = texts.chars
    summary = {
        "out": str(out),
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "special_tokens": tok.special_tokens,
        "input": source,
        "input_chars": n_chars,
        "train_seconds": round(seconds, 3),
    }
    if args.json:
        print_json(summary)
    else:
        print(
            f"wrote {out}: {tok.kind} tokenizer, {tok.vocab_size:,} ids "
            f"(specials {', '.join(f'{s}={i}' for s, i in tok.special_tokens.items())}), "
            f"trained on {n_chars:,} characters in {seconds:.2f} s"
        )
        print(f'try: scratchllm tokenizer show --tokenizer {out} --text "Hello, world!"')
    return 0


# ----------------------------------------------------------------------------- use
def _load(args: argparse.Namespace):
    from scratchllm.tokenizer import load_tokenizer

    return load_tokenizer(args.tokenizer)


def _text_arg(args: argparse.Namespace) -> str:
    return args.text if args.text is not None else sys.stdin.read()


def _encode(args: argparse.Namespace) -> int:
    tok = _load(args)
    ids = tok.encode(_text_arg(args), allowed_special=allowed_special(args))
    if args.json:
        print_json({"ids": ids, "count": len(ids)})
    else:
        print(" ".join(map(str, ids)))
    return 0


def parse_ids(values: list[str]) -> list[int]:
    """``["1", "2,3", "[4, 5]"]`` → ``[1, 2, 3, 4, 5]``."""
    ids: list[int] = []
    for value in values:
        for part in value.replace("[", " ").replace("]", " ").replace(",", " ").split():
            try:
                ids.append(int(part))
            except ValueError:
                raise ScratchLLMError(f"--ids: {part!r} is not an integer token id") from None
    return ids


def _decode(args: argparse.Namespace) -> int:
    tok = _load(args)
    ids = parse_ids(args.ids)
    text = tok.decode(ids)
    if args.json:
        print_json({"text": text, "count": len(ids)})
    else:
        print(text)
    return 0


# Background colours (ANSI 256-colour palette, light tones) with black text, cycled per token.
_COLOURS = [153, 186, 217, 151, 223, 189]


def _visible(text: str) -> str:
    """Make whitespace and control characters visible inside a token."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def token_pieces(tok, ids: list[int]) -> list[str]:
    """How each token reads on its own; bytes that are part of a longer character show as \\xNN."""
    if hasattr(tok, "token_bytes"):
        return [tok.token_bytes(i).decode("utf-8", errors="backslashreplace") for i in ids]
    return [tok.token_text(i) for i in ids]


def _show(args: argparse.Namespace) -> int:
    tok = _load(args)
    text = _text_arg(args)
    ids = tok.encode(text, allowed_special=allowed_special(args))
    pieces = [_visible(p) for p in token_pieces(tok, ids)]
    colour = args.color or (not args.no_color and sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    if colour:
        coloured = [
            f"\x1b[48;5;{_COLOURS[k % len(_COLOURS)]}m\x1b[30m{p}\x1b[0m" for k, p in enumerate(pieces)
        ]
        print("".join(coloured))
        print(
            " ".join(f"\x1b[48;5;{_COLOURS[k % len(_COLOURS)]}m\x1b[30m{i}\x1b[0m" for k, i in enumerate(ids))
        )
    else:
        print("".join(f"[{p}|{i}]" for p, i in zip(pieces, ids)))
    print(f"{len(ids)} tokens, {len(text)} characters, {len(text.encode('utf-8', 'replace'))} bytes")
    return 0
