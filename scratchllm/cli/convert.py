"""Convert GPT-2 models between scratchllm and the Hugging Face transformers format, or
consolidate a sharded (FSDP) checkpoint into an ordinary run directory.

examples:
  scratchllm convert --from-hf gpt2 --out runs/gpt2      # HF directory -> scratchllm run directory
  scratchllm convert --to-hf runs/demo --out hf/demo     # run directory or checkpoint -> HF directory
  scratchllm convert --consolidate runs/fsdp --out runs/fsdp-one    # newest valid checkpoint
  scratchllm convert --consolidate runs/fsdp/checkpoints/step-00000200 --out runs/fsdp-200

--consolidate streams the shards into one model.safetensors a tensor at a time (memory: the largest
tensor, not the model) and copies config.json and tokenizer.json. Every command also reads a
sharded checkpoint directly (--model runs/fsdp/checkpoints/step-...), gathering it in memory.

A Hugging Face GPT-2 directory (config.json, model.safetensors or pytorch_model.bin, vocab.json +
merges.txt) can also be used directly wherever a model is expected, e.g.
'scratchllm generate --model gpt2'. The exported directory loads with
GPT2LMHeadModel.from_pretrained(dir) and AutoTokenizer.from_pretrained(dir).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scratchllm.cli.common import add_json_arg, add_out_arg, print_json
from scratchllm.errors import ScratchLLMError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = __doc__.split("\n\n", 1)[1]  # the examples and details below the one-line summary
    direction = p.add_mutually_exclusive_group(required=True)
    direction.add_argument(
        "--from-hf",
        metavar="HF_DIR",
        help="import: a Hugging Face GPT-2 directory (config.json + weights + vocab.json/merges.txt)",
    )
    direction.add_argument(
        "--to-hf",
        metavar="MODEL",
        help="export: a scratchllm run directory, checkpoint or .safetensors file of a GPT-2-compatible GPT",
    )
    direction.add_argument(
        "--consolidate",
        metavar="CHECKPOINT",
        help="a checkpoint directory (sharded by FSDP or not), or a run directory (its newest valid "
        "checkpoint) -> one ordinary run directory",
    )
    add_out_arg(
        p,
        help="output directory: a run directory (--from-hf, --consolidate) or a Hugging Face directory "
        "(--to-hf)",
    )
    add_json_arg(p)


def _import(args: argparse.Namespace) -> dict:
    from scratchllm.convert.hf_gpt2 import converted_from, load_hf_gpt2
    from scratchllm.io import ensure_empty_dir
    from scratchllm.runs import save_run_files

    # Refuse a populated --out before spending time on loading; create it only once loading worked.
    ensure_empty_dir(args.out, force=args.force, what="run directory", create=False)
    loaded = load_hf_gpt2(args.from_hf)
    out = ensure_empty_dir(args.out, force=args.force, what="run directory")
    cfg = loaded.model.config
    save_run_files(
        out,
        loaded.model,
        arch="gpt",
        model_config=cfg,
        tokenizer=loaded.tokenizer,
        extra={"converted_from": converted_from(args.from_hf)},
    )
    return {
        "direction": "from-hf",
        "input": str(args.from_hf),
        "out": str(out),
        "params": loaded.model.num_params(),
        "n_layer": cfg.n_layer,
        "n_embd": cfg.n_embd,
        "context_length": cfg.context_length,
        "files": sorted(p.name for p in out.iterdir() if p.is_file()),
    }


def _export(args: argparse.Namespace) -> dict:
    from scratchllm.architectures import get_architecture
    from scratchllm.convert.hf_gpt2 import export_hf_gpt2
    from scratchllm.load import load_model

    loaded = load_model(args.to_hf)
    if not get_architecture(loaded.arch).exports_to_hf:
        raise ScratchLLMError(
            f"{args.to_hf} holds a {loaded.arch} model; only GPT models can be exported as Hugging Face GPT-2"
        )
    files = export_hf_gpt2(loaded.model, loaded.tokenizer, args.out, force=args.force)
    cfg = loaded.model.config
    return {
        "direction": "to-hf",
        "input": str(args.to_hf),
        "source": loaded.source,
        "out": str(args.out),
        "params": loaded.model.num_params(),
        "n_layer": cfg.n_layer,
        "n_embd": cfg.n_embd,
        "context_length": cfg.context_length,
        "files": [Path(f).name for f in files],
    }


def _consolidate(args: argparse.Namespace) -> dict:
    from scratchllm.io import ensure_empty_dir
    from scratchllm.runs import consolidate_checkpoint

    source, out = Path(args.consolidate).resolve(), Path(args.out).resolve()
    if out == source or source in out.parents or out in source.parents:
        raise ScratchLLMError(
            f"--out {args.out} overlaps the checkpoint {args.consolidate}; choose a separate directory"
        )
    ensure_empty_dir(args.out, force=args.force, what="run directory", create=False)
    result = consolidate_checkpoint(args.consolidate, args.out)
    return {"direction": "consolidate", "input": str(args.consolidate), **result}


def run(args: argparse.Namespace) -> int:
    if args.consolidate:
        result = _consolidate(args)
        if args.json:
            print_json(result)
        else:
            how = f"{result['shards']} shards" if result["sharded"] else "one file"
            print(
                f"consolidated {result['checkpoint']} (step {result['step']}, {how}, {result['tensors']} "
                f"tensors) -> run directory {result['out']}"
            )
            print(f"files: {', '.join(result['files'])}")
        return 0
    result = _import(args) if args.from_hf else _export(args)
    if args.json:
        print_json(result)
        return 0
    shape = f"{result['params']:,} parameters, {result['n_layer']} layers, context {result['context_length']}"
    if result["direction"] == "from-hf":
        print(f"imported Hugging Face GPT-2 {result['input']} -> run directory {result['out']} ({shape})")
        print(f"files: {', '.join(result['files'])}")
        print(f"try:   scratchllm generate --model {result['out']} --prompt 'Hello, I am'")
    else:
        print(f"exported {result['source']} -> Hugging Face directory {result['out']} ({shape})")
        print(f"files: {', '.join(result['files'])}")
        print(f"load:  transformers.GPT2LMHeadModel.from_pretrained({result['out']!r})")
    return 0
