"""Where a batch-1 decoding step spends its time: kernels vs memory bandwidth vs Python overhead.

    python -m benchmarks.profile_decode                 # GPT-2 124M shape, fp32 and int8 (auto)
    python -m benchmarks.profile_decode --kernel cpp --tokens 64 --json
    python -m benchmarks.profile_decode --unfused      # int8 blocks as PyTorch operators

For each model it decodes ``--tokens`` tokens under ``torch.profiler`` and prints, per token:

* the wall time, and the time inside the weight matrix products (the ``aten::mm``/``addmm``/
  ``linear`` ops for fp32, the int8 kernel's op for int8 — with fused blocks, the whole
  ``decode_block`` call, products and the arithmetic around them) with the bandwidth that time implies
  for the bytes of weights read, next to the machine's read bandwidth measured now;
* the other operators (attention, layer norm, GELU, the KV-cache copies, sampling);
* the per-token time of a model with the same operations but tiny matrices, which is the Python
  and dispatch overhead every step pays (the profiler itself adds some to the operator times).

Numbers are from one process on a possibly shared machine: run it when the machine is quiet
(the load average is printed) and read ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections import defaultdict
from typing import Any

#: operators that are a weight-matrix product (the int8 kernels' own ops included)
MATMUL_OPS = (
    "aten::addmm",
    "aten::mm",
    "aten::linear",
    "aten::matmul",
    "scratchllm_int8::linear_packed",
    "scratchllm_int8::linear_packed_q8",
    "scratchllm_int8::linear_rows_f32",
    "scratchllm_int8::decode_block",  # a whole block: its four products and the arithmetic around
    "aten::_weight_int8pack_mm",
)


def profile(model: Any, prompt: Any, tokens: int, weight_bytes: int) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    from scratchllm.generate import generate

    generate(model, prompt, tokens, temperature=0.0)  # warm-up
    t0 = time.perf_counter()
    generate(model, prompt, tokens, temperature=0.0)
    wall = (time.perf_counter() - t0) / tokens
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(model, prompt, tokens, temperature=0.0)
    per_op: dict[str, float] = defaultdict(float)
    for evt in prof.key_averages():
        per_op[evt.key] += evt.self_cpu_time_total / 1e6  # seconds
    # self times of nested ops: a matmul op's self time excludes its children, so sum the family
    matmul = sum(v for k, v in per_op.items() if k in MATMUL_OPS)
    top_level_ops = sum(per_op.values())
    others = sorted(((k, v) for k, v in per_op.items() if k not in MATMUL_OPS), key=lambda kv: -kv[1])
    n = tokens
    matmul_s = matmul / n
    return {
        "wall_ms_per_token": round(1000 * wall, 3),
        "matmul_ms_per_token": round(1000 * matmul_s, 3),
        "matmul_gb_s": round(weight_bytes / matmul_s / 1e9, 1) if matmul_s else None,
        "other_ops_ms_per_token": round(1000 * (top_level_ops - matmul) / n, 3),
        "top_other_ops_ms": {k: round(1000 * v / n, 3) for k, v in others[:8]},
        "profiled_ops_ms_per_token": round(1000 * top_level_ops / n, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=64, help="tokens to decode per profile (default 64)")
    p.add_argument(
        "--kernel", default="auto", help="int8 kernel: auto, cpp, cpp-q8, int8pack, fp32 (default auto)"
    )
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument(
        "--unfused",
        action="store_true",
        help="int8 blocks as PyTorch operators, not one C++ call each (to see every product)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import torch

    from benchmarks.bench_generate import _models, overhead_per_token_ms, read_bandwidth_gbs
    from scratchllm.model.quantize import kernel_in_use, prepare_fp32_decoding, quantize_int8

    ours, _ = _models(args.n_layer)
    weight_bytes = sum(p.numel() for p in ours.parameters() if p.dim() == 2 and p is not ours.pos_emb.weight)
    # --unfused: every block as PyTorch operators, so the profile sees each weight product
    # separately (fused, a block's products and arithmetic are one scratchllm_int8::decode_block)
    int8 = quantize_int8(copy.deepcopy(ours), kernel=args.kernel, fuse_blocks=not args.unfused)
    prepare_fp32_decoding(ours)  # what `scratchllm generate` runs without --int8
    fp32 = ours
    prompt = torch.randint(0, 50257, (1, 8), generator=torch.Generator().manual_seed(1))
    report = {
        "load_average_1m": round(os.getloadavg()[0], 2),
        "threads": torch.get_num_threads(),
        "read_bandwidth_gb_s": round(read_bandwidth_gbs(), 1),
        "overhead_ms_per_token (tiny model, same ops)": round(overhead_per_token_ms(args.n_layer), 3),
        "fp32": profile(fp32, prompt, args.tokens, 4 * weight_bytes),
        f"int8 ({kernel_in_use(int8)})": profile(int8, prompt, args.tokens, weight_bytes),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            if isinstance(value, dict):
                print(f"{key}:")
                for k, v in value.items():
                    if v is not None:
                        print(f"    {k}: {v}")
            else:
                print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
