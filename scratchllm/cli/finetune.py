"""Fine-tune a pretrained GPT: 'classify' (a new class head) or 'instruct' (Alpaca-style answers).

--model is the base: a scratchllm run or checkpoint, or a Hugging Face GPT-2 directory ('classify'
also takes a BERT run: its head then reads the pooled [CLS] vector; no LoRA for BERT). The new
run directory (--out) is an ordinary run (config.json, model.safetensors, checkpoints/,
metrics.jsonl, loss.png) plus test_metrics.json — and, for instruct, test_responses.json with a
generated answer for every test record; LoRA runs also get adapter/ (for 'scratchllm lora merge').
Training keys come from the fine-tuning defaults (lr 5e-5, or 5e-4 with LoRA; batch 8), then
--preset/--config/--set; --epochs sets max_steps unless --set max_steps=N is given.
Ctrl-C saves a checkpoint; continue with the same command plus --resume.

examples:
  scratchllm finetune classify --model runs/base --data sms.tsv --label-column label --balance --out runs/spam
  scratchllm finetune classify --model runs/bert --data sms.tsv --trainable all --out runs/bert-spam
  scratchllm finetune classify --model gpt2-dir --train a.csv --val b.csv --test c.csv --trainable all --out r
  scratchllm finetune instruct --model gpt2-dir --data instruction-data.json --out runs/alpaca
  scratchllm finetune instruct --model runs/base --data data.jsonl --lora-r 8 --lora-alpha 16 --out runs/lora
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
    interrupted_message,
    make_echo,
    print_json,
    require_positive,
    training_exit_code,
)


def _common(p: argparse.ArgumentParser, *, trainable_default: str) -> None:
    p.add_argument(
        "--model", help="base model: run dir, checkpoint or Hugging Face GPT-2 dir (not needed with --resume)"
    )
    p.add_argument(
        "--data",
        "--train",
        dest="train",
        required=True,
        help="training file (or the only file, split by --split)",
    )
    p.add_argument("--val", help="validation file (default: a --split share of --data)")
    p.add_argument("--test", help="test file (default: a --split share of --data)")
    add_out_arg(p, help="run directory to create (or continue with --resume)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its newest checkpoint"
    )
    add_config_args(p)
    add_seed_arg(p, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda or mps")
    p.add_argument(
        "--epochs", type=float, default=None, help="passes over the training data (sets max_steps)"
    )
    p.add_argument(
        "--trainable",
        choices=["head", "last", "all"],
        default=trainable_default,
        help=f"what trains without LoRA: the head, the last --trainable-blocks blocks + final norm + head, "
        f"or all (default: {trainable_default})",
    )
    p.add_argument("--trainable-blocks", type=int, default=1, help="blocks that train with --trainable last")
    g = p.add_argument_group("LoRA (train low-rank adapters instead; --lora-r turns it on)")
    g.add_argument("--lora-r", type=int, default=None, help="adapter rank, e.g. 8")
    g.add_argument("--lora-alpha", type=float, default=None, help="adapter scale numerator (default 2*r)")
    g.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapter input")
    g.add_argument(
        "--lora-targets", default=None, help="comma list of qkv, proj, fc, head (default qkv,proj,fc)"
    )
    add_threads_arg(p)
    p.add_argument(
        "--yes", action="store_true", help="train even when the estimated peak memory exceeds what is free"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_json_arg(p)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="task", required=True, metavar="{classify,instruct}")
    raw = argparse.RawDescriptionHelpFormatter
    c = sub.add_parser(
        "classify",
        help="text classification with a new output head",
        description="Fine-tune a GPT or BERT as a text classifier (labelled CSV/TSV/JSONL data).",
        epilog="examples:" + __doc__.split("examples:", 1)[1],
        formatter_class=raw,
    )
    _common(c, trainable_default="last")
    c.add_argument("--split", default="0.7,0.1,0.2", help="train,val,test fractions of a single file")
    c.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    c.add_argument("--label-column", default="label", help="column holding the label (default: label)")
    c.add_argument("--balance", action="store_true", help="undersample the training classes to equal counts")
    c.add_argument("--max-length", type=int, default=None, help="truncate texts to this many tokens")

    i = sub.add_parser(
        "instruct",
        help="instruction following (Alpaca-style records)",
        description="Fine-tune a GPT to follow instructions (Alpaca-style JSON/JSONL records).",
        epilog=c.epilog,
        formatter_class=raw,
    )
    _common(i, trainable_default="all")
    i.add_argument("--split", default="0.85,0.05,0.1", help="train,val,test fractions of a single file")
    i.add_argument("--template", default=None, help="prompt template: alpaca (default), phi3, or a JSON file")
    i.add_argument(
        "--no-prompt-mask",
        dest="mask_prompt",
        action="store_false",
        help="also compute the loss on prompt tokens",
    )
    i.add_argument("--max-new-tokens", type=int, default=256, help="longest generated test response")


def run(args: argparse.Namespace) -> int:
    from scratchllm.errors import ScratchLLMError
    from scratchllm.finetune.common import describe_params, lora_from_args, resolve_train_config

    if args.force and args.resume:
        raise ScratchLLMError("--force and --resume contradict each other: choose one")
    if not args.resume and not args.model:
        raise ScratchLLMError("--model (the base model to fine-tune) is required unless --resume")
    lora = lora_from_args(args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_targets)
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    if args.threads is not None:
        overrides.append(f"threads={args.threads}")
    require_positive(args, *(d for d in ("max_length", "max_new_tokens") if hasattr(args, d)))
    rc = resolve_train_config(
        preset=args.preset, config_file=args.config, overrides=overrides, lora=lora is not None
    )
    # --set max_steps=N wins over --epochs; otherwise the book's epochs (classify 5, instruct 2).
    default_epochs = 5.0 if args.task == "classify" else 2.0
    epochs = (
        None if "max_steps" in rc.explicit else (args.epochs if args.epochs is not None else default_epochs)
    )
    seed = rc.train.seed
    quiet = args.quiet or args.json
    echo = make_echo(quiet)
    common = dict(
        train_cfg=rc.train,
        trainable=args.trainable,
        last_blocks=args.trainable_blocks,
        lora=lora,
        dropout=rc.dropout,
        resume=args.resume,
        force=args.force,
        progress=not quiet,
        echo=echo,
        check_memory=not args.yes,
        estimate_time=True,
    )

    if args.task == "classify":
        from scratchllm.evaluate.metrics import format_confusion
        from scratchllm.finetune.classify import finetune_classify
        from scratchllm.tasks.classify import load_classification_data

        data = load_classification_data(
            args.train,
            val=args.val,
            test=args.test,
            split=args.split,
            text_column=args.text_column,
            label_column=args.label_column,
            balance=args.balance,
            seed=seed,
        )
        echo(
            f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test rows; "
            f"labels: {', '.join(data.labels)}"
        )
        res = finetune_classify(
            args.model,
            data,
            args.out,
            max_length=args.max_length,
            epochs=epochs,
            **common,
        )
        summary = _summary(res, labels=res.labels, **res.metrics)
        if args.json:
            print_json(summary)
        else:
            print(describe_params(res.trainable, res.total))
            for split, m in res.metrics.items():
                print(
                    f"{split}: accuracy {m['accuracy']:.4f}  precision {m['precision']:.4f}  recall "
                    f"{m['recall']:.4f}  f1 {m['f1']:.4f}  loss {m['loss']:.4f}  ({m['n']} rows)"
                )
                print(format_confusion(m["confusion_matrix"], m["labels"]))
            _print_tail(res, args.out)
            if res.train_result.interrupted is None:
                print(f'try it: scratchllm classify --model {args.out} --text "..."')
        return training_exit_code(res.train_result)

    from scratchllm.data.instruction import get_template
    from scratchllm.finetune.instruct import finetune_instruct
    from scratchllm.tasks.instruct import load_instruction_data

    data = load_instruction_data(args.train, val=args.val, test=args.test, split=args.split, seed=seed)
    echo(f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test records")
    res = finetune_instruct(
        args.model,
        data,
        args.out,
        template=None if args.resume else get_template(args.template),
        mask_prompt=args.mask_prompt,
        max_new_tokens=args.max_new_tokens,
        epochs=epochs,
        **common,
    )
    summary = _summary(
        res,
        dropped=res.dropped,
        responses=str(res.responses_path) if res.responses_path else None,
        **{k: v for k, v in res.metrics.items() if k != "step"},
    )
    if args.json:
        print_json(summary)
    else:
        print(describe_params(res.trainable, res.total))
        for split in ("val", "test"):
            m = res.metrics.get(split)
            if m:
                line = f"{split}: response loss {m.get('response_loss', float('nan')):.4f}"
                line += f"  perplexity {m.get('perplexity', float('nan')):.2f}"
                if "rouge_l" in m:
                    line += f"  exact match {m['exact_match']:.4f}  ROUGE-L {m['rouge_l']:.4f}"
                    line += f"  ({m['n']} records)"
                print(line)
        if res.responses_path:
            print(f"test responses: {res.responses_path}")
        _print_tail(res, args.out)
        if res.train_result.interrupted is None:
            print(f"try it: scratchllm chat --model {args.out}")
    return training_exit_code(res.train_result)


def _summary(res, **extra) -> dict:
    """What both fine-tunes report with --json: the run, its size, and the task's own results."""
    return {
        "run_dir": str(res.run_dir),
        "step": res.steps,
        "trainable_params": res.trainable,
        "total_params": res.total,
        "truncated": res.truncated,
        "adapter": str(res.adapter) if res.adapter else None,
        "interrupted": res.train_result.interrupted,
        **extra,
    }


def _print_tail(res, out: str) -> None:
    tr = res.train_result
    message = interrupted_message(tr)
    if message:
        print(message, file=sys.stderr)
    if res.adapter:
        print(f"LoRA adapter: {res.adapter} (merge with: scratchllm lora merge --model {out} --out MERGED)")
    print(f"saved run to {out}")
