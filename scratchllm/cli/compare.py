"""Train several GPT variants with the same budget on the same data; write a table and a plot.

Each variant is the base config (--preset, default tiny; --config; --set) plus its own switches.
Output in --out: compare.md, compare.json (params, final val loss, tokens/s, time), val_loss.png
(overlaid validation curves) and runs/<variant>/ (ordinary run directories).

examples:
  scratchllm prepare --tokenizer char --out data/shakespeare ../shared/data/tinyshakespeare.txt
  scratchllm compare --data data/shakespeare --preset-variants default --max-steps 300 --out cmp
  scratchllm compare --data data/shakespeare --max-steps 200 --out cmp2 \\
      --variants "base:;rope:pos_emb=rope;llama:pos_emb=rope,norm=rmsnorm,activation=swiglu"
"""

from __future__ import annotations

import argparse
import sys

from scratchllm.cli.common import (
    add_config_args,
    add_json_arg,
    add_out_arg,
    add_seed_arg,
    add_threads_arg,
    apply_threads,
    print_json,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="prepared data directory (from 'scratchllm prepare')")
    add_out_arg(p, help="directory for the table, the plot and one run per variant")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--variants", help='"name:key=val,key=val;name2:key=val" (a bare "name:" = the base)')
    group.add_argument("--preset-variants", choices=["default"], help="a built-in line-up of variants")
    p.add_argument("--max-steps", type=int, required=True, help="training steps for every variant")
    add_config_args(p)
    add_seed_arg(p)
    add_threads_arg(p)
    add_json_arg(p)
    p.set_defaults(preset="tiny")


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    from scratchllm.train.compare import DEFAULT_VARIANTS, compare_variants, parse_variants

    variants = parse_variants(args.variants) if args.variants else dict(DEFAULT_VARIANTS)

    def echo(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    rows = compare_variants(
        args.data,
        args.out,
        variants,
        max_steps=args.max_steps,
        preset=args.preset,
        config_file=args.config,
        overrides=args.overrides,
        seed=args.seed,
        force=args.force,
        echo=echo,
    )
    if args.json:
        print_json([{k: v for k, v in r.items() if k != "val_curve"} for r in rows])
    else:
        from pathlib import Path

        print((Path(args.out) / "compare.md").read_text(encoding="utf-8"), end="")
        print(f"table: {args.out}/compare.md, plot: {args.out}/val_loss.png")
    return 0
