"""Clean a corpus: normalise text, drop junk documents, remove exact and near duplicates.

Reads text, Markdown, JSON lines and Parquet files (each optionally .gz/.zst/.bz2; directories
recursively) and writes the documents that survive as JSONL shards (part-00000.jsonl ...) plus
report.json: documents and bytes in, removed by each rule with examples, kept. The quality rules
are the well-known Gopher / C4 / FineWeb heuristics (--list-filters shows them with their
thresholds); near duplicates are found with MinHash + LSH over word 5-grams and confirmed by
their exact Jaccard similarity. Feed the result to prepare: --input CLEAN_DIR.

examples:
  scratchllm clean crawl/ --out data/crawl-clean
  scratchllm clean dump.jsonl.zst --text-field content --on-error skip --out clean/
  scratchllm clean books/ --out clean/ --skip-filter word_count --threshold max_dup_lines=0.5
  scratchllm clean shards/ --include '*.parquet' --near-threshold 0.7 --boilerplate --out clean/
  scratchllm clean --list-filters
"""

from __future__ import annotations

import argparse
from typing import Any

from scratchllm.cli.common import add_json_arg, print_json
from scratchllm.errors import ScratchLLMError

#: dest -> flag, for the clean options (prepare accepts them only with --clean).
CLEAN_OPTIONS = {
    "normalize": "--normalize",
    "no_normalize": "--no-normalize",
    "boilerplate": "--boilerplate",
    "boilerplate_min_docs": "--boilerplate-min-docs",
    "boilerplate_min_fraction": "--boilerplate-min-fraction",
    "no_filters": "--no-filters",
    "skip_filter": "--skip-filter",
    "threshold": "--threshold",
    "no_exact_dedup": "--no-exact-dedup",
    "no_near_dedup": "--no-near-dedup",
    "near_threshold": "--near-threshold",
    "shingle_size": "--shingle-size",
    "num_perm": "--num-perm",
    "lsh_bands": "--lsh-bands",
    "lsh_rows": "--lsh-rows",
    "near_verify": "--near-verify",
    "max_doc_mb": "--max-doc-mb",
    "examples": "--examples",
}


def add_input_args(p: argparse.ArgumentParser) -> None:
    """How inputs are found and read (the one rule of scratchllm.data.readers), for every verb."""
    g = p.add_argument_group("reading inputs")
    g.add_argument(
        "--text-field",
        default="text",
        metavar="NAME",
        help="JSON lines / Parquet: the field (column) holding the text; a.b reaches into nested "
        "objects (default: text)",
    )
    g.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="in directories, read only files matching GLOB (repeatable; default: every known format: "
        ".txt .text .md .markdown .rst .jsonl .ndjson .json .parquet, each optionally .gz/.zst/.bz2); "
        "a GLOB without / matches the file name, with / the path below the directory",
    )
    g.add_argument(
        "--exclude", action="append", metavar="GLOB", help="in directories, skip files matching GLOB"
    )
    g.add_argument(
        "--on-error",
        choices=["fail", "skip"],
        default="fail",
        help="a line that is not JSON, lacks the field, a corrupt compressed file: stop with its file "
        "and line (fail, default), or skip it, count it and list it in the report (skip)",
    )


def add_clean_args(p: argparse.ArgumentParser) -> None:
    """The clean stage's options (normalisation, filters, dedup). Defaults are None: see build_config."""
    from scratchllm.data.dedup import VERIFY_CHOICES
    from scratchllm.data.quality import RULE_NAMES

    g = p.add_argument_group("normalisation")
    g.add_argument(
        "--normalize",
        metavar="STEPS",
        help="comma-separated steps: nfc, controls, whitespace (default: all three)",
    )
    g.add_argument("--no-normalize", action="store_true", default=None, help="no normalisation at all")
    g.add_argument(
        "--boilerplate",
        action="store_true",
        default=None,
        help="also drop lines repeated across many documents (navigation, footers): one extra pass",
    )
    g.add_argument(
        "--boilerplate-min-docs",
        type=int,
        metavar="N",
        help="a boilerplate line occurs in at least N documents (default 20) ...",
    )
    g.add_argument(
        "--boilerplate-min-fraction",
        type=float,
        metavar="F",
        help="... and in at least this share of all documents (default 0.001)",
    )
    g = p.add_argument_group("quality filters (see --list-filters)")
    g.add_argument("--no-filters", action="store_true", default=None, help="switch every quality filter off")
    g.add_argument(
        "--skip-filter",
        action="append",
        choices=RULE_NAMES,
        metavar="NAME",
        help="switch one filter off (repeatable): " + ", ".join(RULE_NAMES),
    )
    g.add_argument(
        "--threshold",
        action="append",
        metavar="NAME=VALUE",
        help="change a threshold (repeatable), e.g. --threshold min_words=20",
    )
    g.add_argument(
        "--max-doc-mb",
        type=float,
        metavar="MB",
        help="remove documents larger than this (rule too_large; default 16)",
    )
    g = p.add_argument_group("de-duplication")
    g.add_argument("--no-exact-dedup", action="store_true", default=None, help="keep exact duplicates")
    g.add_argument("--no-near-dedup", action="store_true", default=None, help="keep near duplicates")
    g.add_argument(
        "--near-threshold",
        type=float,
        metavar="J",
        help="Jaccard similarity of word-n-gram sets above which a later document is a near "
        "duplicate (default 0.8)",
    )
    g.add_argument("--shingle-size", type=int, metavar="N", help="words per shingle (default 5)")
    g.add_argument("--num-perm", type=int, metavar="K", help="MinHash permutations (default 128)")
    g.add_argument(
        "--lsh-bands", type=int, metavar="B", help="LSH bands (default: chosen from the threshold)"
    )
    g.add_argument("--lsh-rows", type=int, metavar="R", help="rows per LSH band (give with --lsh-bands)")
    g.add_argument(
        "--near-verify",
        choices=VERIFY_CHOICES,
        help="confirm LSH candidates by their exact Jaccard similarity (exact, default; stores shingle "
        "sets on disk) or by the MinHash estimate (signature)",
    )
    g.add_argument(
        "--examples", type=int, metavar="N", help="removed examples kept in the report per rule (default 5)"
    )


def add_output_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument(
        "--shard-mb", type=float, default=256, metavar="MB", help="size of one output shard (default 256)"
    )
    g.add_argument(
        "--compress",
        choices=["none", "gzip", "zstd"],
        default="none",
        help="compress the shards (default none)",
    )
    g.add_argument(
        "--keep-removed",
        action="store_true",
        help="also write every removed document, with the rule that removed it (and for duplicates "
        "the document it copies), to removed-00000.jsonl ...",
    )


def given_clean_options(args: argparse.Namespace) -> list[str]:
    """The clean options a user actually gave (their defaults are None)."""
    return [flag for dest, flag in CLEAN_OPTIONS.items() if getattr(args, dest, None) is not None]


def _thresholds(values: list[str] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ScratchLLMError(f"--threshold wants NAME=NUMBER, got {item!r}") from None
    return out


def build_config(args: argparse.Namespace) -> Any:
    """A validated :class:`scratchllm.data.clean.CleanConfig` from the parsed options."""
    from scratchllm.data.clean import CleanConfig
    from scratchllm.data.dedup import DedupConfig
    from scratchllm.data.normalize import NORMALIZE_STEPS, NormalizeConfig
    from scratchllm.data.quality import QualityConfig

    if args.no_normalize and args.normalize:
        raise ScratchLLMError("give --normalize STEPS or --no-normalize, not both")
    steps: list[str] = list(NORMALIZE_STEPS)
    if args.no_normalize:
        steps = []
    elif args.normalize:
        steps = [s.strip() for s in args.normalize.split(",") if s.strip()]
        bad = [s for s in steps if s not in NORMALIZE_STEPS]
        if bad:
            raise ScratchLLMError(
                f"unknown --normalize step {bad[0]!r}; choose from {', '.join(NORMALIZE_STEPS)}"
            )
    quality = QualityConfig.make(
        skip=args.skip_filter or (),
        only=[] if args.no_filters else None,
        thresholds=_thresholds(args.threshold),
    )
    dedup_kwargs = {
        "exact": not args.no_exact_dedup,
        "near": not args.no_near_dedup,
        "threshold": args.near_threshold,
        "ngram": args.shingle_size,
        "num_perm": args.num_perm,
        "bands": args.lsh_bands,
        "rows": args.lsh_rows,
        "verify": args.near_verify,
    }
    dedup = DedupConfig(**{k: v for k, v in dedup_kwargs.items() if v is not None})
    kwargs: dict[str, Any] = {
        "normalize": NormalizeConfig.from_steps(steps),
        "quality": quality,
        "dedup": dedup,
    }
    if args.boilerplate:
        kwargs["boilerplate"] = True
    for dest in ("boilerplate_min_docs", "boilerplate_min_fraction", "examples"):
        if getattr(args, dest) is not None:
            kwargs[dest] = getattr(args, dest)
    if args.max_doc_mb is not None:
        if args.max_doc_mb <= 0:
            raise ScratchLLMError("--max-doc-mb must be > 0")
        kwargs["max_doc_bytes"] = int(args.max_doc_mb * 1e6)
    if getattr(args, "shard_mb", None) is not None:
        if args.shard_mb <= 0:
            raise ScratchLLMError("--shard-mb must be > 0")
        kwargs["shard_bytes"] = int(args.shard_mb * 1e6)
    if getattr(args, "compress", None):
        kwargs["compress"] = args.compress
    if getattr(args, "keep_removed", False):
        kwargs["keep_removed"] = True
    return CleanConfig(**kwargs).validated()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.add_argument("inputs", nargs="*", metavar="IN", help="files or directories to clean")
    p.add_argument("--out", help="output directory for the shards and report.json")
    p.add_argument("--force", action="store_true", help="allow replacing the contents of an existing --out")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes (default: all cores, up to 8, for inputs over 8 MB; 1 = no pool)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--list-filters", action="store_true", help="list the quality filters and thresholds, and exit"
    )
    add_json_arg(p)
    add_input_args(p)
    add_clean_args(p)
    add_output_args(p)


def list_filters() -> str:
    """The quality rules with their thresholds and sources, as a table."""
    from scratchllm.data.quality import DEFAULT_THRESHOLDS, RULES

    lines = [f"{'filter':<18} {'thresholds (--threshold NAME=VALUE)':<58} source"]
    for rule in RULES:
        th = ", ".join(f"{t}={DEFAULT_THRESHOLDS[t]:g}" for t in rule.thresholds)
        lines.append(f"{rule.name:<18} {th:<58} {rule.source}")
        lines.append(f"{'':<18} {rule.description}")
    return "\n".join(lines)


def print_examples(report: dict[str, Any], per_rule: int = 1) -> None:
    for r in report["removed"]:
        for ex in r["examples"][:per_rule]:
            text = " ".join(ex["text"].split())[:90]
            value = f" ({r['rule']}: {ex['value']})" if "value" in ex else ""
            dup = f" (copy of {ex['duplicate_of']})" if ex.get("duplicate_of") else ""
            print(f"  e.g. {r['rule']}: {ex['source']}{value}{dup}: {text!r}")


def run(args: argparse.Namespace) -> int:
    if args.list_filters:
        print(list_filters())
        return 0
    if not args.inputs:
        raise ScratchLLMError("give the files or directories to clean (scratchllm clean IN... --out DIR)")
    if not args.out:
        raise ScratchLLMError("give --out DIR for the cleaned shards and report.json")
    from scratchllm.data.clean import clean, report_table

    report = clean(
        args.inputs,
        args.out,
        build_config(args),
        text_field=args.text_field,
        include=args.include,
        exclude=args.exclude,
        on_error=args.on_error,
        workers=args.workers,
        progress=not (args.quiet or args.json),
        force=args.force,
    )
    if args.json:
        print_json(report)
        return 0
    print(
        f"cleaned {report['documents_in']:,} document(s), {report['bytes_in'] / 1e6:,.2f} MB "
        f"in {report['seconds']:.1f} s"
    )
    print(report_table(report))
    print_examples(report)
    shards = report["shards"]
    print(f"wrote {len(shards)} shard(s) and report.json (every rule's examples) to {args.out}")
    print(f"next: scratchllm prepare --tokenizer TOK --input {args.out} --out DATA_DIR")
    return 0
