"""Classify text with a model from 'scratchllm finetune classify': prints the label and its probability.

Texts come from --text (repeatable) or, without it, one per line on stdin.

examples:
  scratchllm classify --model runs/spam --text "You won a prize! Reply now to claim it."
  cat messages.txt | scratchllm classify --model runs/spam --json
"""

from __future__ import annotations

import argparse
import sys

from scratchllm.cli.common import (
    add_json_arg,
    add_model_arg,
    add_threads_arg,
    apply_threads,
    load_model_for,
    print_json,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arg(p, help="a classifier run directory (or one of its checkpoints)")
    p.add_argument(
        "--text", action="append", default=None, help="text to classify (repeatable; default: stdin lines)"
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    add_json_arg(p)
    add_threads_arg(p)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    from scratchllm.errors import ScratchLLMError
    from scratchllm.evaluate.classify import classify_texts

    loaded = load_model_for(
        args.model,
        verb="classify",
        verb_hint="classify needs a classifier (train one with 'scratchllm finetune classify')",
        device=args.device,
    )
    texts = args.text if args.text is not None else [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise ScratchLLMError("nothing to classify: pass --text or pipe lines on stdin")
    results = classify_texts(loaded.model, loaded.tokenizer, texts)
    if args.json:
        print_json(results if len(results) > 1 or args.text is None else results[0])
        return 0
    for r in results:
        prefix = "" if len(results) == 1 else f"{r['text'][:60]!r}\t"
        print(f"{prefix}{r['label']}\t{r['probability']:.4f}")
    return 0
