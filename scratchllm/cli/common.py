"""Flags shared by all verbs, with one name per idea (see docs/ARCHITECTURE.md)."""

from __future__ import annotations

import argparse
import json
import sys
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


def add_seed_arg(p: argparse.ArgumentParser, default: int | None = None) -> None:
    p.add_argument("--seed", type=int, default=default, help="random seed")


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def add_out_arg(p: argparse.ArgumentParser, *, required: bool = True, help: str = "output path") -> None:
    p.add_argument("--out", required=required, help=help)
    p.add_argument("--force", action="store_true", help="allow overwriting an existing output")


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    sys.stdout.flush()
