"""Evaluate any model on the data it takes: the metrics that fit it, tokens/s and peak memory.

--model is a run directory, a checkpoint, a .safetensors file with its config.json, or a Hugging
Face GPT-2 directory; --data is what that model reads:
  GPT (also LoRA, instruction-tuned, HF)  prepared shards or text -> loss, perplexity
                                          a labelled CSV/TSV/JSONL -> zero-/few-shot classification
                                          {question, choices, answer} JSONL -> multiple choice
                                          instruction JSON/JSONL -> response loss, exact match, ROUGE-L
  BERT                                    text or shards -> masked-token and NSP accuracy
  seq2seq                                 'dates' or a source<TAB>target file -> exact match, CER, BLEU
  classifier (GPT or BERT head)           a labelled file -> accuracy, precision, recall, F1, confusion
A file a run was fine-tuned on is cut the way fine-tuning cut it and its test split is scored
(--split; the recipe comes from the run's config.json, else --split-fractions/--split-seed).
--perturb adds a clean-vs-noisy comparison, --ood-data a second (out-of-domain) data set.
--compare --row NAME=MODEL[,shots=K] ... scores several models on the same rows, one table.
--out FILE.json writes the result (or the table); --out FILE.jsonl appends one line per result
(per row with --compare), stamped with the time: evaluate checkpoint after checkpoint into one log.
Progress goes to stderr (a bar on a terminal, a plain line every 30 s in a log; --quiet: none).

examples:
  scratchllm eval --model runs/shakespeare --data data/shakespeare
  scratchllm eval --model runs/shakespeare --data notes.txt --ood-data ../python-docs.txt
  scratchllm eval --model runs/bert --data default --json
  scratchllm eval --model runs/dates --data dates --perturb typos=0.05,case=0.1
  scratchllm eval --model runs/spam --data sms.csv
  scratchllm eval --model runs/base --data sms.csv --task classify --shots 5 --normalization char
  scratchllm eval --model runs/alpaca --data instruction-data.json --limit 50
  scratchllm eval --model runs/shakespeare/checkpoints/step-00000800 --data data/shakespeare \\
      --out evals.jsonl --threads 1
  scratchllm eval --compare --data sms.csv --row zero-shot=runs/base --row 5-shot=runs/base,shots=5 \\
      --row fine-tuned=runs/spam --row LoRA=runs/spam-lora --perturb typos=0.05
"""

from __future__ import annotations

import argparse

from scratchllm.cli.common import (
    add_json_arg,
    add_model_arg,
    add_threads_arg,
    apply_threads,
    print_json,
    require_positive,
)

# Enough windows for a steady estimate (over 130k predictions at context 32, 4M at 1024) while
# keeping a large validation split from taking hours; every batch size scores the same ones.
DEFAULT_MAX_WINDOWS = 4096


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = __doc__.split("\n\n", 1)[1]  # the rest of this docstring: details and examples
    add_model_arg(p, required=False, help="the model: run dir, checkpoint, .safetensors or HF GPT-2 dir")
    p.add_argument("--data", required=True, help="what the model reads (see below)")
    p.add_argument(
        "--task",
        choices=("auto", "lm", "mlm", "seq2seq", "classify", "choice", "instruct"),
        default="auto",
        help="what to measure (default: chosen from the model and the data)",
    )
    p.add_argument(
        "--split",
        choices=("auto", "all", "train", "val", "test"),
        default="auto",
        help="shards: val (default) or train; files: all, or the train/val/test split fine-tuning "
        "makes (default: test for a file the run was fine-tuned on or when --shots > 0, else all)",
    )
    g = p.add_argument_group("language models (shards / text)")
    g.add_argument(
        "--max-windows",
        type=int,
        default=DEFAULT_MAX_WINDOWS,
        help=f"score the first N windows of the split (default {DEFAULT_MAX_WINDOWS}; the same tokens "
        "whatever --batch-size)",
    )
    g.add_argument(
        "--max-batches",
        type=int,
        default=None,
        help="also stop after this many batches (the windows scored then depend on --batch-size); "
        "BERT: how many seeded masked batches (default: the run's eval_steps)",
    )
    g.add_argument(
        "--context-length", type=int, default=None, help="tokens per window (default: the model's)"
    )
    g = p.add_argument_group("files (labelled rows, instructions, multiple choice, pairs)")
    g.add_argument("--limit", type=int, default=None, help="score only the first N rows of the split")
    g.add_argument("--split-fractions", default=None, help="train,val,test fractions to cut a file with")
    g.add_argument("--split-seed", type=int, default=None, help="the seed of that cut (default 1337)")
    g.add_argument("--text-column", default=None, help="text column (default: the run's, or text)")
    g.add_argument("--label-column", default=None, help="label column (default: the run's, or label)")
    g.add_argument("--max-new-tokens", type=int, default=256, help="longest generated response (instruct)")
    g.add_argument("--beam", type=int, default=1, help="beam width for seq2seq decoding (default greedy)")
    g = p.add_argument_group("zero-/few-shot prompting (a GPT on labelled rows or multiple choice)")
    g.add_argument("--shots", type=int, default=0, help="labelled examples in the prompt (default 0)")
    g.add_argument(
        "--shots-from", default=None, help="file to draw the examples from (default: the train split)"
    )
    g.add_argument(
        "--normalization",
        choices=("char", "token", "none"),
        default="char",
        help="label score: log-likelihood per character (default), per token, or the plain sum",
    )
    g.add_argument(
        "--prompt-format",
        choices=("auto", "plain", "instruct"),
        default="auto",
        help="plain text, or the run's instruction template (default: instruct for instruction-tuned runs)",
    )
    g.add_argument("--show-prompt", action="store_true", help="print the first query's whole prompt too")
    g = p.add_argument_group("robustness")
    g.add_argument(
        "--perturb",
        default=None,
        metavar="NAME=RATE,...",
        help="also score noisy inputs: typos, case, whitespace, truncate, drop, swap "
        "(e.g. typos=0.05,case=0.1)",
    )
    g.add_argument("--ood-data", default=None, help="a second, out-of-domain data set to score too")
    g = p.add_argument_group("comparing models")
    g.add_argument("--compare", action="store_true", help="score every --row on the same rows; one table")
    g.add_argument(
        "--row",
        action="append",
        default=[],
        metavar="NAME=MODEL[,shots=K]",
        help="a row of the comparison (repeatable; also normalization=char|token|none)",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="examples per batch (default: the run's, or 8)"
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    add_threads_arg(p)
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the few-shot examples and of --perturb (default 0)"
    )
    add_json_arg(p)
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="also write the metrics: FILE.json (the whole result) or FILE.jsonl (append one line per "
        "result / compared row)",
    )
    p.add_argument("--force", action="store_true", help="allow overwriting an existing --out .json file")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    from scratchllm.errors import ScratchLLMError

    require_positive(
        args, "max_windows", "max_batches", "batch_size", "limit", "context_length", "max_new_tokens", "beam"
    )
    if args.shots < 0:
        raise ScratchLLMError(f"--shots must be >= 0 (got {args.shots})")
    compare = args.compare or bool(args.row)
    if compare and args.model:
        raise ScratchLLMError("--compare takes its models from --row NAME=MODEL; drop --model")
    if args.compare and not args.row:
        raise ScratchLLMError("--compare needs rows: --row NAME=MODEL[,shots=K] (repeat it)")
    if not compare and not args.model:
        raise ScratchLLMError("--model is required (or --compare with --row NAME=MODEL ...)")
    from scratchllm.evaluate import run as ev

    if args.out:
        ev.check_out(args.out, force=args.force)  # an occupied --out fails before any work
    apply_threads(args)

    from scratchllm.architectures import get_architecture
    from scratchllm.device import resolve_device
    from scratchllm.load import load_model
    from scratchllm.progress import tracker

    device = resolve_device(args.device)
    opts = ev.EvalOptions(
        task=args.task,
        split=args.split,
        shots=args.shots,
        normalization=args.normalization,
        prompt_format=args.prompt_format,
        seed=args.seed,
        batch_size=args.batch_size,
        limit=args.limit,
        max_windows=args.max_windows,
        max_batches=args.max_batches,
        context_length=args.context_length,
        max_new_tokens=args.max_new_tokens,
        beam=args.beam,
        split_fractions=args.split_fractions,
        split_seed=args.split_seed,
        text_column=args.text_column,
        label_column=args.label_column,
        shots_from=args.shots_from,
        perturb=args.perturb,
        ood_data=args.ood_data,
        device=device,
        progress=tracker(not args.quiet),
    )
    if opts.perturb:
        from scratchllm.evaluate.perturb import parse_perturb

        parse_perturb(opts.perturb)  # a typo in the spec fails before any model loads
    from scratchllm.evaluate.inputs import sniff

    sniff(args.data)  # missing data fails before any model loads

    loaded: dict[str, ev.Subject] = {}

    def subject(path: str) -> ev.Subject:
        if path not in loaded:
            model = load_model(path, device=device)
            loaded[path] = ev.Subject(path, model, get_architecture(model.arch))
        return loaded[path]

    if compare:
        rows = []
        for spec in args.row:
            name, path, options = ev.parse_row(spec)
            shots = int(options["shots"]) if "shots" in options else None
            rows.append(ev.CompareRow(subject(path), name, shots, options.get("normalization")))
        result = ev.compare(rows, args.data, opts)
        text = ev.format_compare(result)
    else:
        result = ev.evaluate(subject(args.model), args.data, opts)
        text = ev.format_result(result)
        if args.show_prompt and "prompt" in result:
            text += f"\n--- the first prompt (each option is scored after it) ---\n{result['prompt']}"
    if args.out:
        ev.save_result(args.out, result, force=args.force)
    if args.json:
        print_json(result)
    else:
        print(text)
    return 0
