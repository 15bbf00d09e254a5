"""Train a small character-level GPT on the embedded corpus and print what it writes.

The whole pipeline in one command, on a laptop CPU in a few minutes, with no download: build a
character tokenizer from the embedded corpus (the prose of Python's own documentation), tokenize
it into train/val shards, pretrain a 4-layer GPT with the one training loop (progress bar, eval,
checkpoints), save the run, and print a few samples. Continue with 'scratchllm generate'.

The run directory is left as 'scratchllm train' leaves it (config.json, model.safetensors,
best.safetensors, tokenizer.json, checkpoints/, metrics.jsonl, loss.png) plus data/ (the shards).
An existing run is never overwritten without --force.

examples:
  scratchllm demo
  scratchllm demo --out runs/demo --max-steps 200 --force
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scratchllm.cli.common import add_seed_arg, add_threads_arg, apply_threads
from scratchllm.model.config import PRESETS

#: The demo's recipe: small enough for ~2 minutes on 2 CPU cores, big enough to learn words.
# The char-shakespeare preset's model — the book's small GPT with the switches that won its recipe
# search (RoPE, RMSNorm, SwiGLU, no biases: docs/guide/benchmarks.md) — with a longer context, as
# documentation prose has longer-range structure than verse lines.
DEMO_MODEL = {**PRESETS["char-shakespeare"]["model"], "context_length": 128}
DEMO_TRAIN = dict(
    max_steps=600,
    batch_size=16,
    lr=4e-3,
    min_lr=2e-4,
    warmup_steps=30,
    weight_decay=0.1,
    eval_interval=150,
    eval_steps=8,
    sample_interval=0,  # the demo prints its own samples at the end
    save_interval=200,
    log_interval=10,
)
PROMPTS = ("The ", "A function ", "If the ")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = __doc__.split("\n\n", 1)[1]  # the rest of this docstring: details and examples
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--force", action="store_true", help="retrain even if --out already holds a run")
    p.add_argument(
        "--max-steps", type=int, default=None, help=f"training steps (default {DEMO_TRAIN['max_steps']})"
    )
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda or mps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_seed_arg(p)
    add_threads_arg(p)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    from scratchllm.errors import ScratchLLMError

    out = Path(args.out)
    if args.max_steps is not None and args.max_steps < 1:
        raise ScratchLLMError(f"--max-steps must be >= 1 (got {args.max_steps})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise ScratchLLMError(
            f"{out} already holds files (a previous demo?); try 'scratchllm generate --model {out} "
            f'--prompt "The "\', or pass --force to train again'
        )

    from scratchllm.data.corpus import default_corpus
    from scratchllm.data.prepare import prepare
    from scratchllm.tokenizer import CharTokenizer

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    say("1/4 building a character tokenizer from the embedded corpus (Python's documentation prose)")
    tokenizer = CharTokenizer.train(default_corpus())
    say(f"    vocabulary: {tokenizer.vocab_size} symbols")
    say("2/4 tokenizing into train/val shards")
    data_dir = out / "data"
    meta = prepare(tokenizer, None, data_dir, force=True, progress=False)
    say(
        f"    {meta['train_tokens']:,} training tokens, {meta['val_tokens']:,} validation tokens "
        f"in {data_dir}"
    )

    from scratchllm.cli.common import make_echo, training_exit_code
    from scratchllm.cli.train import print_summary
    from scratchllm.train.pretrain import pretrain, setup_pretraining

    train_overrides = dict(DEMO_TRAIN)
    if args.max_steps is not None:
        train_overrides["max_steps"] = args.max_steps
        train_overrides["warmup_steps"] = min(DEMO_TRAIN["warmup_steps"], max(1, args.max_steps // 10))
    overrides = {**{f"model.{k}": v for k, v in DEMO_MODEL.items()}, **train_overrides}
    setup = setup_pretraining(
        data_dir, out, preset="char-shakespeare", overrides=overrides, seed=args.seed, device=args.device
    )
    n_params = sum(p.numel() for p in setup.model.parameters())
    cfg = setup.train_config
    say(
        f"3/4 training a {setup.model_config.n_layer}-layer GPT ({n_params / 1e6:.2f}M parameters) for "
        f"{cfg.max_steps} steps of {cfg.batch_size}x{setup.model_config.context_length} tokens"
    )
    # The directory holds only our fresh data/ now, so starting the run in it is safe.
    result = pretrain(setup, out, force=True, progress=not args.quiet, echo=make_echo(args.quiet))
    print_summary(result, str(out))
    if result.interrupted:
        print(f"interrupted: resume with 'scratchllm train --data {data_dir} --out {out} --resume'")
        return training_exit_code(result)

    say("4/4 samples (temperature 0.8, top-k 40):")
    import torch

    from scratchllm.generate import generate

    model = setup.model.eval()
    device = next(model.parameters()).device
    for i, prompt in enumerate(PROMPTS):
        g = torch.Generator(device=device).manual_seed(cfg.seed + i)
        ids = generate(model, tokenizer.encode(prompt), 160, temperature=0.8, top_k=40, generator=g)
        text = tokenizer.decode(ids.tolist())
        print(f"\n--- {prompt!r} ---\n{text}")
    print(f'\nnext: scratchllm generate --model {out} --prompt "The " --max-new-tokens 300')
    print(f"      scratchllm eval --model {out} --data {data_dir}")
    print(f"      (curves in {out / 'loss.png'}, metrics in {out / 'metrics.jsonl'})")
    return 0
