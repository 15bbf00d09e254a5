"""From a model's next-token distribution to text: the sampler's strategies, and the KV cache."""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any

import torch

from scratchllm.explain.context import Context, encode_checked, one_thread, save_picture
from scratchllm.explain.result import Explanation
from scratchllm.explain.tokens import pieces

DECODING_TEXT = "The function "
TOP = 10
CONTINUATION_TOKENS = 40
#: (name, temperature, top_k, top_p) — the strategies compared on the same distribution.
STRATEGIES = [
    ("greedy", 0.0, None, None),
    ("temperature 0.5", 0.5, None, None),
    ("temperature 1", 1.0, None, None),
    ("temperature 2", 2.0, None, None),
    ("top-k 5", 1.0, 5, None),
    ("top-p 0.9", 1.0, None, 0.9),
]


def _entropy(p: torch.Tensor) -> float:
    nz = p[p > 0]
    return float(-(nz * nz.log()).sum())


def _top(tokenizer: Any, probs: torch.Tensor, k: int = TOP) -> list[dict[str, Any]]:
    p, idx = probs.topk(min(k, probs.numel()))
    names = pieces(tokenizer, idx.tolist())
    return [{"token": n, "id": int(i), "p": float(v)} for n, i, v in zip(names, idx, p)]


@torch.no_grad()
def decoding(ctx: Context) -> Explanation:
    from scratchllm.generate.engine import generate
    from scratchllm.generate.sampling import filter_logits, next_token_probs, sample_next

    lm = ctx.language_model()
    model, tok = lm.model, lm.tokenizer
    prompt = ctx.text_or(DECODING_TEXT)
    ids = encode_checked(tok, prompt, model.config.context_length - 1)
    logits = model(torch.tensor([ids]), only_last=True)[:, -1].float()  # [1, V]
    probs = torch.softmax(logits, dim=-1)[0]
    V = probs.numel()
    exp = Explanation(
        "decoding", "choosing the next token", f"scratchllm.generate (sampling, engine) on {lm.description}"
    )
    s = exp.step(
        "The next-token distribution",
        f"Given the prompt, the model scores all {V:,} tokens; softmax turns the scores into "
        "probabilities. Every decoding strategy is a rule for picking one token from this.",
    )
    s.tokens("prompt", pieces(tok, ids)).value(f"top {TOP} of {V:,}", _top(tok, probs))
    s.value("entropy (nats)", _entropy(probs)).check(
        "probabilities sum to 1", abs(float(probs.sum()) - 1) < 1e-5
    )

    greedy = int(sample_next(logits, temperature=0)[0])
    exp.step(
        "Greedy: always the most likely",
        "temperature 0 takes the argmax. Deterministic, and it tends to loop: the most likely "
        "continuation of a loop is more loop.",
    ).value("greedy token", pieces(tok, [greedy])[0]).check(
        "== argmax of the probabilities", greedy == int(probs.argmax())
    )

    temps = {t: next_token_probs(logits, temperature=t)[0] for t in (0.5, 1.0, 2.0)}
    s = exp.step(
        "Temperature",
        "Divide the logits by T before the softmax: T < 1 sharpens the distribution (the favourites "
        "take more mass, less surprise), T > 1 flattens it (more variety, more mistakes), T = 1 is "
        "the model's own distribution.",
    )
    for t, p in temps.items():
        s.value(f"T = {t:g}: top 5", _top(tok, p, 5))
    s.value("entropy by temperature", {f"T = {t:g}": _entropy(p) for t, p in temps.items()})
    s.check("T = 1 is the plain softmax", torch.allclose(temps[1.0], probs, atol=1e-6))
    s.check(
        "higher temperature, higher entropy",
        _entropy(temps[0.5]) < _entropy(temps[1.0]) < _entropy(temps[2.0]),
    )

    k = 5
    pk = next_token_probs(logits, top_k=k)[0]
    kept = filter_logits(logits, top_k=k)[0]
    s = exp.step(
        f"Top-k (k = {k})",
        "Keep only the k most likely tokens (their logits; the others become -inf), renormalise, "
        "sample. The long tail of unlikely tokens can no longer be drawn.",
    ).value("kept, renormalised", _top(tok, pk, k))
    s.check(f"exactly {k} tokens keep a finite logit", int(torch.isfinite(kept).sum()) == k)
    s.check(
        "the kept tokens are the top k",
        set(pk.nonzero().flatten().tolist()) == set(probs.topk(k).indices.tolist()),
    )

    top_p = 0.9
    pp = next_token_probs(logits, top_p=top_p)[0]
    keep = pp.nonzero().flatten()
    ordered = probs[keep].sort(descending=True).values
    s = (
        exp.step(
            f"Top-p / nucleus (p = {top_p})",
            "Keep the smallest set of most likely tokens whose probabilities add up to at least p, "
            "renormalise, sample. Unlike top-k the set adapts: a confident model keeps few tokens, an "
            "unsure one many.",
        )
        .value("tokens kept", len(keep))
        .value("their mass before renormalising", float(ordered.sum()))
    )
    s.value("kept (first 10)", _top(tok, pp, 10))
    s.check(f"the kept mass reaches {top_p}", float(ordered.sum()) >= top_p - 1e-6)
    s.check("without its least likely token the set would fall short", float(ordered[:-1].sum()) < top_p)

    g = torch.Generator().manual_seed(ctx.seed)
    draws = sample_next(logits.expand(2000, -1), generator=g)  # 2,000 rows: one draw each
    top_id = int(probs.argmax())
    freq = float((draws == top_id).float().mean())
    s = (
        exp.step(
            "Sampling draws from exactly this distribution",
            "sample_next (what generate, chat and the server call) draws from these probabilities: "
            "over 2,000 draws at T = 1 the favourite comes up as often as its probability says.",
        )
        .value("p(favourite)", float(probs[top_id]))
        .value("frequency in 2,000 draws", freq)
    )
    s.check("frequency within 0.05 of the probability", abs(freq - float(probs[top_id])) < 0.05)

    n_new = CONTINUATION_TOKENS  # past the context length the engine slides its window
    rows = []
    for name, temp, top_k, tp in STRATEGIES:
        gen = torch.Generator().manual_seed(ctx.seed)
        out = generate(model, ids, n_new, temperature=temp, top_k=top_k, top_p=tp, generator=gen)
        rows.append(
            {"strategy": name, "continuation": tok.decode(out[len(ids) :].tolist()).replace("\n", "\\n")}
        )
    again = generate(model, ids, n_new, temperature=0)
    s = exp.step(
        "The continuations",
        f"{n_new} new tokens with each strategy (scratchllm.generate.engine.generate, seed {ctx.seed}).",
    ).value("continuations", rows)
    s.check(
        "greedy gives the same text every time",
        tok.decode(again[len(ids) :].tolist()).replace("\n", "\\n") == rows[0]["continuation"],
    )

    if (path := ctx.figure_path("decoding")) is not None:
        from scratchllm.visualize import pyplot

        panels = [(f"T = {t:g}", p) for t, p in temps.items()] + [(f"top-k {k}", pk), (f"top-p {top_p}", pp)]
        order = probs.topk(min(15, V)).indices
        labels = pieces(tok, order.tolist())
        plt = pyplot()
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5), sharey=True)
        for ax, (title, p) in zip(axes, panels):
            ax.bar(range(len(order)), p[order].numpy())
            ax.set_xticks(range(len(order)), labels, rotation=90)
            ax.set_title(title)
        axes[0].set_ylabel("probability")
        save_picture(exp, fig, path, "the 15 likeliest next tokens under each strategy")
    return exp


# ----------------------------------------------------------------------------- kv cache

#: The model the timing uses without --model (wide enough that recomputation shows).
KV_MODEL = dict(context_length=256, n_layer=4, n_head=4, n_embd=128)


def _uncached(model: Any, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding the naive way: the whole sequence through the model for every new token."""
    seq = idx
    for _ in range(n):
        nxt = model(seq[:, -model.config.context_length :])[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq[0]


@torch.no_grad()
def kv_cache(ctx: Context) -> Explanation:
    from scratchllm.data.corpus import default_corpus
    from scratchllm.generate.engine import generate

    if ctx.loaded is not None:
        lm = ctx.language_model()
        model, tok, source = lm.model, lm.tokenizer, lm.description
    else:
        from scratchllm.explain.context import corpus_char_tokenizer
        from scratchllm.model.config import GPTConfig
        from scratchllm.model.gpt import GPTModel

        tok = corpus_char_tokenizer()
        with torch.random.fork_rng():
            torch.manual_seed(ctx.seed)
            model = GPTModel(GPTConfig(vocab_size=tok.vocab_size, **KV_MODEL)).eval()
        source = (
            f"a freshly initialised character GPT ({KV_MODEL['n_layer']} layers, width {KV_MODEL['n_embd']}, "
            f"context {KV_MODEL['context_length']}, {model.num_params():,} parameters): speed and "
            "equality do not depend on training"
        )
    cfg = model.config
    exp = Explanation(
        "kv-cache",
        "generating without recomputing the past",
        f"scratchllm.model.kv_cache.KVCache and scratchllm.generate.engine on {source}",
    )
    big = model.num_params() > 20_000_000
    n_prompt = min(64, cfg.context_length // 4)
    n_new = min(16 if big else 64, cfg.context_length - n_prompt)
    text = ctx.text or default_corpus()
    ids = tok.encode(text)[:n_prompt]
    if len(ids) < 2:
        from scratchllm.errors import ScratchLLMError

        raise ScratchLLMError("the prompt needs at least two tokens; give a longer --text")
    idx = torch.tensor([ids])

    # 1. equality, position by position
    full = _uncached(model, idx, 8)
    cache = model.make_kv_cache(1, len(full))
    cached_logits = [model(full[None, : len(ids)], kv_cache=cache)[0, -1]]
    for t in range(len(ids), len(full) - 1):
        cached_logits.append(model(full[None, t : t + 1], kv_cache=cache)[0, -1])
    reference = model(full[None, :-1])[0, len(ids) - 1 :]
    diff = float((torch.stack(cached_logits) - reference).abs().max())
    s = (
        exp.step(
            "Same logits with and without the cache",
            "Generating token t+1 needs every earlier token's key and value in every layer. Without a "
            "cache the model recomputes them all at each step; with one, the prompt is processed once "
            "(prefill) and each step feeds only the newest token, attending over the stored keys and "
            "values. Here: the prompt, then 7 single-token steps, against one full forward pass.",
        )
        .value("prompt tokens", len(ids))
        .value("positions compared", len(cached_logits))
        .value("max |logits difference|", diff)
    )
    s.check("cached logits == full-forward logits (1e-4)", diff < 1e-4)

    L, Hkv, D = cfg.n_layer, cfg.kv_heads, cfg.head_dim
    expected = 2 * L * 1 * Hkv * cache.max_len * D * cache.k.element_size()
    s = (
        exp.step(
            "What the cache holds",
            "Two preallocated tensors, keys and values, [layers, batch, kv heads, positions, head width], "
            "written in place at the current position (no concatenation, no reallocation). Grouped-query "
            "attention (fewer kv heads) shrinks it.",
        )
        .value("keys shape", list(cache.k.shape))
        .value("filled positions", cache.length)
        .value("bytes", cache.nbytes)
    )
    s.check("bytes == 2 x layers x batch x kv_heads x positions x head_dim x 4", cache.nbytes == expected)

    timings: dict[str, list[float]] = {"without cache": [], "with cache": []}
    outs = {}
    threads = contextlib.nullcontext() if ctx.loaded is not None else one_thread()
    with threads:
        for _ in range(3):  # interleaved repeats; the median is reported
            for name in timings:
                t0 = time.perf_counter()
                if name == "without cache":
                    outs[name] = _uncached(model, idx, n_new)
                else:
                    outs[name] = generate(model, ids, n_new, temperature=0)
                timings[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in timings.items()}
    per_token = {k: 1000 * v / n_new for k, v in med.items()}
    work_uncached = sum(len(ids) + i for i in range(n_new))
    s = (
        exp.step(
            "Time per token",
            f"Greedy decoding of {n_new} tokens after a {len(ids)}-token prompt, 3 interleaved repeats, "
            "median (timings on a shared machine are noisy; the ratio is what matters). Without the "
            f"cache the model processes {work_uncached:,} token positions in all; with it "
            f"{len(ids) + n_new - 1:,}: the work per step stops growing with the length.",
        )
        .value("ms per token", per_token)
        .value("speed-up", med["without cache"] / med["with cache"])
    )
    s.value("token positions processed", {"without cache": work_uncached, "with cache": len(ids) + n_new - 1})
    s.check("both give the same tokens", torch.equal(outs["without cache"], outs["with cache"]))
    return exp
