"""``scratchllm`` entry point.

Each verb lives in its own module under :mod:`scratchllm.cli` exposing::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...

Only the chosen verb's module is imported, so ``scratchllm --help`` and the tokenizer verbs
start quickly (no torch import). Errors a user can cause arrive as
:class:`~scratchllm.errors.ScratchLLMError` and are printed as one line with exit code 2.
Set ``SCRATCHLLM_DEBUG=1`` to see the full traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence

from scratchllm import __version__
from scratchllm.device import choose_wait_policy
from scratchllm.errors import ScratchLLMError, ScratchLLMWarning, os_error_message

# verb -> (module under scratchllm.cli, one-line help). The order is the pipeline's order.
VERBS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "train a small GPT on the embedded corpus and print samples (the main job)"),
    "tokenizer": ("tokenizer", "train, inspect and use tokenizers (char, word, byte-level BPE, GPT-2)"),
    "prepare": ("prepare", "tokenize text files into train/val token shards"),
    "clean": ("clean", "normalise, filter and de-duplicate a corpus into clean JSONL shards"),
    "inspect": ("inspect", "show a model's parameters, memory, FLOPs and layer table"),
    "train": ("train", "pretrain a model (GPT, BERT, seq2seq) on prepared data"),
    "generate": ("generate", "generate text from a trained model or a Hugging Face GPT-2 directory"),
    "eval": ("eval", "evaluate any model: the metrics that fit it, prompting, robustness, speed, memory"),
    "convert": ("convert", "import/export GPT-2 weights in the Hugging Face format"),
    "finetune": ("finetune", "fine-tune a model: classification or instruction following (LoRA too)"),
    "classify": ("classify", "classify text with a fine-tuned classifier"),
    "chat": ("chat", "chat interactively with an instruction-tuned model"),
    "serve": ("serve", "serve a model over an OpenAI-compatible HTTP API (continuous batching)"),
    "lora": ("lora", "LoRA adapters: merge an adapter into its base model"),
    "fill-mask": ("fill_mask", "fill [MASK] tokens with a BERT model"),
    "translate": ("translate", "run an encoder-decoder (seq2seq) model on text"),
    "compare": ("compare", "train several architecture variants on one budget and compare them"),
    "sweep": ("sweep", "scaling laws: train a ladder of sizes per compute budget and fit L(N, D)"),
    "explain": ("explain", "see each idea (attention, BPE, sampling, LoRA...) work on real numbers"),
}


#: Verbs whose OpenMP threads spin when the machine is quiet at start (long, compute-bound runs
#: that gain 5-25 % from it). ``serve`` is not among them: a server lives for days beside other
#: work, so its threads always sleep between tasks.
SPIN_IF_QUIET = frozenset({"demo", "train", "finetune", "generate", "eval", "chat", "compare", "sweep"})


def _available() -> dict[str, tuple[str, str]]:
    return {
        verb: spec
        for verb, spec in VERBS.items()
        if importlib.util.find_spec(f"scratchllm.cli.{spec[0]}") is not None
    }


def _top_parser(verbs: dict[str, tuple[str, str]]) -> argparse.ArgumentParser:
    width = max(len(v) for v in verbs) if verbs else 8
    listing = "\n".join(f"  {v.ljust(width)}  {h}" for v, (_, h) in verbs.items())
    p = argparse.ArgumentParser(
        prog="scratchllm",
        description="Build a large language model from scratch and run every stage of its life.",
        epilog=f"commands:\n{listing}\n\nRun 'scratchllm COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"scratchllm {__version__}")
    p.add_argument("command", nargs="?", help=argparse.SUPPRESS)
    return p


def build_parser(verb: str) -> tuple[argparse.ArgumentParser, object]:
    """Import a verb's module and build its parser (used by main and by tests)."""
    module_name, help_text = VERBS[verb]
    module = importlib.import_module(f"scratchllm.cli.{module_name}")
    parser = argparse.ArgumentParser(
        prog=f"scratchllm {verb}",
        description=(module.__doc__ or help_text).strip().split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbs = _available()
    if not argv or argv[0].startswith("-"):
        top = _top_parser(verbs)
        top.parse_args(argv)
        top.print_help()
        return 0 if not argv else 2
    verb, rest = argv[0], argv[1:]
    # How idle OpenMP threads wait, decided before torch loads its OpenMP runtime: the training
    # and decoding verbs let them spin if the cores are quiet now, everything else (and a busy
    # machine) makes them sleep — see scratchllm.device.choose_wait_policy.
    if not {"-h", "--help"} & set(rest):
        choose_wait_policy(spin_if_quiet=verb in SPIN_IF_QUIET)
    if verb not in verbs:
        print(
            f"scratchllm: error: unknown command {verb!r}; choose from {', '.join(verbs)}",
            file=sys.stderr,
        )
        return 2

    def show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if issubclass(category, ScratchLLMWarning):
            print(f"scratchllm {verb}: warning: {message}", file=sys.stderr)
        else:
            default_showwarning(message, category, filename, lineno, file, line)

    default_showwarning = warnings.showwarning
    warnings.showwarning = show_warning
    try:
        parser, module = build_parser(verb)
        args = parser.parse_args(rest)
        return int(module.run(args) or 0)
    except ScratchLLMError as err:
        if os.environ.get("SCRATCHLLM_DEBUG"):
            raise
        print(f"scratchllm {verb}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"scratchllm {verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `scratchllm generate ... | head` closes the pipe early; that is not an error.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except OSError as err:
        # A path the user gave cannot be read or written (permission, read-only, not a directory,
        # disk full...): the same one line as any other mistake, never a traceback.
        if os.environ.get("SCRATCHLLM_DEBUG"):
            raise
        print(f"scratchllm {verb}: error: {os_error_message(err)}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = default_showwarning


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
