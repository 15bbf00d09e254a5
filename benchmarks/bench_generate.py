"""Generation speed: our KV-cache ``generate`` vs Hugging Face ``generate``, batch 1, greedy.

    python -m benchmarks.run --only generate            # quick: 2-layer GPT-2 shape, 32 tokens
    python -m benchmarks.run --full --only generate     # GPT-2 124M, 200 new tokens

Both sides run the *same* random-weight network: our :class:`~scratchllm.model.gpt.GPTModel` with
the ``gpt2`` preset, its weights copied into ``GPT2LMHeadModel`` with
:func:`scratchllm.convert.hf_gpt2.ours_to_hf_state_dict` (so the greedy tokens must agree, which is
checked). An 8-token prompt, ``max_new_tokens`` new tokens, no end-of-text stop on either side.

* fp32: :func:`scratchllm.generate.generate` with ``temperature=0`` vs
  ``model.generate(do_sample=False)``;
* int8: the same model after :func:`scratchllm.model.quantize.quantize_int8` (weight-only int8,
  per-channel scales). Decoding is memory-bound — every new token streams every weight once — so a
  4× smaller weight matrix is the way past fp32's bandwidth ceiling. Its quality cost on a *trained*
  model is measured by ``bench_quality`` (perplexity on tinyshakespeare); here we report how often
  the int8 model picks the same greedy token as fp32 on the random network.

Encoder-decoder decoding (:mod:`scratchllm.generate.seq2seq`): the KV-cache decoder (self-attention
keys/values cached, the memory's cross-attention keys/values computed once per source) against the
same model decoding without a cache (the whole target prefix re-run every step), greedy on a batch
and beam search per source. The peer here is our own uncached loop, so the ratio is the cache's
speed-up; both sides must produce the same tokens (checked).
"""

from __future__ import annotations

import copy
from typing import Any

from benchmarks.common import Row, time_interleaved


def _models(n_layer: int) -> tuple[Any, Any]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from scratchllm.convert.hf_gpt2 import gpt_to_hf_config, ours_to_hf_state_dict
    from scratchllm.model.config import GPTConfig, get_preset
    from scratchllm.model.gpt import GPTModel

    torch.manual_seed(0)
    cfg = GPTConfig(**{**get_preset("gpt2")["model"], "n_layer": n_layer})
    ours = GPTModel(cfg).eval()
    hf_cfg = {k: v for k, v in gpt_to_hf_config(cfg).items() if k not in ("architectures", "model_type")}
    hf = GPT2LMHeadModel(GPT2Config(**hf_cfg)).eval()
    missing, unexpected = hf.load_state_dict(ours_to_hf_state_dict(ours.state_dict(), cfg), strict=False)
    # A tied head is left out of the export (HF re-ties it); anything else missing is a bug.
    if [m for m in missing if m != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"weight copy failed: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return ours, hf


def _seq2seq_rows(quick: bool) -> list[Row]:
    import torch

    from scratchllm.generate.seq2seq import beam_search, greedy_decode
    from scratchllm.model.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

    # The date task's model shape (2 + 2 layers, 128 wide) with a longer context, random weights and
    # an untied random head (a tied random head only repeats <bos>); <eos> is an id never produced.
    ctx, batch, n_beam_sources, repeat = (32, 16, 2, 3) if quick else (96, 64, 4, 5)
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(
        src_vocab_size=64, tgt_vocab_size=64, context_length=ctx, n_layer=2, n_embd=128, n_head=4, dropout=0.0
    )
    model = Seq2SeqTransformer(cfg).eval()
    model.out_head.weight = torch.nn.Parameter(torch.randn(64, 128) * 0.05)
    with torch.no_grad():
        model.out_head.weight[cfg.eos_id] = -10.0 * model.out_head.weight.abs().max()
    src = torch.randint(3, 64, (batch, 24 if not quick else 12), generator=torch.Generator().manual_seed(1))
    outputs: dict[str, Any] = {}

    def greedy(cache: bool) -> None:
        outputs[f"greedy{cache}"] = greedy_decode(model, src, max_len=ctx, use_cache=cache)

    def beams(cache: bool) -> None:
        outputs[f"beam{cache}"] = [
            beam_search(model, src[i : i + 1], beam=4, max_len=ctx, use_cache=cache)
            for i in range(n_beam_sources)
        ]

    rows = []
    for name, fn, n_seq in (("greedy", greedy, batch), ("beam", beams, n_beam_sources)):
        t = time_interleaved(
            {"cached": lambda f=fn: f(True), "uncached": lambda f=fn: f(False)}, repeat=repeat
        )
        same = outputs[f"{name}True"] == outputs[f"{name}False"]
        tokens = sum(len(o) for o in outputs[f"{name}True"])
        what = (
            f"greedy, batch {batch}"
            if name == "greedy"
            else f"beam 4, {n_beam_sources} sources one at a time"
        )
        rows.append(
            Row(
                name=f"seq2seq decoding {what}, up to {ctx} target tokens (2+2 layers, 128 wide)",
                ours=tokens / t["cached"].median,
                peer=tokens / t["uncached"].median,
                unit="output tokens/s (median)",
                peer_name="same model, no KV cache",
                target="same tokens; faster",
                met=same and t["cached"].median < t["uncached"].median,
                extra={"same_tokens": same, "output_tokens": tokens, "sequences": n_seq},
            )
        )
    return rows


def run(quick: bool = True) -> list[Row]:
    import torch

    from scratchllm.generate import generate
    from scratchllm.model.quantize import quantize_int8, relayout_for_decoding

    n_layer, new_tokens, repeat = (2, 32, 3) if quick else (12, 200, 3)
    ours, hf = _models(n_layer)
    ours_int8 = quantize_int8(copy.deepcopy(ours))
    # What `scratchllm generate` runs on a CPU without --int8: the same fp32 weights, stored
    # column-major so each one-token matrix-vector product streams memory the fast way.
    ours = relayout_for_decoding(ours)
    prompt = torch.randint(0, 50257, (1, 8), generator=torch.Generator().manual_seed(1))
    outputs: dict[str, Any] = {}

    def ours_fp32() -> None:
        outputs["ours"] = generate(ours, prompt, new_tokens, temperature=0.0)

    def ours_q8() -> None:
        outputs["int8"] = generate(ours_int8, prompt, new_tokens, temperature=0.0)

    def peer() -> None:
        with torch.inference_mode():
            outputs["hf"] = hf.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=50256,
            )

    t = time_interleaved({"ours": ours_fp32, "int8": ours_q8, "hf": peer}, repeat=repeat, warmup=1)
    tps = {k: new_tokens / v.median for k, v in t.items()}
    best = {k: round(new_tokens / v.min, 2) for k, v in t.items()}
    same_as_hf = bool(torch.equal(outputs["ours"].cpu(), outputs["hf"].cpu()))
    agree = (outputs["int8"][0, 8:] == outputs["ours"][0, 8:]).float().mean().item()
    what = f"GPT-2 124M shape ({n_layer} layers), batch 1, {new_tokens} new tokens, greedy"
    common = {"n_layer": n_layer, "new_tokens": new_tokens, "best_tokens_per_s": best}
    return [
        Row(
            name=f"generate fp32, {what}",
            ours=tps["ours"],
            peer=tps["hf"],
            unit="tokens/s (median)",
            peer_name="HF generate",
            target="≥ 2× (fp32 bandwidth-bound: ~1.5× expected)",
            met=tps["ours"] >= 2 * tps["hf"],
            extra={**common, "same_tokens_as_hf": same_as_hf},
        ),
        Row(
            name=f"generate int8 weights, {what}",
            ours=tps["int8"],
            peer=tps["hf"],
            unit="tokens/s (median)",
            peer_name="HF generate (fp32)",
            target="≥ 2×",
            met=tps["int8"] >= 2 * tps["hf"],
            extra={**common, "int8_greedy_agreement_with_fp32": round(agree, 3)},
        ),
        *_seq2seq_rows(quick),
    ]


if __name__ == "__main__":
    import sys

    from benchmarks.common import format_table

    print(format_table(run(quick="--full" not in sys.argv)))
