"""Attention, step by step: the book's teaching classes, then the fast layer the models run."""

from __future__ import annotations

from typing import Any

import torch

from scratchllm.explain.context import Context, encode_checked, save_picture
from scratchllm.explain.result import Explanation
from scratchllm.explain.tokens import pieces

ATTENTION_TEXT = "Your journey starts with one step"
#: The 3-d embeddings of the book's example sentence (chapter 3), one row per word.
BOOK_INPUTS = [
    [0.43, 0.15, 0.89],  # Your
    [0.55, 0.87, 0.66],  # journey
    [0.57, 0.85, 0.64],  # starts
    [0.22, 0.58, 0.33],  # with
    [0.77, 0.25, 0.10],  # one
    [0.05, 0.80, 0.55],  # step
]
#: most tokens shown when the inputs come from a model
MAX_TOKENS = 8


def _inputs(ctx: Context, g: torch.Generator) -> tuple[torch.Tensor, list[str], str, Any]:
    """The token vectors the steps work on, their labels, a description, and the LM (or None)."""
    if ctx.loaded is not None:
        from scratchllm.explain.embeddings import first_block_input

        lm = ctx.language_model()
        ids = encode_checked(lm.tokenizer, ctx.text_or(ATTENTION_TEXT), lm.model.config.context_length)
        ids = ids[:MAX_TOKENS]
        with torch.no_grad():
            h = lm.model.blocks[0].norm1(first_block_input(lm.model, torch.tensor([ids])))[0]
        return (
            h,
            pieces(lm.tokenizer, ids),
            (
                f"{lm.description}: the normalised inputs of its first attention layer for the first "
                f"{len(ids)} tokens of the text"
            ),
            lm,
        )
    text = ctx.text_or(ATTENTION_TEXT)
    words = text.split()[:MAX_TOKENS]
    if text == ATTENTION_TEXT:
        return (
            torch.tensor(BOOK_INPUTS),
            words,
            "the book's 3-d embeddings of 'Your journey starts with one step'",
            None,
        )
    x = torch.rand(len(words), 3, generator=g).round(decimals=2)
    return x, words, "random 3-d embeddings (seeded) for the words of your --text", None


@torch.no_grad()
def attention(ctx: Context) -> Explanation:
    from scratchllm.model.attention import Attention, causal_mask
    from scratchllm.model.teaching import (
        CausalAttention,
        MultiHeadAttention,
        SelfAttention,
        multihead_from_attention,
        simplified_self_attention,
    )

    g = torch.Generator().manual_seed(ctx.seed)
    x, words, source, lm = _inputs(ctx, g)
    T, d_in = x.shape
    exp = Explanation(
        "attention",
        "attention in three steps, then the real thing",
        "scratchllm.model.teaching (the book's classes) and scratchllm.model.attention.Attention, "
        f"on {source}",
    )
    if T < 2:
        from scratchllm.errors import ScratchLLMError

        raise ScratchLLMError("attention needs at least two tokens; give a longer --text")

    # 1-3: no weights at all
    scores = x @ x.T
    weights = torch.softmax(scores, dim=-1)
    context = weights @ x
    exp.step(
        "The inputs",
        "Each token is a vector. Attention will make, for every token, a new vector that mixes in "
        "information from the tokens it finds relevant.",
    ).value("inputs x", x, rows=words)
    exp.step(
        "Step 1: attention scores",
        "How relevant is token j to token i? The simplest measure is the dot product of their "
        "vectors: large when they point the same way. All of them at once: x @ x^T, a T x T matrix.",
    ).value("scores = x @ x^T", scores, rows=words, cols=words)
    exp.step(
        "Step 2: attention weights",
        "A softmax turns each row of scores into positive weights that sum to 1: exp(score) / sum of "
        "exp(scores in the row). Bigger scores get a bigger share.",
    ).value("weights = softmax(scores, each row)", weights, rows=words, cols=words).check(
        "rows sum to 1", torch.allclose(weights.sum(-1), torch.ones(T))
    ).check("every weight is positive", bool((weights > 0).all()))
    i = 1 if T > 1 else 0
    exp.step(
        "Step 3: context vectors",
        f"Each token's new vector is the weighted average of all token vectors with its row of weights: "
        f"the context vector of {words[i]!r} is sum_j weights[{i}, j] * x[j].",
    ).value("context = weights @ x", context, rows=words).value(
        f"context of {words[i]!r}, summed by hand", sum(weights[i, j] * x[j] for j in range(T))
    ).check(
        "the same as scratchllm.model.teaching.simplified_self_attention(x)",
        torch.allclose(context, simplified_self_attention(x), atol=1e-6),
    )

    # 4: trainable projections
    d_out = 2 if d_in == 3 else min(d_in, 16)
    with torch.random.fork_rng():
        torch.manual_seed(ctx.seed)
        sa = SelfAttention(d_in, d_out)
    q, k, v = sa.W_query(x), sa.W_key(x), sa.W_value(x)
    qk = q @ k.T
    w_sa = torch.softmax(qk / d_out**0.5, dim=-1)
    exp.step(
        "Trainable queries, keys and values",
        "Real attention first maps each token three ways with learned matrices: a query (what am I "
        "looking for?), a key (what do I offer?), a value (what do I pass on?). Scores compare "
        f"queries with keys; the output mixes values. Here d_out = {d_out}.",
    ).value("queries", q, rows=words).value("keys", k, rows=words).value("values", v, rows=words).value(
        f"weights = softmax(q @ k^T / sqrt({d_out}))", w_sa, rows=words, cols=words
    ).check("the same as SelfAttention(x)", torch.allclose(w_sa @ v, sa(x), atol=1e-6))

    # 5: why sqrt(d)
    rows = []
    for d in (4, 16, 64, 256, 1024):
        qq, kk = torch.randn(4000, d, generator=g), torch.randn(4000, d, generator=g)
        dots = (qq * kk).sum(-1)
        groups = dots.view(500, 8)  # 500 rows of 8 scores: how peaked is a softmax over them?
        rows.append(
            {
                "d": d,
                "var(q.k)": float(dots.var()),
                "var(q.k / sqrt d)": float((dots / d**0.5).var()),
                "mean max weight, 8 scores": float(torch.softmax(groups, -1).max(-1).values.mean()),
                "... scaled": float(torch.softmax(groups / d**0.5, -1).max(-1).values.mean()),
            }
        )
    s = exp.step(
        "Why divide by sqrt(d)",
        "With query and key entries of variance 1, a dot product of d of them has variance d: wide "
        "heads give huge scores, the softmax saturates into a near one-hot (one weight ~1, the rest "
        "~0) and its gradients vanish. Dividing by sqrt(d) brings the variance back to 1. Measured on "
        "4,000 random pairs per width (and, in 500 rows of 8 scores, the average largest softmax "
        "weight: 1 would be a one-hot, 1/8 uniform):",
    ).value("variance of dot products", rows)
    s.check(
        "var(q.k) / d is about 1 for every d (within 15 %)",
        all(abs(r["var(q.k)"] / r["d"] - 1) < 0.15 for r in rows),
    )
    s.check(
        "unscaled, the softmax saturates as d grows (top weight > 0.9 at d = 1024); scaled, it does not",
        rows[-1]["mean max weight, 8 scores"] > 0.9 and all(r["... scaled"] < 0.5 for r in rows),
    )
    s.check(
        "var(q.k / sqrt d) is about 1 for every d (within 15 %)",
        all(abs(r["var(q.k / sqrt d)"] - 1) < 0.15 for r in rows),
    )

    # 6: causal mask
    allowed = causal_mask(T, T)
    masked = (qk / d_out**0.5).masked_fill(~allowed, float("-inf"))
    w_causal = torch.softmax(masked, dim=-1)
    with torch.random.fork_rng():
        torch.manual_seed(ctx.seed)
        ca = CausalAttention(d_in, d_out, context_length=T, dropout=0.0)
    ca.load_state_dict({**sa.state_dict(), "mask": ca.mask})
    s = (
        exp.step(
            "The causal mask",
            "A language model predicts the next token, so token i must not see tokens after it. Scores "
            "above the diagonal are set to -inf before the softmax: exp(-inf) = 0, so those weights are "
            "exactly 0 and each row still sums to 1 over the past.",
        )
        .value("scaled scores, masked", masked, rows=words, cols=words)
        .value("weights", w_causal, rows=words, cols=words)
    )
    s.check("rows sum to 1", torch.allclose(w_causal.sum(-1), torch.ones(T)))
    s.check("every weight above the diagonal is 0", bool((w_causal.triu(1) == 0).all()))
    s.check(
        "the same as CausalAttention(x) with these weights",
        torch.allclose(w_causal @ v, ca(x[None])[0], atol=1e-6),
    )

    # 7: dropout
    drop = torch.nn.Dropout(0.5).train()
    with torch.random.fork_rng():
        torch.manual_seed(ctx.seed)
        dropped = drop(w_causal)
    kept = dropped != 0
    s = exp.step(
        "Dropout on the weights",
        "During training, dropout randomly silences attention links (here half of them) and scales the "
        "survivors by 1 / (1 - p) = 2 so the expected output is unchanged; it regularises. At "
        "inference (eval mode) it does nothing.",
    ).value("weights after dropout(p=0.5)", dropped, rows=words, cols=words)
    s.check("survivors are exactly twice their weight", torch.allclose(dropped[kept], 2 * w_causal[kept]))
    s.check("in eval mode dropout changes nothing", torch.equal(drop.eval()(w_causal), w_causal))

    # 8: multi-head
    heads, d_mha = 2, 4
    with torch.random.fork_rng():
        torch.manual_seed(ctx.seed)
        mha = MultiHeadAttention(d_in, d_mha, context_length=T, dropout=0.0, num_heads=heads).eval()
    Q = mha.W_query(x).view(T, heads, d_mha // heads).transpose(0, 1)
    K = mha.W_key(x).view(T, heads, d_mha // heads).transpose(0, 1)
    Vh = mha.W_value(x).view(T, heads, d_mha // heads).transpose(0, 1)
    w_heads = torch.softmax(
        (Q @ K.transpose(1, 2) / (d_mha // heads) ** 0.5).masked_fill(~allowed, float("-inf")), -1
    )
    concat = (w_heads @ Vh).transpose(0, 1).reshape(T, d_mha)
    out = mha.out_proj(concat)
    s = exp.step(
        "Multi-head attention",
        f"Several heads attend side by side, each on its own slice of the projections (here {heads} heads "
        f"of width {d_mha // heads}): split, attend, concatenate the heads' outputs, then mix them with an "
        "output projection. Each head can learn a different notion of relevance.",
    )
    for h in range(heads):
        s.value(f"head {h} weights", w_heads[h], rows=words, cols=words)
    s.value("heads concatenated", concat, rows=words).value("after the output projection", out, rows=words)
    s.check("the same as MultiHeadAttention(x)", torch.allclose(out, mha(x[None])[0], atol=1e-6))

    # 9: the layer the models run
    if lm is not None:
        fast = lm.model.blocks[0].attn
        h_in = x[None]
        where = "layer 0 of your model"
    else:
        with torch.random.fork_rng():
            torch.manual_seed(ctx.seed)
            fast = Attention(16, 4).eval()
        h_in = torch.randn(1, T, 16, generator=g)
        where = "a fresh Attention(n_embd=16, n_head=4) on random 16-d inputs"
    book = multihead_from_attention(fast, T).eval()
    y_fast, w_fast = fast(h_in, need_weights=True)
    y_book = book(h_in)
    s = exp.step(
        "The attention the models run",
        "scratchllm.model.attention.Attention computes the same thing faster: one fused matmul makes "
        "queries, keys and values at once, and PyTorch's fused kernel (scaled_dot_product_attention) "
        "never builds the T x T matrix when it can avoid it. Loaded with the same weights, the book's "
        f"class gives the same output — here on {where}.",
    ).value("max |fast - book|", float((y_fast - y_book).abs().max()))
    s.value("head 0 weights of the fast layer", w_fast[0, 0], rows=words, cols=words)
    s.check(
        "Attention == MultiHeadAttention with the same weights (atol 1e-5)",
        torch.allclose(y_fast, y_book, atol=1e-5),
    )
    s.check(
        "the fast path (no weights kept) gives the same output", torch.allclose(fast(h_in), y_fast, atol=1e-5)
    )
    if lm is not None and lm.model.config.pos_emb in ("rope", "alibi"):
        exp.note(
            f"your model adds {lm.model.config.pos_emb} positions inside attention at call time; "
            "the comparison "
            "above is of the layer itself, without them (see 'explain positions')"
        )

    if (path := ctx.figure_path("attention")) is not None:
        from scratchllm.visualize import pyplot

        mats = [("simple (no weights)", weights), ("causal, scaled", w_causal)] + [
            (f"head {h}", w_heads[h]) for h in range(heads)
        ]
        plt = pyplot()
        fig, axes = plt.subplots(1, len(mats), figsize=(4 * len(mats), 4))
        for ax, (title, m) in zip(axes, mats):
            ax.imshow(m.numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_title(title)
            ax.set_xticks(range(T), words, rotation=90)
            ax.set_yticks(range(T), words)
        save_picture(exp, fig, path, "attention weights: simple, causal, and per head")
        if lm is not None:
            from scratchllm.visualize import plot_attention

            heads_path = ctx.figure_path("attention-model")
            plot_attention(lm.model, lm.tokenizer, ctx.text_or(ATTENTION_TEXT), heads_path, layer=0)
            exp.figure(heads_path, "every head of your model's first layer on the text")
    return exp
