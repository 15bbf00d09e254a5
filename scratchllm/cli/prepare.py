"""Tokenize a corpus into train/val token shards (train.bin, val.bin, meta.json, tokenizer.json).

Inputs are text / Markdown files (one document each), JSON lines and Parquet files (one document
per record, --text-field), each optionally .gz/.zst/.bz2; directories are read recursively in
sorted order (--include / --exclude globs). Documents are separated by the <|endoftext|> id;
the text "<|endoftext|>" (any special token's text) inside a document is ordinary text unless
--allow-special is given, and the summary counts such literal occurrences. Without
--input the embedded default corpus is used. The last --val-fraction of the text becomes the
validation split. --clean first normalises, filters and de-duplicates (as 'scratchllm clean';
its options apply), so the split is made after de-duplication and no near-copy straddles it.

examples:
  scratchllm prepare --tokenizer tok.json --out data/default
  scratchllm prepare --tokenizer tok.json --input shakespeare.txt --out data/shakespeare
  scratchllm prepare --tokenizer gpt2_dir --input books/ --out data/books --workers 4
  scratchllm prepare --tokenizer tok.json --input crawl/ --clean --on-error skip --out data/crawl
  scratchllm prepare --tokenizer tok.json --input data/crawl-clean --out data/crawl   # a clean output dir
"""

from __future__ import annotations

import argparse

from scratchllm.cli.clean import add_clean_args, add_input_args, build_config, given_clean_options
from scratchllm.cli.common import add_allow_special_arg, add_json_arg, add_out_arg, print_json
from scratchllm.errors import ScratchLLMError


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
        help="files or directories (default: the embedded default corpus)",
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
    add_allow_special_arg(p, "the documents")
    add_json_arg(p)
    add_input_args(p)
    p.add_argument(
        "--clean",
        action="store_true",
        help="normalise, filter and de-duplicate first (report kept as clean-report.json)",
    )
    add_clean_args(p)


def run(args: argparse.Namespace) -> int:
    from scratchllm.data import prepare
    from scratchllm.tokenizer import load_tokenizer

    given = given_clean_options(args)
    if given and not args.clean:
        raise ScratchLLMError(f"{given[0]} is an option of the clean stage; add --clean")
    if args.clean and not args.input:
        raise ScratchLLMError("--clean needs --input (the embedded default corpus is clean already)")
    config = build_config(args) if args.clean else None
    tokenizer = load_tokenizer(args.tokenizer)
    result = prepare(
        tokenizer,
        args.input,
        args.out,
        val_fraction=args.val_fraction,
        force=args.force,
        workers=args.workers,
        progress=not (args.quiet or args.json),
        text_field=args.text_field,
        include=args.include,
        exclude=args.exclude,
        on_error=args.on_error,
        clean=config,
        allow_special=args.allow_special,
    )
    if args.json:
        print_json(result)
        return 0
    if "clean" in result:
        c = result["clean"]
        removed = ", ".join(f"{k} {v:,}" for k, v in c["removed_by_rule"].items() if v)
        print(
            f"cleaned {c['documents_in']:,} document(s): kept {c['documents_kept']:,}"
            + (f", removed {removed}" if removed else "")
            + " (details: clean-report.json)"
        )
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
        n = result.get("skipped_count", len(result["skipped"]))
        print(f"  skipped {n} file(s) that are not readable input (listed in meta.json)")
    errors = result.get("input_errors", {})
    if errors.get("count"):
        first = errors["first"][0]
        where = first["source"] + (f":{first['line']}" if first.get("line") else "")
        print(
            f"  skipped {errors['count']:,} bad input record(s) (--on-error skip), "
            f"e.g. {where}: {first['message']}"
        )
    literal = result["literal_specials"]
    if literal["count"]:
        seen = ", ".join(f"{name} x{n:,}" for name, n in literal["by_token"].items())
        how = (
            "read as special tokens (--allow-special)"
            if literal["read_as"] == "special tokens"
            else "read as ordinary text; --allow-special reads them as special tokens"
        )
        print(f"  the text spells out special tokens {literal['count']:,} time(s) ({seen}): {how}")
    if result["unsafe_cuts"]:
        print(f"  note: {result['unsafe_cuts']} chunk cut(s) fell inside a very long line (see meta.json)")
    print(f"wrote {result['out_dir']}")
    return 0
