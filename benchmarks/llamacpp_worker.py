"""The llama.cpp side of the generation benchmark, run by the llama.cpp venv's Python.

Reads one JSON request per line on stdin and answers one JSON line on stdout (see
:class:`benchmarks.llamacpp.LlamaCppPeer`). It imports nothing from scratchllm: the bindings live
in their own virtual environment, and this file is all that process runs.

Requests: ``{"op": "info"}``, ``{"op": "load", "name", "path", "n_ctx"}``,
``{"op": "decode", "name", "prompt": [ids], "n"}`` (greedy; answers the new ids and the seconds
the decode took, measured here), ``{"op": "quit"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import llama_cpp
    from llama_cpp import Llama

    models: dict[str, Any] = {}

    def decode(llm: Any, prompt: list[int], n: int) -> tuple[list[int], float]:
        # reset(): no prefix reuse from the previous call, so every call evaluates its prompt.
        llm.reset()
        out: list[int] = []
        t0 = time.perf_counter()
        for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            out.append(int(token))
            if len(out) == n:
                break
        return out, time.perf_counter() - t0

    for line in sys.stdin:
        req = json.loads(line)
        op = req.get("op")
        try:
            if op == "info":
                answer: dict[str, Any] = {
                    "version": llama_cpp.__version__,
                    "system_info": llama_cpp.llama_print_system_info().decode(errors="replace"),
                    "threads": args.threads,
                }
            elif op == "load":
                llm = Llama(
                    model_path=req["path"],
                    n_ctx=int(req.get("n_ctx", 256)),
                    n_threads=args.threads,
                    n_threads_batch=args.threads,
                    verbose=False,
                )
                models[req["name"]] = llm
                answer = {"loaded": req["name"], "n_vocab": llm.n_vocab()}
            elif op == "decode":
                tokens, seconds = decode(models[req["name"]], list(req["prompt"]), int(req["n"]))
                answer = {"tokens": tokens, "seconds": seconds}
            elif op == "quit":
                print(json.dumps({"bye": True}), flush=True)
                return 0
            else:
                answer = {"error": f"unknown op {op!r}"}
        except Exception as err:  # answer the error; the benchmark decides what to do with it
            answer = {"error": f"{type(err).__name__}: {err}"}
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
