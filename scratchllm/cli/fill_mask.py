"""Fill [MASK] tokens with a BERT model: the top-k candidates for every mask.

One [MASK] stands for one token of the model's tokenizer: a character for a char-level BERT, a
word (or a piece of a rare one) for a BERT trained with --tokenizer on BPE. With byte-level BPE
the space before a [MASK] belongs to the word that fills it ("my good [MASK]" -> " lord").

examples:
  scratchllm train --arch bert --data default --out runs/bert
  scratchllm fill-mask --model runs/bert --text "The [MASK]ame of the function"
  scratchllm fill-mask --model runs/bert-bpe --text "Good morrow, my good [MASK]." --top-k 3 --json
"""

from __future__ import annotations

import argparse

from scratchllm.cli.common import (
    add_json_arg,
    add_model_arg,
    add_threads_arg,
    apply_threads,
    load_model_for,
    print_json,
    require_positive,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arg(p, help="a BERT run directory or checkpoint")
    p.add_argument("--text", required=True, help="text with one or more [MASK] tokens")
    p.add_argument("--top-k", type=int, default=5, help="candidates to show per mask (default 5)")
    add_json_arg(p)
    add_threads_arg(p)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    from scratchllm.errors import ScratchLLMError

    require_positive(args, "top_k")
    if "[MASK]" not in args.text:
        raise ScratchLLMError("the text has no [MASK] token; write [MASK] where a token should be filled in")
    from scratchllm.generate.fill_mask import fill_mask

    loaded = load_model_for(
        args.model,
        verb="fill-mask",
        verb_hint="fill-mask needs a BERT model "
        "(train one with 'scratchllm train --arch bert --data default')",
    )
    results = fill_mask(loaded.model, loaded.tokenizer, args.text, top_k=args.top_k)
    if args.json:
        print_json(results)
        return 0
    for k, mask in enumerate(results, start=1):
        if len(results) > 1:
            print(f"[MASK] #{k}:")
        for c in mask["candidates"]:
            print(f"  {c['probability']:6.3f}  {c['token']!r:>10}  {c['text']}")
    return 0
