"""Chat with an instruction-tuned model: each line you type is answered, streamed token by token.

The prompt template is the one the model was fine-tuned with (saved in its config.json; Alpaca
for other models). Every line is a fresh instruction — these models have no memory of earlier
turns. Type 'exit' or end the input (Ctrl-D) to leave; lines can be piped in too.

examples:
  scratchllm chat --model runs/alpaca
  echo "Name three primary colours." | scratchllm chat --model runs/alpaca
"""

from __future__ import annotations

import argparse
import sys

from scratchllm.cli.common import add_model_arg, add_seed_arg, add_threads_arg, apply_threads, load_model_for


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arg(
        p, help="an instruction-tuned run directory (or any GPT run / Hugging Face GPT-2 directory)"
    )
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    p.add_argument(
        "--template", default=None, help="override the prompt template: alpaca, phi3 or a JSON file"
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    add_seed_arg(p)
    add_threads_arg(p)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    from scratchllm.architectures import names_where
    from scratchllm.data.instruction import get_template, template_of
    from scratchllm.generate import check_sampling_args
    from scratchllm.generate.chat import chat

    check_sampling_args(args.max_new_tokens, args.temperature, args.top_k, None)
    loaded = load_model_for(
        args.model,
        verb="chat",
        archs=names_where(generates_text=True),
        verb_hint="chat needs a GPT language model",
        device=args.device,
    )
    template = get_template(args.template) if args.template else template_of(loaded.config)
    interactive = sys.stdin.isatty()
    if interactive:
        print(
            f"chatting with {args.model} ({template.name} template); 'exit' or Ctrl-D to quit",
            file=sys.stderr,
        )

    def lines():
        while True:
            if interactive:
                print("> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line:
                return
            yield line

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    chat(
        loaded.model,
        loaded.tokenizer,
        template,
        lines(),
        write,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        after_reply=lambda: write("\n"),
    )
    return 0
