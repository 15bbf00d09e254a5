"""Which int8 kernel to keep: every candidate on one decode-like pass over GPT-2 124M's weights.

    python -m benchmarks.int8_kernels              # the candidates that need no compilation step
    python -m benchmarks.int8_kernels --compile    # also torch.compile'd dequant-matmuls (minutes)

One "pass" multiplies a single activation row by each of GPT-2 small's 49 weight matrices in
order (12 x qkv, proj, fc, proj, then the 50257-row head), as one decoding step does. The matrices
are distinct (124M weights, 4x the last-level cache), so every pass streams them from memory.
The kernels take turns, pass after pass, and the median is reported as a tokens/s ceiling
(1 / time per pass) and as the read bandwidth it implies. The peer is fp32 ``F.linear`` on the
column-major weights ``scratchllm generate`` uses without ``--int8``.

Candidates:

* ``cpp`` — scratchllm's packed int8 kernel (:mod:`scratchllm.model.quantize`), fp32 activations;
* ``cpp-q8`` — the same packed weights, activations rounded to int8 in runs of 16 (integer dot
  products, as llama.cpp's q8_0 does);
* ``int8pack-bf16`` / ``int8pack-fp32`` — ``aten._weight_int8pack_mm`` with bf16 / fp32 activations;
* ``fbgemm-dynamic (deprecated)`` — ``quantized::linear_dynamic`` on a per-channel qint8 tensor,
  what scratchllm used before: the quantized-tensor API PyTorch deprecates (kept here as a
  reference, it rounds the activations to 8 bits too);
* ``onednn-dynamic-u8`` — ``onednn::qlinear_pointwise`` with the activation row rounded to uint8
  (per-tensor scale and zero point, computed per call): the non-deprecated int8 x int8 path;
* ``compiled-dequant`` (``--compile``) — ``torch.compile(mode="max-autotune")`` of
  ``x @ (q.to(bf16) * s)`` with freezing, which inductor lowers to its C++ weight-only-int8 GEMM
  template; ``torchao`` int8 weight-only rides on the same lowering when compiled (and runs a
  plain dequantize-then-matmul, ~40x slower than fp32, in eager mode), so it is not listed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 12 + [(50257, 768)]


def _candidates(with_compile: bool) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    import torch

    from scratchllm.model.quantize import Int8Linear, cpp_kernel_error

    gen = torch.Generator().manual_seed(0)
    qs = [torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen) for n, k in SHAPES]
    scales = [torch.full((n,), 0.02 / 127) for n, _ in SHAPES]
    xs = {k: torch.randn(1, k, generator=gen) for k in {k for _, k in SHAPES}}
    fns: dict[str, Callable[[], Any]] = {}
    skipped: dict[str, str] = {}

    fp32 = [(q.float() * s[:, None]).t().contiguous().t() for q, s in zip(qs, scales)]
    fns["fp32 F.linear (peer)"] = lambda: [torch.nn.functional.linear(xs[w.shape[1]], w) for w in fp32]
    if (why := cpp_kernel_error()) is None:
        cpp = [Int8Linear.from_int8(q, s, None, "cpp") for q, s in zip(qs, scales)]
        fns["cpp (scratchllm)"] = lambda: [m(xs[m.in_features]) for m in cpp]
        cpp_q8 = [Int8Linear.from_int8(q, s, None, "cpp-q8") for q, s in zip(qs, scales)]
        fns["cpp-q8 (scratchllm, int8 activations)"] = lambda: [m(xs[m.in_features]) for m in cpp_q8]
    else:
        skipped["cpp (scratchllm)"] = skipped["cpp-q8 (scratchllm, int8 activations)"] = why
    bf16 = {k: v.to(torch.bfloat16) for k, v in xs.items()}
    sbf = [s.to(torch.bfloat16) for s in scales]
    fns["int8pack-bf16"] = lambda: [
        torch.ops.aten._weight_int8pack_mm(bf16[q.shape[1]], q, s) for q, s in zip(qs, sbf)
    ]
    fns["int8pack-fp32"] = lambda: [
        torch.ops.aten._weight_int8pack_mm(xs[q.shape[1]], q, s) for q, s in zip(qs, scales)
    ]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            packed = [
                torch.ops.quantized.linear_prepack(
                    torch._make_per_channel_quantized_tensor(
                        q, s.double(), torch.zeros(len(s), dtype=torch.long), 0
                    ),
                    None,
                )
                for q, s in zip(qs, scales)
            ]
        fns["fbgemm-dynamic (deprecated)"] = lambda: [
            torch.ops.quantized.linear_dynamic(xs[q.shape[1]], p, True) for q, p in zip(qs, packed)
        ]
    except (RuntimeError, AttributeError) as err:
        skipped["fbgemm-dynamic (deprecated)"] = str(err).splitlines()[0]
    try:
        onednn = [torch.ops.onednn.qlinear_prepack(q, [1, q.shape[1]]) for q in qs]
        zps = [torch.zeros(len(s), dtype=torch.long) for s in scales]

        def onednn_pass() -> None:
            for i, (w, s, zp) in enumerate(zip(onednn, scales, zps)):
                x = xs[SHAPES[i][1]]
                lo, hi = torch.aminmax(x)
                xs_ = float((hi - lo).clamp(min=1e-8)) / 255
                zp_x = int(round(-float(lo) / xs_))
                xq = (x / xs_ + zp_x).round().clamp(0, 255).to(torch.uint8)
                torch.ops.onednn.qlinear_pointwise(
                    xq, xs_, zp_x, w, s, zp, None, 1.0, 0, torch.float32, "none", [], ""
                )

        fns["onednn-dynamic-u8"] = onednn_pass
    except (RuntimeError, AttributeError) as err:
        skipped["onednn-dynamic-u8"] = str(err).splitlines()[0]
    if with_compile:
        import torch._inductor.config as inductor

        inductor.freezing = True

        class Dequant(torch.nn.Module):
            def __init__(self, q: torch.Tensor, s: torch.Tensor) -> None:
                super().__init__()
                self.register_buffer("q", q)
                self.register_buffer("s", s.to(torch.bfloat16))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.mm(x, self.q.t().to(x.dtype)) * self.s

        with torch.no_grad():
            compiled = [
                torch.compile(Dequant(q, s).eval(), mode="max-autotune", dynamic=False)
                for q, s in zip(qs, scales)
            ]
            for i, m in enumerate(compiled):  # compile each distinct shape now, not in the timing
                m(bf16[SHAPES[i][1]])

        def compiled_pass() -> None:
            with torch.no_grad():
                for i, m in enumerate(compiled):
                    m(bf16[SHAPES[i][1]])

        fns["compiled-dequant (max-autotune)"] = compiled_pass
    return fns, skipped


def run(repeat: int = 7, with_compile: bool = False) -> dict[str, Any]:
    import torch

    fns, skipped = _candidates(with_compile)
    for fn in fns.values():  # warm-up
        fn()
    runs: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for _ in range(repeat):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                runs[name].append(time.perf_counter() - t0)
    weights = sum(n * k for n, k in SHAPES)
    peer = statistics.median(runs["fp32 F.linear (peer)"])
    rows = {}
    for name, r in runs.items():
        med = statistics.median(r)
        nbytes = weights * (4 if name.startswith("fp32") else 1)
        rows[name] = {
            "ms_per_pass": round(1000 * med, 2),
            "best_ms": round(1000 * min(r), 2),
            "passes_per_s": round(1 / med, 1),
            "gb_s": round(nbytes / med / 1e9, 1),
            "vs_fp32": round(peer / med, 2),
        }
    return {
        "load_average_1m": round(os.getloadavg()[0], 2),
        "threads": torch.get_num_threads(),
        "rows": rows,
        "skipped": skipped,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd dequant-matmuls")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = run(args.repeat, args.compile)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"load average {result['load_average_1m']}, {result['threads']} threads")
    print("| kernel | ms per pass | best | passes/s (tok/s ceiling) | GB/s read | × fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in result["rows"].items():
        cells = [r["ms_per_pass"], r["best_ms"], r["passes_per_s"], r["gb_s"], r["vs_fp32"]]
        print(f"| {name} | " + " | ".join(str(c) for c in cells) + " |")
    for name, why in result["skipped"].items():
        print(f"skipped {name}: {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
