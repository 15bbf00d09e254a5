"""Generate text from a trained GPT (a run directory, a checkpoint, or a Hugging Face GPT-2 directory).

The continuation is streamed to the terminal as tokens arrive. Greedy with --temperature 0;
otherwise sampling, optionally limited by --top-k and/or --top-p. Generation stops after
--max-new-tokens, at <|endoftext|>, or at any --stop string (which is not printed).

Several outputs: --num-samples N continues each prompt N times and --prompt-file FILE reads one
prompt per line (blank lines skipped; '-' reads stdin). All rows (prompts x samples, up to
--batch-size at a time) are decoded together, left-padded in one batch: one forward pass per
step for all of them. Each output is printed when the batch is done, under a header; with --json
each is one JSON object per line (prompt_index, sample_index, prompt, text, tokens, new_tokens,
stop_reason, ...).

A prompt is ordinary text: "<|endoftext|>" written in it is 13 characters, not the document
separator; --allow-special reads special-token strings as the special tokens.

examples:
  scratchllm generate --model runs/demo --prompt "The meaning of"
  scratchllm generate --model runs/shakespeare --prompt "ROMEO:" --temperature 0.8 --top-k 40 --seed 1
  scratchllm generate --model gpt2-hf/ --prompt "Hello" --temperature 0 --int8 --json
  scratchllm generate --model runs/shakespeare --prompt "ROMEO:" --num-samples 4 --seed 1
  scratchllm generate --model runs/shakespeare --prompt-file prompts.txt --num-samples 2 --json > out.jsonl
  scratchllm generate --model gpt2-hf/ --prompt "Hello" --int8 --int8-kernel int8pack

On a CPU the weight products of each decoding step run the fastest kernel for this machine,
picked by a quick measurement the first time (cached in ~/.cache/scratchllm; the first use also
compiles scratchllm's C++ kernels, ~30 s): for fp32 weights scratchllm's matrix-vector kernel or
PyTorch's (SCRATCHLLM_FP32_DECODER=cpp|blas forces one), with --int8 one of the int8 kernels.
"""

from __future__ import annotations

import argparse
import sys
import time

from scratchllm.cli.common import (
    add_allow_special_arg,
    add_json_arg,
    add_model_arg,
    add_seed_arg,
    add_threads_arg,
    allowed_special,
    apply_threads,
    load_model_for,
    print_json,
    unescape,
)
from scratchllm.device import wait_policy


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = __doc__.split("\n\n", 1)[1]  # the rest of this docstring: details and examples
    add_model_arg(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="text to continue ('' starts from <|endoftext|>)")
    source.add_argument(
        "--prompt-file", metavar="FILE", help="one prompt per line (blank lines skipped; '-' = stdin)"
    )
    add_allow_special_arg(p, "the prompts")
    p.add_argument(
        "--num-samples", type=int, default=None, metavar="N", help="outputs per prompt (default 1)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="rows (prompts x samples) decoded together at most (default 64)",
    )
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate at most (default 200)")
    p.add_argument(
        "--temperature", type=float, default=0.8, help="0 = greedy; <1 sharper, >1 wilder (default 0.8)"
    )
    p.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample only within the top-p probability mass")
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="STR",
        help="stop when this text appears (repeatable; escapes like \\n and \\t are understood)",
    )
    p.add_argument(
        "--int8", action="store_true", help="int8 weights: faster CPU generation, tiny quality cost"
    )
    p.add_argument(
        "--int8-kernel",
        default="auto",
        choices=["auto", "cpp", "cpp-q8", "int8pack", "fp32"],
        help="with --int8: auto (default: the fastest here, measured once and cached), cpp "
        "(scratchllm's C++ kernel), cpp-q8 (the same with activations rounded to int8 in runs of "
        "16: integer dot products), int8pack (PyTorch's), fp32 (rounded weights in fp32)",
    )
    p.add_argument(
        "--device", default="auto", help="auto (default: cuda, then mps, then cpu), cpu, cuda, mps"
    )
    add_seed_arg(p)
    add_threads_arg(p)
    add_json_arg(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from scratchllm.device import resolve_device

    apply_threads(args)
    from scratchllm.errors import ScratchLLMError
    from scratchllm.generate import TextStreamer, check_sampling_args, stream

    # Check every argument before the (possibly slow) model load.
    check_sampling_args(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    args.stop = [unescape(s) for s in args.stop]
    prompts = read_prompts(args)  # None: one prompt, streamed

    device = resolve_device(args.device)
    if args.int8 and device != "cpu":
        raise ScratchLLMError("--int8 is for CPU generation; drop it or use --device cpu")
    if args.int8_kernel != "auto" and not args.int8:
        raise ScratchLLMError("--int8-kernel needs --int8")

    loaded = load_model_for(
        args.model,
        verb="generate",
        verb_hint="generate needs a GPT language model",
        device=device,
    )
    tok = loaded.tokenizer
    model = loaded.model
    kernel = decoder = fused = None
    if device == "cpu":
        from scratchllm.model import quantize as q8

        # This model only generates: use the faster CPU kernels (see scratchllm.model.quantize).
        if args.int8_kernel in ("auto", *q8.CPP_KERNELS) and not args.json and not q8.cpp_kernel_is_built():
            print("note: compiling scratchllm's decoding kernels for this CPU (once, ~30 s)", file=sys.stderr)
        if args.int8:
            if args.int8_kernel in q8.CPP_KERNELS and (why := q8.cpp_kernel_error()) is not None:
                raise ScratchLLMError(
                    f"--int8-kernel {args.int8_kernel} is unavailable here ({why}); use --int8-kernel auto"
                )
            model = q8.quantize_int8(model, kernel=args.int8_kernel)
            kernel = q8.kernel_in_use(model)
            fused = q8.fused_blocks(model)
        else:
            decoder = q8.prepare_fp32_decoding(model)

    eot = tok.special_tokens.get("<|endoftext|>")
    if prompts is not None:
        return run_many(args, prompts, model, tok, eot, source=loaded.source, device=device)

    # ordinary text unless --allow-special; a char tokenizer raises a clear error for unknown characters
    prompt_ids = tok.encode(args.prompt, allowed_special=allowed_special(args))
    if not prompt_ids:
        if eot is None:
            raise ScratchLLMError(
                "empty prompt and the tokenizer has no <|endoftext|> to start from; give --prompt"
            )
        prompt_ids = [eot]
    ctx = model.config.context_length
    note = None
    if len(prompt_ids) > ctx:
        note = f"prompt has {len(prompt_ids)} tokens; only the last {ctx} (the context length) are used"

    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=device).manual_seed(args.seed)
    streamer = TextStreamer(tok, prompt_ids, args.stop)
    out = sys.stdout
    if not args.json:
        if note:
            print(f"note: {note}", file=sys.stderr)
        out.write(args.prompt)
        out.flush()

    n_new = 0
    reason = "max_new_tokens"
    t0 = time.perf_counter()
    for token in stream(
        model,
        prompt_ids,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_id=eot,
        generator=generator,
        vocab_size=tok.vocab_size,
    ):
        n_new += 1
        if eot is not None and token == eot:
            reason = "eos"
            break
        piece = streamer.push(token)
        if piece and not args.json:
            out.write(piece)
            out.flush()
        if streamer.stopped:
            reason = "stop"
            break
    elapsed = time.perf_counter() - t0
    rest = streamer.finish()
    if streamer.stopped and reason == "max_new_tokens":
        reason = "stop"  # the stop string ended in bytes that only the final decode turned into text
    if args.json:
        result = {
            "prompt": args.prompt,
            "text": streamer.text,
            "new_tokens": n_new,
            "stop_reason": reason,
            "tokens_per_s": round(n_new / elapsed, 2) if elapsed > 0 else None,
            "model": loaded.source,
            "int8": bool(args.int8),
            "int8_kernel": kernel,
            "int8_fused_blocks": fused,
            "fp32_decoder": decoder,
            "omp_wait_policy": wait_policy(),
        }
        if note:
            result["note"] = note
        print_json(result)
    else:
        out.write(rest + "\n")
        out.flush()
        print(f"[{n_new} tokens, {n_new / elapsed:.1f} tokens/s, stop: {reason}]", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- several outputs


def read_prompts(args: argparse.Namespace) -> list[str] | None:
    """The prompts of a multi-output run (--prompt-file and/or --num-samples), else None."""
    from scratchllm.cli.common import require_positive
    from scratchllm.errors import ScratchLLMError

    require_positive(args, "num_samples", "batch_size")
    if args.prompt_file is None:
        return None if args.num_samples is None else [args.prompt]
    if args.prompt_file == "-":
        text = sys.stdin.read()
    else:
        from scratchllm.io import read_text

        text = read_text(args.prompt_file, "prompt file")
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ScratchLLMError(f"{args.prompt_file} holds no prompts; write one prompt per line")
    return prompts


def run_many(
    args: argparse.Namespace, prompts: list[str], model, tok, eot: int | None, *, source: str, device: str
) -> int:
    """Every prompt x --num-samples, decoded in left-padded batches; printed when done."""
    import dataclasses
    import json

    import torch
    from tqdm import tqdm

    from scratchllm.errors import ScratchLLMError
    from scratchllm.generate import generate_many

    n_samples = args.num_samples or 1
    ctx = model.config.context_length
    ids: list[list[int]] = []
    for k, prompt in enumerate(prompts):
        encoded = tok.encode(prompt, allowed_special=allowed_special(args))
        if not encoded:
            if eot is None:
                raise ScratchLLMError(
                    f"prompt {k} is empty and the tokenizer has no <|endoftext|> to start from"
                )
            encoded = [eot]
        if len(encoded) > ctx and not args.json:
            print(
                f"note: prompt {k} has {len(encoded)} tokens; only the last {ctx} are used", file=sys.stderr
            )
        ids.append(encoded)
    if args.temperature == 0 and n_samples > 1 and not args.json:
        print(
            f"note: --temperature 0 is greedy: the {n_samples} samples of a prompt are the same",
            file=sys.stderr,
        )
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=device).manual_seed(args.seed)
    rows = len(ids) * n_samples
    batches = -(-rows // args.batch_size)
    t0 = time.perf_counter()
    outputs = generate_many(
        model,
        tok,
        ids,
        args.max_new_tokens,
        num_samples=n_samples,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop=args.stop,
        eos_id=eot,
        generator=generator,
        batch_size=args.batch_size,
        progress=lambda b: tqdm(b, desc="batches", unit="batch", disable=None if batches > 1 else True),
    )
    elapsed = time.perf_counter() - t0
    total = sum(o.new_tokens for o in outputs)
    for o in outputs:
        if args.json:
            record = {**dataclasses.asdict(o), "prompt": prompts[o.prompt_index], "model": source}
            record["int8"] = bool(args.int8)
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            print(
                f"--- prompt {o.prompt_index}, sample {o.sample_index} "
                f"({o.new_tokens} tokens, stop: {o.stop_reason}) ---"
            )
            print(prompts[o.prompt_index] + o.text)
    sys.stdout.flush()
    if not args.json:
        rate = f", {total / elapsed:,.1f} tokens/s" if elapsed > 0 else ""
        print(
            f"[{len(outputs)} outputs in {batches} batch(es): {total:,} tokens in {elapsed:.1f} s{rate}]",
            file=sys.stderr,
        )
    return 0
