"""Serve a model over an OpenAI-compatible HTTP API, many requests at once (continuous batching).

Any text-generating model loads: a GPT run, a LoRA or instruction-tuned run, a checkpoint, a
Hugging Face GPT-2 directory. /v1/chat/completions formats messages with the run's fine-tuning
template (or a plain one for base models); /v1/completions continues raw text (echo + logprobs
scores a text, as lm-evaluation-harness does). /health, /metrics (Prometheus), /v1/models,
/tokenize and /detokenize come with it. Point the official openai client at
http://HOST:PORT/v1.

examples:
  scratchllm serve --model runs/demo
  scratchllm serve --model runs/alpaca --port 8080 --api-key secret --max-batch 8
  scratchllm serve --model gpt2-hf/ --int8
  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"model": "demo", "prompt": "The ", "max_tokens": 40, "temperature": 0}'
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from scratchllm.cli.common import add_allow_special_arg, add_model_arg, load_model_for, require_positive

API_KEY_ENV = "SCRATCHLLM_API_KEY"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arg(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set, else no key)",
    )
    p.add_argument(
        "--max-batch", type=int, default=16, help="sequences decoded together: KV-cache slots (default 16)"
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="requests that may wait for a slot; more get 429 (default 64)",
    )
    p.add_argument(
        "--prefill-chunk", type=int, default=512, help="prompt tokens prefilled per engine step (default 512)"
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="seconds a request may take (default 600; 0: none)",
    )
    p.add_argument("--max-body-mb", type=float, default=4.0, help="largest request body in MiB (default 4)")
    p.add_argument(
        "--model-name", default=None, help="the model id clients use (default: the --model directory's name)"
    )
    p.add_argument("--int8", action="store_true", help="int8 weights: faster CPU decoding, tiny quality cost")
    add_allow_special_arg(p, "/v1/completions prompts and /tokenize texts (chat messages: never)")
    p.add_argument(
        "--device", default="auto", help="auto (default: cuda, then mps, then cpu), cpu, cuda, mps"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level",
    )


def run(args: argparse.Namespace) -> int:
    from scratchllm.errors import ScratchLLMError

    require_positive(args, "max_batch", "prefill_chunk", "threads")
    if args.max_queue < 0:
        raise ScratchLLMError(f"--max-queue must be >= 0 (got {args.max_queue})")
    if not 0 <= args.port <= 65535:
        raise ScratchLLMError(f"--port must be in 0..65535 (got {args.port})")
    if args.request_timeout < 0 or args.max_body_mb <= 0:
        raise ScratchLLMError("--request-timeout must be >= 0 and --max-body-mb > 0")
    if not Path(args.model).exists():
        raise ScratchLLMError(
            f"model not found: {args.model} (give a run directory, a checkpoint or a Hugging Face dir)"
        )

    import torch

    from scratchllm.architectures import names_where
    from scratchllm.device import resolve_device
    from scratchllm.serve.app import ServeSettings
    from scratchllm.serve.server import EngineOptions, serve

    device = resolve_device(args.device)
    if args.int8 and device != "cpu":
        raise ScratchLLMError("--int8 is for CPU serving; drop it or use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    name = args.model_name or Path(args.model).resolve().name
    settings = ServeSettings(
        model_name=name,
        api_key=api_key,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        request_timeout=args.request_timeout or None,
        allow_special=args.allow_special,
    )
    options = EngineOptions(
        max_batch=args.max_batch, max_queue=args.max_queue, prefill_chunk=args.prefill_chunk, int8=args.int8
    )

    def load():
        return load_model_for(
            args.model,
            verb="serve",
            archs=names_where(generates_text=True),
            verb_hint="serve needs a GPT language model",
            device=device,
        )

    bound = {"port": args.port}

    def started(host: str, port: int) -> None:
        bound["port"] = port
        print(
            f"scratchllm serve: listening on http://{host}:{port} (loading {args.model} ...)", file=sys.stderr
        )
        sys.stderr.flush()

    def ready(served) -> None:
        meta = served.meta
        print(
            f"scratchllm serve: ready: model '{name}' ({meta['architecture']}, {meta['parameters']:,} "
            f"parameters, {meta['template']['name']} chat template) at http://{args.host}:{bound['port']}/v1",
            file=sys.stderr,
        )
        sys.stderr.flush()

    serve(
        settings,
        load,
        args.model,
        options,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        on_started=started,
        on_ready=ready,
    )
    return 0
