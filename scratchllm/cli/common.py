"""Flags shared by all verbs, with one name per idea (see docs/ARCHITECTURE.md)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any


def add_model_arg(p: argparse.ArgumentParser, *, required: bool = True, help: str | None = None) -> None:
    p.add_argument(
        "--model",
        required=required,
        help=help or "a run directory, a checkpoint, or a Hugging Face GPT-2 directory",
    )


def add_config_args(p: argparse.ArgumentParser) -> None:
    """--preset / --config / --set, applied in that order over the dataclass defaults."""
    p.add_argument("--preset", help="named config preset (see 'scratchllm inspect --list-presets')")
    p.add_argument("--config", help="TOML file with config keys (top level or [model]/[train] tables)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable), e.g. --set lr=3e-4 --set n_layer=2",
    )


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for the model's kernels (default: one per core; 1 is often faster on a busy "
        "machine)",
    )


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's thread count from ``--threads`` (a no-op without the flag)."""
    if getattr(args, "threads", None) is not None:
        from scratchllm.device import set_threads

        set_threads(args.threads)


def add_seed_arg(p: argparse.ArgumentParser, default: int | None = None) -> None:
    p.add_argument("--seed", type=int, default=default, help="random seed")


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def add_allow_special_arg(p: argparse.ArgumentParser, what: str = "the text") -> None:
    """``--allow-special``: read special-token strings in user text as the special tokens."""
    p.add_argument(
        "--allow-special",
        action="store_true",
        help=f"read special-token strings such as <|endoftext|> in {what} as the special tokens "
        "(default: they are ordinary text)",
    )


def allowed_special(args: argparse.Namespace) -> str | tuple[()]:
    """The ``allowed_special`` argument of ``Tokenizer.encode`` that ``--allow-special`` asks for."""
    return "all" if getattr(args, "allow_special", False) else ()


def add_out_arg(p: argparse.ArgumentParser, *, required: bool = True, help: str = "output path") -> None:
    p.add_argument("--out", required=required, help=help)
    p.add_argument("--force", action="store_true", help="allow overwriting an existing output")


def require_positive(args: argparse.Namespace, *dests: str) -> None:
    """A one-line error for the first of these integer options that is given and below 1."""
    from scratchllm.errors import ScratchLLMError

    for dest in dests:
        value = getattr(args, dest)
        if value is not None and value < 1:
            raise ScratchLLMError(f"--{dest.replace('_', '-')} must be >= 1 (got {value})")


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"'}


def unescape(text: str) -> str:
    """Turn the usual backslash escapes a user types (``\\n``, ``\\t``, ``\\r``, ``\\\\``, ``\\xNN``,
    ``\\uNNNN``) into the characters they mean: ``--stop "\\n\\n"`` must stop at a blank line although
    the shell passes the backslashes through. Other characters (any Unicode) are kept as they are."""
    import re

    def one(m: re.Match[str]) -> str:
        body = m.group(1)
        if body[0] in "xu":
            return chr(int(body[1:], 16))
        return _ESCAPES[body]

    return re.sub(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|[ntr0\\'\"])", one, text)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    sys.stdout.flush()


def load_model_for(
    path: str,
    *,
    verb: str,
    verb_hint: str,
    archs: Sequence[str] | None = None,
    device: str = "cpu",
    need_tokenizer: bool = True,
) -> Any:
    """Load a model for a verb that works only with some architectures: ``archs``, by default those
    whose registry record names ``verb`` as the verb that runs them.

    Anything else is a one-line error naming what the model is, what the verb needs (``verb_hint``,
    e.g. "fill-mask needs a BERT model (train one with ...)") and which verb runs this model.
    Returns :class:`scratchllm.runs.LoadedModel`.
    """
    from scratchllm.architectures import get_architecture, names_where
    from scratchllm.errors import ScratchLLMError
    from scratchllm.load import load_model

    loaded = load_model(path, device=device)
    if loaded.arch not in (archs if archs is not None else names_where(verb=verb)):
        other = get_architecture(loaded.arch).verb
        use = f"; use 'scratchllm {other}' for this model" if other != verb else ""
        raise ScratchLLMError(f"{path} is a {loaded.arch} model; {verb_hint}{use}")
    if need_tokenizer and loaded.tokenizer is None:
        raise ScratchLLMError(
            f"{path} has no tokenizer.json beside the weights; copy the run's tokenizer.json there"
        )
    return loaded


# ----------------------------------------------------------------------------- training verbs


def make_echo(quiet: bool):
    """Messages during training go to stderr, above the progress bar; only rank 0 speaks."""
    from scratchllm.device import is_main_process

    if quiet or not is_main_process():
        return lambda msg: None

    def echo(msg: str) -> None:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr)

    return echo


def interrupted_message(result: Any, resume_hint: str = "the same command plus --resume") -> str | None:
    """What to tell the user when a signal stopped training (None when it did not)."""
    if result.interrupted not in ("SIGINT", "SIGTERM"):
        return None
    return (
        f"{result.interrupted} received: saved a checkpoint at step {result.step}; "
        f"continue with {resume_hint}"
    )


def training_exit_code(result: Any) -> int:
    """0 when done or stopped by SIGTERM (after saving), 130 for Ctrl-C, as shells expect."""
    return 130 if result.interrupted == "SIGINT" else 0
