"""Generation speed: our KV-cache ``generate`` vs Hugging Face ``generate`` and llama.cpp, batch 1, greedy.

    python -m benchmarks.run --only generate            # quick: 2-layer GPT-2 shape, 32 tokens
    python -m benchmarks.run --full --only generate     # GPT-2 124M, 200 new tokens
    make bench-llamacpp                                 # the same with llama.cpp as a peer (builds it)

Every side runs the *same* random-weight network: our :class:`~scratchllm.model.gpt.GPTModel` with
the ``gpt2`` preset, its weights copied into ``GPT2LMHeadModel`` with
:func:`scratchllm.convert.hf_gpt2.ours_to_hf_state_dict` (so the greedy tokens must agree, which is
checked), and — when ``make bench-llamacpp`` has built it — that HF model converted to GGUF f32 and
q8_0 by llama.cpp's own converter (:mod:`benchmarks.llamacpp`). An 8-token prompt,
``max_new_tokens`` new tokens, no end-of-text stop on any side, everyone with the same number of
threads, all taking turns in one run (warm-up round first, then repeats; medians).

* fp32: :func:`scratchllm.generate.generate` with ``temperature=0`` on the column-major weights
  ``scratchllm generate`` uses on a CPU, vs ``model.generate(do_sample=False)`` and llama.cpp f32;
* int8: the same model after :func:`scratchllm.model.quantize.quantize_int8` with ``kernel="auto"``
  (what ``--int8`` runs) and with each kernel forced, vs llama.cpp q8_0 (8-bit weights in blocks
  of 32 with one fp16 scale each, activations rounded to 8 bits too). Its quality cost on a
  *trained* model is measured by ``bench_quality`` (perplexity on tinyshakespeare); here we report
  how often the int8 model picks the same greedy token as fp32 on the random network.

Also measured in the run, to say where the time goes: the machine's memory read bandwidth and the
per-token time of a model with the same operations but tiny matrices (the framework/Python
overhead per token); ``python -m benchmarks.profile_decode`` breaks one decoding step down further.

Encoder-decoder decoding (:mod:`scratchllm.generate.seq2seq`): the KV-cache decoder (self-attention
keys/values cached, the memory's cross-attention keys/values computed once per source) against the
same model decoding without a cache (the whole target prefix re-run every step), greedy on a batch
and beam search per source. The peer here is our own uncached loop, so the ratio is the cache's
speed-up; both sides must produce the same tokens (checked).
"""

from __future__ import annotations

import copy
import hashlib
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import SHARED_DATA, Row, Timing, time_interleaved, time_it

#: Converted GGUF files, keyed by a hash of the HF weights (git-ignored).
GGUF_CACHE = Path(__file__).resolve().parent / ".cache" / "llamacpp"


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


def read_bandwidth_gbs(mb: int = 512) -> float:
    """Memory read bandwidth (GB/s) with torch's threads: the best of several sums over ``mb`` MB."""
    import torch

    x = torch.ones(mb * 2**20 // 4)
    t = time_it(lambda: x.sum(), repeat=7, warmup=2)
    return mb * 2**20 / t.min / 1e9


def overhead_per_token_ms(n_layer: int, new_tokens: int = 64) -> float:
    """Per-token time (ms) of a model with GPT-2's layer count and operations but width 96 (8 per head) and a
    64-token vocabulary: its matrices take microseconds, so what is left is per-operation
    framework and Python overhead, the floor under any decoding step."""
    import torch

    from scratchllm.generate import generate
    from scratchllm.model.config import GPTConfig, get_preset
    from scratchllm.model.gpt import GPTModel

    cfg = GPTConfig(**{**get_preset("gpt2")["model"], "n_layer": n_layer, "n_embd": 96, "vocab_size": 64})
    tiny = GPTModel(cfg).eval()
    prompt = torch.zeros(1, 8, dtype=torch.long)
    t = time_it(lambda: generate(tiny, prompt, new_tokens, temperature=0.0), repeat=5, warmup=1)
    return 1000 * t.median / new_tokens


def _llamacpp_peer(hf: Any, threads: int, n_ctx: int) -> tuple[Any, str | None]:
    """(a ready :class:`benchmarks.llamacpp.LlamaCppPeer` with "f32" and "q8_0" loaded, None) or
    (None, why the peer is skipped)."""
    from benchmarks import llamacpp

    why = llamacpp.check()
    if why:
        return None, why
    vocab = SHARED_DATA / "gpt2"
    if not (vocab / "encoder.json").is_file():
        return None, f"GPT-2 vocabulary not found at {vocab} (the GGUF converter needs it)"
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = llamacpp.write_hf_gpt2_dir(hf, Path(tmp) / "hf", vocab)
        digest = hashlib.sha256((hf_dir / "model.safetensors").read_bytes()).hexdigest()[:16]
        paths = llamacpp.convert(hf_dir, GGUF_CACHE / digest)
    peer = llamacpp.LlamaCppPeer(threads=threads)
    for name, path in paths.items():
        peer.load(name, path, n_ctx=n_ctx)
    return peer, None


def run(quick: bool = True) -> list[Row]:
    import torch

    from scratchllm.generate import generate
    from scratchllm.model.quantize import (
        CPP_KERNELS,
        FP32_DECODERS,
        available_kernels,
        choose_fp32_decoder,
        cpp_kernel_error,
        kernel_in_use,
        prepare_fp32_decoding,
        quantize_int8,
    )

    n_layer, new_tokens, repeat = (2, 32, 3) if quick else (12, 200, 3)
    prompt_len = 8
    ours, hf = _models(n_layer)
    threads = torch.get_num_threads()
    peer, llama_skipped = _llamacpp_peer(hf, threads, n_ctx=256)

    auto = quantize_int8(copy.deepcopy(ours))  # what `scratchllm generate --int8` runs
    chosen = kernel_in_use(auto)
    forced = {k: quantize_int8(copy.deepcopy(ours), kernel=k) for k in available_kernels() if k != chosen}
    # the same kernel with every block on the module path (PyTorch operators around the products)
    unfused = (
        quantize_int8(copy.deepcopy(ours), kernel=chosen, fuse_blocks=False)
        if chosen in CPP_KERNELS
        else None
    )
    # What `scratchllm generate` runs on a CPU without --int8: the same fp32 weights, each
    # one-token matrix-vector product by the decoder "auto" picks here (scratchllm's kernel or
    # PyTorch's on column-major weights); the other decoder is timed too.
    shapes = [(m.out_features, m.in_features) for m in ours.modules() if type(m) is torch.nn.Linear]
    decoder = choose_fp32_decoder(shapes).kernel
    other_decoders = {
        name: copy.deepcopy(ours)
        for name in FP32_DECODERS
        if name != decoder and (name != "cpp" or cpp_kernel_error() is None)
    }
    prepare_fp32_decoding(ours, decoder)
    for name, model in other_decoders.items():
        prepare_fp32_decoding(model, name)
    prompt = torch.randint(0, 50257, (1, prompt_len), generator=torch.Generator().manual_seed(1))
    outputs: dict[str, Any] = {}
    llama_seconds: dict[str, list[float]] = {"llama_f32": [], "llama_q8_0": []}

    def ours_fp32() -> None:
        outputs["ours"] = generate(ours, prompt, new_tokens, temperature=0.0)

    def ours_q8() -> None:
        outputs["int8"] = generate(auto, prompt, new_tokens, temperature=0.0)

    def peer_hf() -> None:
        with torch.inference_mode():
            outputs["hf"] = hf.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=50256,
            )

    fns: dict[str, Any] = {"ours": ours_fp32, "int8": ours_q8, "hf": peer_hf}

    def decode_into(key: str, model: Any) -> Any:  # a timed function that keeps its tokens
        return lambda: outputs.__setitem__(key, generate(model, prompt, new_tokens, temperature=0.0))

    for name, model in forced.items():
        fns[f"int8_{name}"] = decode_into(f"int8_{name}", model)
    if unfused is not None:
        fns["int8_unfused"] = decode_into("int8_unfused", unfused)
    for name, model in other_decoders.items():
        fns[f"fp32_{name}"] = decode_into(f"fp32_{name}", model)
    if peer is not None:
        for gguf in ("f32", "q8_0"):

            def llama(gguf: str = gguf) -> None:
                tokens, seconds = peer.decode(gguf, prompt[0].tolist(), new_tokens)
                outputs[f"llama_{gguf}"] = tokens
                llama_seconds[f"llama_{gguf}"].append(seconds)

            fns[f"llama_{gguf}"] = llama
    try:
        t = time_interleaved(fns, repeat=repeat, warmup=1)
        llama_info = peer.info if peer is not None else None
    finally:
        if peer is not None:
            peer.close()
    for name, secs in llama_seconds.items():  # llama.cpp's own timing, without the pipe round trip
        if secs:
            runs = secs[-repeat:]
            t[name] = Timing(sorted(runs)[len(runs) // 2], min(runs), runs)
    tps = {k: new_tokens / v.median for k, v in t.items()}
    best = {k: round(new_tokens / v.min, 2) for k, v in t.items()}

    same_as_hf = bool(torch.equal(outputs["ours"].cpu(), outputs["hf"].cpu()))
    ours_new = outputs["ours"][0, prompt_len:].tolist()
    agree = (outputs["int8"][0, prompt_len:] == outputs["ours"][0, prompt_len:]).float().mean().item()
    bandwidth = read_bandwidth_gbs(128 if quick else 512)
    overhead = overhead_per_token_ms(n_layer, 16 if quick else 64)
    weights = {
        "fp32": sum(p.numel() for p in ours.parameters() if p.dim() == 2 and p is not ours.pos_emb.weight)
        * 4,
    }
    weights["int8"] = weights["fp32"] // 4
    what = f"GPT-2 124M shape ({n_layer} layers), batch 1, {new_tokens} new tokens, greedy, {threads} threads"
    common = {
        "n_layer": n_layer,
        "new_tokens": new_tokens,
        "threads": threads,
        "best_tokens_per_s": best,
        "tokens_per_s": {k: round(v, 2) for k, v in tps.items()},
        "read_bandwidth_gb_s": round(bandwidth, 1),
        "bandwidth_ceiling_tokens_per_s": {k: round(bandwidth * 1e9 / b, 1) for k, b in weights.items()},
        "overhead_ms_per_token": round(overhead, 2),
        "int8_kernel": chosen,
        "fp32_decoder": decoder,
        "llamacpp": llama_info if peer is not None else f"skipped: {llama_skipped}",
    }
    rows = [
        Row(
            name=f"generate fp32 (decoder {decoder}), {what}",
            ours=tps["ours"],
            peer=tps["hf"],
            unit="tokens/s (median)",
            peer_name="HF generate",
            target="≥ 2× (fp32 bandwidth-bound: ~1.5× expected)",
            met=tps["ours"] >= 2 * tps["hf"],
            extra={**common, "same_tokens_as_hf": same_as_hf},
        ),
        Row(
            name=f"generate int8 weights (kernel {chosen}), {what}",
            ours=tps["int8"],
            peer=tps["hf"],
            unit="tokens/s (median)",
            peer_name="HF generate (fp32)",
            target="≥ 2×",
            met=tps["int8"] >= 2 * tps["hf"],
            extra={"int8_greedy_agreement_with_fp32": round(agree, 3)},
        ),
        Row(
            name=f"generate int8 (kernel {chosen}, picked by auto) vs our fp32, {what}",
            ours=tps["int8"],
            peer=tps["ours"],
            unit="tokens/s (median)",
            peer_name="scratchllm fp32",
            target="≥ 1× (int8 never slower than fp32)",
            met=tps["int8"] >= tps["ours"],
        ),
        *_seq2seq_rows(quick),
    ]
    for name in forced:
        rows.append(
            Row(
                name=f"generate int8, kernel {name} forced, vs our fp32, {what}",
                ours=tps[f"int8_{name}"],
                peer=tps["ours"],
                unit="tokens/s (median)",
                peer_name="scratchllm fp32",
                target="informative (auto picks the fastest)",
            )
        )
    if unfused is not None:
        rows.append(
            Row(
                name=f"generate int8 (kernel {chosen}): one C++ call per block vs the module path, {what}",
                ours=tps["int8"],
                peer=tps["int8_unfused"],
                unit="tokens/s (median)",
                peer_name="the same kernel, blocks as PyTorch operators",
                target="informative (the fused block's gain)",
                extra={"same_tokens": bool(torch.equal(outputs["int8_unfused"], outputs["int8"]))},
            )
        )
    for name in other_decoders:
        rows.append(
            Row(
                name=f"generate fp32, decoder {name} forced, vs the one auto picked ({decoder}), {what}",
                ours=tps[f"fp32_{name}"],
                peer=tps["ours"],
                unit="tokens/s (median)",
                peer_name=f"scratchllm fp32, decoder {decoder}",
                target="informative (auto picks the fastest)",
                extra={"same_tokens": bool(torch.equal(outputs[f"fp32_{name}"], outputs["ours"]))},
            )
        )
    if peer is not None:
        f32_new, q8_new = outputs["llama_f32"], outputs["llama_q8_0"]
        rows += [
            Row(
                name=f"generate int8 (kernel {chosen}) vs llama.cpp q8_0, {what}",
                ours=tps["int8"],
                peer=tps["llama_q8_0"],
                unit="tokens/s (median)",
                peer_name="llama.cpp q8_0",
                target="≥ 1.2×",
                met=tps["int8"] >= 1.2 * tps["llama_q8_0"],
                extra={"q8_0_greedy_agreement_with_our_fp32": _agreement(q8_new, ours_new)},
            ),
            Row(
                name=f"generate fp32 vs llama.cpp f32, {what}",
                ours=tps["ours"],
                peer=tps["llama_f32"],
                unit="tokens/s (median)",
                peer_name="llama.cpp f32",
                target="≥ 0.95× (within 5 %)",
                met=tps["ours"] >= 0.95 * tps["llama_f32"],
                extra={"f32_greedy_agreement_with_our_fp32": _agreement(f32_new, ours_new)},
            ),
        ]
    return rows


def _agreement(a: list[int], b: list[int]) -> float:
    """Fraction of positions where two greedy continuations agree (they diverge for good at the
    first near-tie the two engines' different summation orders break differently)."""
    n = min(len(a), len(b))
    return round(sum(x == y for x, y in zip(a[:n], b[:n])) / max(n, 1), 3)


if __name__ == "__main__":
    import sys

    from benchmarks.common import format_table

    print(format_table(run(quick="--full" not in sys.argv)))
