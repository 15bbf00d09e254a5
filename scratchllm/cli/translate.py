"""Run an encoder-decoder (seq2seq) model on text: greedy or beam-search decoding.

examples:
  scratchllm train --arch seq2seq --data dates --out runs/dates
  scratchllm translate --model runs/dates --text "3rd of March 1998"
  scratchllm translate --model runs/dates --text "Mar 3, 98" --beam 4 --plot-attention attn.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
    add_model_arg(p, help="a seq2seq run directory or checkpoint")
    p.add_argument("--text", required=True, action="append", help="source text (repeatable)")
    p.add_argument("--beam", type=int, default=1, help="beam width (1 = greedy decoding)")
    p.add_argument(
        "--max-len", type=int, default=None, help="longest output in tokens (default: context_length)"
    )
    p.add_argument(
        "--plot-attention", metavar="PNG", help="save the cross-attention heatmap of the first text"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing --plot-attention file")
    add_json_arg(p)
    add_threads_arg(p)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    from scratchllm.errors import ScratchLLMError

    require_positive(args, "beam", "max_len")
    if args.plot_attention and Path(args.plot_attention).exists() and not args.force:
        raise ScratchLLMError(f"{args.plot_attention} exists; pass --force to overwrite it")
    from scratchllm.generate.seq2seq import cross_attention_map, translate
    from scratchllm.visualize import plot_cross_attention

    loaded = load_model_for(
        args.model,
        verb="translate",
        verb_hint="translate needs an encoder-decoder "
        "(train one with 'scratchllm train --arch seq2seq --data dates')",
    )
    outputs = translate(loaded.model, loaded.tokenizer, args.text, beam=args.beam, max_len=args.max_len)
    if args.plot_attention:
        weights, src, tgt = cross_attention_map(loaded.model, loaded.tokenizer, args.text[0], outputs[0])
        plot_cross_attention(weights, src, tgt, args.plot_attention)
    if args.json:
        print_json([{"source": s, "output": o} for s, o in zip(args.text, outputs, strict=True)])
    else:
        for out in outputs:
            print(out)
    if args.plot_attention and not args.json:
        import sys

        print(f"saved cross-attention heatmap to {args.plot_attention}", file=sys.stderr)
    return 0
