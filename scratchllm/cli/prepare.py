"""Tokenize text files into train/val token shards (train.bin, val.bin, meta.json, tokenizer.json).

Each file is a document (directories are read recursively, text files only, in sorted order);
documents are separated by <|endoftext|>. Without --input the embedded default corpus is used.
The last --val-fraction of the text becomes the validation split.

examples:
  scratchllm prepare --tokenizer tok.json --out data/default
  scratchllm prepare --tokenizer tok.json --input shakespeare.txt --out data/shakespeare
  scratchllm prepare --tokenizer gpt2_dir --input books/ --out data/books --workers 4
"""

from __future__ import annotations

import argparse

from scratchllm.cli.common import add_json_arg, add_out_arg, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = __doc__.split("\n\n", 1)[1]  # the details and examples below the one-line summary
    p.add_argument(
        "--tokenizer",
        required=True,
        help="tokenizer JSON (from 'scratchllm tokenizer train') or a GPT-2 directory",
    )
    p.add_argument(
        "--input",
        nargs="+",
        action="extend",
        metavar="FILE_OR_DIR",
        help="text files or directories (default: the embedded default corpus)",
    )
    add_out_arg(p, help="output directory for train.bin, val.bin, meta.json, tokenizer.json")
    p.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of the text for validation (default 0.1)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="encoding processes (default: all cores for inputs over 8 MB; 1 = no pool)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json_arg(p)


def run(args: argparse.Namespace) -> int:
    from scratchllm.data import prepare
    from scratchllm.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    result = prepare(
        tokenizer,
        args.input,
        args.out,
        val_fraction=args.val_fraction,
        force=args.force,
        workers=args.workers,
        progress=not (args.quiet or args.json),
    )
    if args.json:
        print_json(result)
        return 0
    total = result["train_tokens"] + result["val_tokens"]
    print(
        f"prepared {result['documents']:,} document(s), {result['total_bytes']:,} bytes "
        f"-> {total:,} tokens ({result['total_bytes'] / max(total, 1):.2f} bytes/token)"
    )
    print(f"  train.bin  {result['train_tokens']:,} tokens")
    print(f"  val.bin    {result['val_tokens']:,} tokens")
    print(
        f"  dtype {result['dtype']}, vocab {result['vocab_size']:,} ({result['tokenizer_kind']}), "
        f"{result['seconds']:.1f} s"
    )
    if result["skipped"]:
        print(f"  skipped {len(result['skipped'])} non-text or empty file(s) (listed in meta.json)")
    if result["unsafe_cuts"]:
        print(f"  note: {result['unsafe_cuts']} chunk cut(s) fell inside a very long line (see meta.json)")
    print(f"wrote {result['out_dir']}")
    return 0
