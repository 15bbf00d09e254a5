"""Training-step throughput: our GPT vs Hugging Face ``GPT2LMHeadModel``, and MFU.

    python -m benchmarks.run --only train            # quick sizes
    python -m benchmarks.run --full --only train     # 124M-shaped (emb 768) with 2 layers

One *training step* is what a trainer does per batch, on both sides: forward, next-token loss,
backward, gradient clipping to 1.0, AdamW step, zero the gradients. fp32 on the CPU, dropout 0,
random initialisation, the same config and batch.

* ours: :class:`~scratchllm.model.gpt.GPTModel`, loss :func:`~scratchllm.model.gpt.lm_loss`, the
  optimizer exactly as the trainer builds it (:func:`scratchllm.train.optim.build_optimizer`: two
  weight-decay groups, fused AdamW when available);
* peer: ``GPT2LMHeadModel(GPT2Config(...))`` called with ``labels=`` (its own shifted loss) and
  ``torch.optim.AdamW(model.parameters())`` — what a user of ``transformers`` writes.

The two are timed taking turns (see :func:`~benchmarks.common.time_interleaved`). MFU (model FLOPs
utilisation) = achieved FLOP/s ÷ this machine's fp32 matmul peak measured in the same run; the
FLOPs per token come from :meth:`GPTModel.estimate_flops_per_token` (6N + attention).

Two last rows use the ``char-shakespeare`` preset's sizes and batch: its own step (RoPE, RMSNorm,
SwiGLU — about 10 % more FLOPs per token than GELU's FFN) against ``GPT2LMHeadModel`` of the same
size (informative), and our GPT with GPT-2's architecture against the same peer (equal config; a
model this small is bound by per-op overhead rather than by matmuls).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.common import Row, matmul_peak_gflops, time_interleaved

#: (name, model overrides, batch, context) — vocab 50257 as GPT-2.
FULL = dict(vocab_size=50257, n_layer=2, n_head=12, n_embd=768, context_length=256, batch=4)
QUICK = dict(vocab_size=8192, n_layer=2, n_head=4, n_embd=256, context_length=128, batch=4)


def _ours_step(cfg: Any, batch: int, seq: int, train_overrides: dict | None = None) -> tuple[Callable, Any]:
    import torch

    from scratchllm.model.gpt import GPTModel, lm_loss
    from scratchllm.train.config import TrainConfig
    from scratchllm.train.optim import build_optimizer

    torch.manual_seed(0)
    model = GPTModel(cfg)
    model.train()
    opt = build_optimizer(model, TrainConfig(**(train_overrides or {})), "cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    x = torch.randint(0, cfg.vocab_size, (batch, seq))
    y = torch.randint(0, cfg.vocab_size, (batch, seq))

    def step() -> None:
        loss = lm_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model


def _hf_step(cfg: Any, batch: int, seq: int) -> Callable:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.context_length,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = GPT2LMHeadModel(hf_cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    x = torch.randint(0, cfg.vocab_size, (batch, seq))

    def step() -> None:
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _compare(name: str, ours_cfg: Any, hf_cfg: Any, batch: int, seq: int, repeat: int, peak: float) -> Row:
    ours, model = _ours_step(ours_cfg, batch, seq)
    peer = _hf_step(hf_cfg, batch, seq)
    t = time_interleaved({"ours": ours, "peer": peer}, repeat=repeat, warmup=1)
    tokens = batch * seq
    flops_per_token = model.estimate_flops_per_token(seq, training=True)
    ours_tps, peer_tps = tokens / t["ours"].median, tokens / t["peer"].median
    best_tps, best_peer = tokens / t["ours"].min, tokens / t["peer"].min
    mfu = best_tps * flops_per_token / (peak * 1e9)
    return Row(
        name=name,
        ours=ours_tps,
        peer=peer_tps,
        unit="tokens/s (median)",
        peer_name="HF GPT2LMHeadModel",
        target="≥ 1.3×",
        met=ours_tps >= 1.3 * peer_tps,
        extra={
            "batch": batch,
            "seq": seq,
            "params": model.num_params(),
            "flops_per_token": flops_per_token,
            "ours_tokens_per_s_best": round(best_tps, 1),
            "peer_tokens_per_s_best": round(best_peer, 1),
            "ratio_best": round(best_tps / best_peer, 3),
            "mfu_ours_best": round(mfu, 3),
            "mfu_peer_best": round(best_peer * flops_per_token / (peak * 1e9), 3),
            "matmul_peak_gflops": round(peak, 1),
            "ours_runs_s": [round(x, 4) for x in t["ours"].runs],
            "peer_runs_s": [round(x, 4) for x in t["peer"].runs],
            # CPU seconds per step: robust to waiting for a core on a loaded machine.
            "ours_cpu_s_median": round(t["ours"].cpu_median, 4),
            "peer_cpu_s_median": round(t["peer"].cpu_median, 4),
        },
    )


def run(quick: bool = True) -> list[Row]:
    import torch
    from transformers.utils import logging as hf_logging

    from scratchllm.model.config import GPTConfig, get_preset

    hf_logging.set_verbosity_error()  # config chatter, not results

    sizes = dict(QUICK if quick else FULL)
    batch = sizes.pop("batch")
    repeat = 3 if quick else 5
    peak = matmul_peak_gflops(1024 if quick else 2048, repeat=3 if quick else 5)
    rows: list[Row] = []

    cfg = GPTConfig(**sizes, dropout=0.0)
    row = _compare(
        f"train step, GPT-2 arch, emb {cfg.n_embd}, {cfg.n_layer} layers, vocab {cfg.vocab_size}, "
        f"batch {batch}×{cfg.context_length}",
        cfg,
        cfg,
        batch,
        cfg.context_length,
        repeat,
        peak,
    )
    rows.append(row)
    mfu = row.extra["mfu_ours_best"]
    rows.append(
        Row(
            name=f"MFU, emb {cfg.n_embd} (best run ÷ fp32 matmul peak {peak:.0f} GFLOP/s)",
            ours=mfu * 100,
            peer=row.extra["mfu_peer_best"] * 100,
            unit="% of peak",
            peer_name="HF GPT2LMHeadModel",
            target="≥ 50 %" if not quick else "",
            # Above 100 % the load changed between measuring the peak and the steps: no verdict.
            met=(mfu >= 0.5) if not quick and mfu <= 1.0 else None,
            extra={
                "matmul_peak_gflops": round(peak, 1),
                "threads": torch.get_num_threads(),
                "reliable": mfu <= 1.0,
            },
        )
    )

    # The char preset as shipped (its switches) vs a GPT-2-architecture peer of the same size.
    preset = get_preset("char-shakespeare")
    pcfg = GPTConfig(**{**preset["model"], "vocab_size": 65})
    hf_like = GPTConfig(
        vocab_size=65,
        context_length=pcfg.context_length,
        n_layer=pcfg.n_layer,
        n_head=pcfg.n_head,
        n_embd=pcfg.n_embd,
    )
    pbatch = preset.get("train", {}).get("batch_size", 12)
    pseq = preset.get("train", {}).get("context_length") or pcfg.context_length
    rows.append(
        _compare(
            f"train step, char-shakespeare preset (batch {pbatch}×{pseq})",
            pcfg,
            hf_like,
            pbatch,
            pseq,
            5 if quick else 20,
            peak,
        )
    )
    rows[-1].target, rows[-1].met = "", None  # different architectures: informative, not a target
    # The same small sizes with GPT-2's architecture on both sides: equal config, overhead-bound.
    rows.append(
        _compare(
            f"train step, char-shakespeare sizes, GPT-2 arch on both sides (batch {pbatch}×{pseq})",
            hf_like,
            hf_like,
            pbatch,
            pseq,
            5 if quick else 20,
            peak,
        )
    )
    return rows


if __name__ == "__main__":
    import sys

    from benchmarks.common import format_table

    print(format_table(run(quick="--full" not in sys.argv)))
