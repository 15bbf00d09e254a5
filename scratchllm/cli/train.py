"""Pretrain a model on token shards from 'scratchllm prepare'.

Config resolves as: defaults -> --preset -> --config file.toml -> --set key=value (model and
train keys alike; 'scratchllm inspect --list-presets' lists presets). The model's vocab_size comes
from the data. The run directory gets config.json, tokenizer.json, model.safetensors,
best.safetensors, checkpoints/, metrics.jsonl and loss.png.

Ctrl-C or SIGTERM saves a checkpoint at the current step and exits; continue with the same
command plus --resume (bit-exact on the same machine). Several processes: run the same command
under 'torchrun --nproc_per_node K' — each holds the whole model (--strategy ddp, the default), or
a 1/K shard of the weights, gradients and AdamW state (--strategy fsdp: FSDP2, sharded
checkpoints; --set activation_checkpointing=true trades compute for activation memory).

exit codes: 0 done (or stopped by SIGTERM after saving), 2 bad input, 3 loss stayed non-finite
(the last good checkpoint is kept), 130 interrupted by Ctrl-C (after saving).

examples:
  scratchllm train --data data/shakespeare --out runs/shakespeare --preset char-shakespeare
  scratchllm train --data data/shakespeare --out runs/shakespeare --preset char-shakespeare --resume
  scratchllm train --data data/d --out runs/r --preset tiny --set max_steps=500 --set lr=3e-4
  torchrun --nproc_per_node 2 -m scratchllm train --data data/d --out runs/ddp --preset tiny
  torchrun --nproc_per_node 2 -m scratchllm train --data data/d --out runs/fsdp --preset tiny --strategy fsdp
  scratchllm train --arch bert --data book.txt --tokenizer bpe.json --out runs/bert --preset tiny
  scratchllm train --arch seq2seq --data pairs.tsv --tokenizer bpe.json --out runs/s2s
"""

from __future__ import annotations

import argparse
import os
import sys

from scratchllm.cli.common import (
    add_config_args,
    add_json_arg,
    add_out_arg,
    add_seed_arg,
    add_threads_arg,
    interrupted_message,
    make_echo,
    print_json,
    training_exit_code,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = __doc__.split("\n\n", 1)[1]  # the rest of this docstring: details and examples
    p.add_argument("--data", required=True, help="prepared data directory (train.bin, val.bin, meta.json)")
    add_out_arg(p, help="run directory to create (or continue with --resume)")
    p.add_argument("--arch", default=None, help="architecture: gpt (default), bert, seq2seq")
    p.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="bert/seq2seq: build on this trained tokenizer (a 'scratchllm tokenizer train' JSON file, "
        "a GPT-2 vocabulary directory or a run) instead of characters; the family's special tokens "
        "are appended. gpt: must be the tokenizer of --data",
    )
    add_config_args(p)
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its newest valid checkpoint"
    )
    add_seed_arg(p)
    p.add_argument(
        "--device", default=None, help="auto (default: cuda, then mps, then cpu), cpu, cuda or mps"
    )
    p.add_argument(
        "--allow-world-size-change",
        action="store_true",
        help="resume with a different number of processes (not bit-exact)",
    )
    p.add_argument(
        "--strategy",
        choices=("ddp", "fsdp"),
        default=None,
        help="under torchrun: ddp (every process holds the whole model; the default) or fsdp (FSDP2: "
        "each holds 1/K of the weights, gradients and optimizer state). Same as --set strategy=...",
    )
    add_threads_arg(p)
    p.add_argument(
        "--yes",
        action="store_true",
        help="train even when the estimated peak memory exceeds the memory available",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or samples")
    add_json_arg(p)


def summary(result, out: str) -> dict:
    return {
        "run_dir": str(result.run_dir),
        "step": result.step,
        "tokens_seen": result.tokens_seen,
        "elapsed": round(result.elapsed, 2),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "loss": result.final_loss,
        "val_loss": result.last_eval.get("val_loss"),
        "perplexity": result.last_eval.get("perplexity"),
        "best_val_loss": result.best_val_loss,
        "skipped_steps": result.skipped_steps,
        "interrupted": result.interrupted,
    }


def print_summary(result, out: str) -> None:
    s = summary(result, out)
    line = (
        f"step {s['step']}: {s['tokens_seen']:,} tokens, {s['elapsed']:.1f} s wall-clock, "
        f"{s['tokens_per_s']:,.0f} tokens/s while training"
    )
    if s["loss"] is not None:
        line += f", train loss {s['loss']:.4f}"
    if s["val_loss"] is not None:
        scored = result.last_eval.get("tokens")
        on = f" on {scored:,} val tokens (eval_steps batches)" if scored else ""
        line += f", val loss {s['val_loss']:.4f} (perplexity {s['perplexity']:.2f}{on})"
    print(line)
    if s["skipped_steps"]:
        print(f"skipped {s['skipped_steps']} step(s) with non-finite or spiking loss (see metrics.jsonl)")
    print(f"saved run to {out}")


def _bigger(arch: str) -> str:
    """Where the big shapes are, for the default-preset note."""
    return {"gpt": "--preset gpt2 for GPT-2 small", "bert": "--preset bert-base for BERT-base"}.get(
        arch, "'scratchllm inspect --list-presets' lists the others"
    )


def try_it(arch: str, out: str) -> str:
    """The next command to run with a freshly trained model (its registry record names the verb)."""
    from scratchllm.architectures import get_architecture

    verb = get_architecture(arch).verb
    example = {
        "generate": '--prompt "..."',
        "fill-mask": '--text "The [MASK] ..."',
        "translate": '--text "..."',
    }
    return f"try it: scratchllm {verb} --model {out} {example.get(verb, '')}".rstrip()


def run(args: argparse.Namespace) -> int:
    from scratchllm.errors import ScratchLLMError

    if args.force and args.resume:
        raise ScratchLLMError("--force and --resume contradict each other: choose one")
    from scratchllm.train.distributed import shutdown_distributed
    from scratchllm.train.pretrain import pretrain, setup_pretraining

    overrides = list(args.overrides) + ([f"threads={args.threads}"] if args.threads is not None else [])
    overrides += [f"strategy={args.strategy}"] if args.strategy else []
    setup = setup_pretraining(
        args.data,
        args.out,
        arch=args.arch,
        preset=args.preset,
        config_file=args.config,
        overrides=overrides,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
        check_memory=not args.yes,
        tokenizer=args.tokenizer,
    )
    echo = make_echo(args.quiet or args.json)
    if args.preset is None and setup.preset is not None:
        echo(f"no --preset given: using the laptop-sized {setup.preset!r} preset ({_bigger(setup.arch)})")
    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        result = pretrain(
            setup,
            args.out,
            force=args.force,
            progress=not (args.quiet or args.json),
            allow_world_size_change=args.allow_world_size_change,
            echo=echo,
            check_memory=not args.yes,
            estimate_time=True,
        )
    finally:
        from scratchllm.train.distributed import DistEnv

        shutdown_distributed(DistEnv(world_size=int(os.environ.get("WORLD_SIZE", "1"))))
    if main_rank:
        if args.json:
            print_json(summary(result, args.out))
        else:
            message = interrupted_message(result)
            if message:
                print(message, file=sys.stderr)
            print_summary(result, args.out)
            print(try_it(setup.arch, args.out))
    return training_exit_code(result)
