"""Evaluate a language model on prepared data: loss, perplexity, speed and peak memory.

The model may be a run directory, a checkpoint, a .safetensors file with its config.json, or a
Hugging Face GPT-2 directory. The data must have been prepared with the model's tokenizer.

examples:
  scratchllm eval --model runs/shakespeare --data data/shakespeare
  scratchllm eval --model runs/shakespeare/best.safetensors --data data/shakespeare --json
  scratchllm eval --model runs/demo --data data/other --split train --max-batches 50
"""

from __future__ import annotations

import argparse

from scratchllm.cli.common import add_json_arg, add_model_arg, print_json, require_positive

# Enough windows for a steady estimate (over 130k predictions at context 32, 4M at 1024) while
# keeping a large validation split from taking hours; every batch size scores the same ones.
DEFAULT_MAX_WINDOWS = 4096


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = __doc__.split("\n\n", 1)[1]  # the rest of this docstring: details and examples
    add_model_arg(p)
    p.add_argument("--data", required=True, help="prepared data directory (from 'scratchllm prepare')")
    p.add_argument(
        "--split", choices=("val", "train"), default="val", help="which split to score (default val)"
    )
    p.add_argument(
        "--max-windows",
        type=int,
        default=DEFAULT_MAX_WINDOWS,
        help=f"score the first N windows of the split (default {DEFAULT_MAX_WINDOWS}; the same tokens "
        "whatever --batch-size)",
    )
    p.add_argument(
        "--max-batches",
        type=int,
        default=None,
        help="also stop after this many batches (the windows scored then depend on --batch-size)",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="windows per batch (default: the run's, or 8)"
    )
    p.add_argument(
        "--context-length",
        type=int,
        default=None,
        help="tokens per window (default: the model's context length)",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    add_json_arg(p)


def run(args: argparse.Namespace) -> int:
    from scratchllm.errors import ScratchLLMError

    require_positive(args, "max_windows", "max_batches", "batch_size")

    from scratchllm.architectures import get_architecture
    from scratchllm.data.shards import load_shards
    from scratchllm.device import resolve_device
    from scratchllm.evaluate.lm import evaluate_lm
    from scratchllm.load import load_model

    shards = load_shards(args.data)
    device = resolve_device(args.device)
    loaded = load_model(args.model, device=device)
    if not get_architecture(loaded.arch).generates_text:
        raise ScratchLLMError(
            f"{args.model} is a {loaded.arch} model; "
            "'scratchllm eval' scores next-token language models (gpt)"
        )
    if loaded.tokenizer is not None:
        shards.check_tokenizer(loaded.tokenizer)
    model_cfg = loaded.model.config
    if shards.vocab_size > model_cfg.vocab_size:
        raise ScratchLLMError(
            f"the data uses {shards.vocab_size} token ids but the model only knows {model_cfg.vocab_size}; "
            "prepare the data with the model's tokenizer"
        )
    ctx = args.context_length or model_cfg.context_length
    if ctx > model_cfg.context_length:
        raise ScratchLLMError(
            f"--context-length {ctx} exceeds the model's context_length {model_cfg.context_length}"
        )
    batch_size = args.batch_size or int((loaded.config.get("train") or {}).get("batch_size") or 8)
    tokens = shards.val if args.split == "val" else shards.train

    result = evaluate_lm(
        loaded.model,
        tokens,
        context_length=ctx,
        batch_size=batch_size,
        max_batches=args.max_batches,
        max_windows=args.max_windows,
        device=device,
        name=f"{shards.path}/{args.split}.bin",
    )
    result = {
        "model": str(args.model),
        "source": loaded.source,
        "split": args.split,
        "device": device,
        **result,
    }
    if args.json:
        print_json(result)
        return 0
    print(f"model      {loaded.source}")
    print(
        f"data       {shards.path} ({args.split}: {result['tokens']:,} tokens scored "
        f"in {result['windows']:,} windows, {result['batches']} batches)"
    )
    print(
        f"val_loss   {result['val_loss']:.4f}"
        if args.split == "val"
        else f"loss       {result['val_loss']:.4f}"
    )
    print(f"perplexity {result['perplexity']:.2f}")
    print(f"speed      {result['tokens_per_s']:,.0f} tokens/s (forward only, {device})")
    mem = f"memory     peak RSS {result['peak_rss_mb']:,.0f} MiB"
    if "cuda_max_memory_mb" in result:
        mem += f", CUDA max allocated {result['cuda_max_memory_mb']:,.0f} MiB"
    print(mem)
    return 0
