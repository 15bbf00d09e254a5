"""LoRA adapters: 'merge' folds a LoRA run's adapters into its weights, giving a plain run.

The merged model computes the same outputs (to float rounding) with no adapter overhead, and
loads anywhere a plain model does. Give --base to attach an adapter to an explicit base model
(it must be the base the adapter was trained on: a fingerprint check refuses any other).

examples:
  scratchllm lora merge --model runs/lora --out runs/lora-merged
  scratchllm lora merge --model runs/lora/adapter --base runs/base --out runs/lora-merged
"""

from __future__ import annotations

import argparse

from scratchllm.cli.common import add_json_arg, add_out_arg, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="{merge}")
    m = sub.add_parser("merge", help="merge a LoRA adapter into its base model")
    m.add_argument(
        "--model", required=True, help="a LoRA run directory, or an adapter directory (RUN/adapter)"
    )
    m.add_argument("--base", default=None, help="the base model (default: the one recorded in the adapter)")
    add_out_arg(m, help="run directory for the merged model")
    add_json_arg(m)


def run(args: argparse.Namespace) -> int:
    from scratchllm.finetune.common import merge_adapter
    from scratchllm.io import ensure_empty_dir
    from scratchllm.runs import save_run_files

    merged = merge_adapter(args.model, args.base)
    out = ensure_empty_dir(args.out, force=args.force)
    save_run_files(
        out,
        merged.model,
        arch=merged.arch,
        model_config=merged.model.config,
        tokenizer=merged.tokenizer,
        extra=merged.extra,
    )
    n = sum(p.numel() for p in merged.model.parameters())
    if args.json:
        print_json({"out": str(out), "architecture": merged.arch, "params": n, "untied": merged.untied})
    else:
        if merged.untied:
            print(
                f"note: {', '.join(merged.untied)} had adapters on a tied weight; the merged model is untied"
            )
        print(f"merged {args.model} into a plain {merged.arch} model ({n:,} parameters): {out}")
    return 0
