"""See every idea of the pipeline work on real numbers, step by step.

Each topic runs the project's own code (the attention, norms, sampler, LoRA, MoE, masking,
tokenizers and schedule that train and serve) on a tiny model built on the spot, or on your
model with --model, and prints the intermediate numbers with what they mean and checks that
hold. --out DIR also writes pictures (PNG); without it nothing is written.

examples:
  scratchllm explain --list
  scratchllm explain attention
  scratchllm explain decoding --model runs/demo --text "The function "
  scratchllm explain embeddings --model runs/demo --out pics/
  scratchllm explain tokenization --tokenizer path/to/gpt2
  scratchllm explain gpt --preset gpt2-medium
  scratchllm explain kv-cache --json
"""

from __future__ import annotations

import argparse
import sys

from scratchllm.cli.common import add_json_arg, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("topic", nargs="?", help="what to explain (see --list)")
    p.add_argument("--list", action="store_true", help="list the topics with one line each and exit")
    p.add_argument(
        "--model",
        help="use your model (a run directory, a checkpoint, or a Hugging Face GPT-2 directory) "
        "instead of a tiny one built on the spot",
    )
    p.add_argument("--text", help="the text the topic works on (each topic has a default)")
    p.add_argument("--out", help="directory for the topic's pictures (PNG); without it no file is written")
    p.add_argument("--force", action="store_true", help="overwrite pictures already in --out")
    p.add_argument(
        "--seed", type=int, default=0, help="random seed of the tiny models and samples (default 0)"
    )
    p.add_argument("--preset", help="gpt, weight-tying, scaling: the preset to describe (default gpt2)")
    p.add_argument(
        "--tokenizer",
        help="tokenization: one more tokenizer to compare, e.g. a GPT-2 directory (encoder.json + vocab.bpe)",
    )
    add_json_arg(p)


def _list(as_json: bool) -> int:
    from scratchllm.explain.registry import TOPIC_NEEDS, TOPICS

    if as_json:
        print_json(
            [
                {
                    "name": t.name,
                    "summary": t.summary,
                    "model": TOPIC_NEEDS[t.model].what if t.model else None,
                }
                for t in TOPICS.values()
            ]
        )
        return 0
    width = max(map(len, TOPICS))
    for t in TOPICS.values():
        print(f"{t.name.ljust(width)}  {t.summary}")
    print("\nrun 'scratchllm explain TOPIC' (add --model RUN for your model, --out DIR for pictures)")
    return 0


def run(args: argparse.Namespace) -> int:
    from scratchllm.errors import ScratchLLMError

    if args.list:
        return _list(args.json)
    from scratchllm.explain.registry import TOPICS, run_topic

    if not args.topic:
        raise ScratchLLMError(f"name a topic, one of: {', '.join(TOPICS)} (or --list)")
    result = run_topic(
        args.topic,
        model=args.model,
        text=args.text,
        out_dir=args.out,
        seed=args.seed,
        force=args.force,
        preset=args.preset,
        tokenizer=args.tokenizer,
    )
    if args.json:
        print_json(result.to_dict())
    else:
        from scratchllm.explain.result import to_text

        sys.stdout.write(to_text(result))
    return 0 if result.all_checks_hold else 1
