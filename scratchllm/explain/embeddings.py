"""What the model reads: token embeddings, positions, and the sliding window that makes training pairs."""

from __future__ import annotations

from typing import Any

import torch

from scratchllm.explain.context import Context, encode_checked, save_picture
from scratchllm.explain.result import Explanation
from scratchllm.explain.tokens import pieces

EMBEDDINGS_TEXT = "Every effort moves you"
#: Probe tokens for the similarity table: the first that are single tokens of the tokenizer.
PROBE_WORDS = [" one", " two", " three", " he", " she", " the", " a", " and", " of", " in"]
PROBE_CHARS = ["a", "e", "o", "i", "0", "1", "7", ".", ",", "T"]
DATALOADER_TEXT = "In the heart of the city stood the old library, a relic from a bygone era."


def _cosine(m: torch.Tensor) -> torch.Tensor:
    m = m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return m @ m.T


def probe_ids(tokenizer: Any, text: str | None) -> list[int]:
    """Up to 10 distinct single tokens to compare: those of ``text``, else words or characters."""
    if text:
        ids = list(dict.fromkeys(tokenizer.encode(text)))
        return [i for i in ids if i not in tokenizer.special_tokens.values()][:10]
    found = []
    for cand in PROBE_WORDS + PROBE_CHARS:
        try:
            ids = tokenizer.encode(cand)
        except Exception:  # a char tokenizer without that character
            continue
        if len(ids) == 1 and ids[0] not in found:
            found.append(ids[0])
    words = [i for i in found if len(tokenizer.decode([i])) > 1]
    return (words if len(words) >= 4 else found)[:10]


def _neighbours(emb: torch.Tensor, ids: list[int], tokenizer: Any, k: int = 5) -> dict[str, list[str]]:
    from scratchllm.inspect.model import cosine_neighbours

    with torch.no_grad():
        near = {i: cosine_neighbours(emb, i, k)[0].tolist() for i in ids}
    return {pieces(tokenizer, [i])[0]: pieces(tokenizer, near[i]) for i in ids}


def first_block_input(model: Any, idx: torch.Tensor) -> torch.Tensor:
    """What the model's first transformer block receives for ``idx`` (captured by a forward hook)."""
    seen: list[torch.Tensor] = []

    def grab(module: Any, args: tuple) -> None:
        seen.append(args[0])

    hook = model.blocks[0].register_forward_pre_hook(grab)
    try:
        model(idx)
    finally:
        hook.remove()
    return seen[0]


@torch.no_grad()
def embeddings(ctx: Context) -> Explanation:
    lm = ctx.language_model()
    model, tok = lm.model, lm.tokenizer
    text = ctx.text_or(EMBEDDINGS_TEXT)
    ids = encode_checked(tok, text, model.config.context_length)
    idx = torch.tensor([ids])
    exp = Explanation("embeddings", "token ids become vectors", lm.description)
    E = model.tok_emb.weight
    V, C = E.shape
    vectors = model.tok_emb(idx)[0]
    one_hot = torch.nn.functional.one_hot(idx[0], V).to(E.dtype)
    T = min(len(ids), 6)
    labels = pieces(tok, ids)
    s = exp.step(
        "Token ids -> vectors: a table lookup",
        f"The embedding matrix has one row of {C} numbers per token id ({V:,} rows). Embedding a token "
        "is reading its row. That is the same as multiplying a one-hot vector (a 1 at the id, 0 "
        "elsewhere) by the matrix — which is why an embedding layer is just a linear layer that is "
        "cheap to apply, and why its rows train like any other weights.",
    )
    s.tokens("tokens", labels).value("ids", ids)
    s.value(f"vectors (first {T} tokens, first 8 of {C} numbers)", vectors[:T, :8], rows=labels[:T])
    s.value("one-hot row of the first token: position of its 1", int(one_hot[0].argmax()))
    s.check("lookup == one_hot @ matrix (exactly)", torch.equal(vectors, one_hot @ E))

    # What the first block really receives: token vectors + position information.
    x0 = first_block_input(model, idx)[0]
    kind = model.config.pos_emb
    s = exp.step(
        "+ position",
        {
            "learned": "This model learns a second table, one row per position (GPT-2: 1,024 of them). "
            "The first block reads token vector + position vector: the same word at two positions "
            "gives two different inputs.",
            "sinusoidal": "A fixed sine/cosine table (see 'explain positions') is added to the token "
            "vectors, which are first scaled up by sqrt(width).",
            "rope": "Nothing is added here: rotary embeddings rotate every query and key inside attention "
            "by an angle proportional to the position (see 'explain positions').",
            "alibi": "Nothing is added here: ALiBi adds a distance penalty to the attention scores "
            "(see 'explain positions').",
            "none": "Nothing is added: this model gets no position information at all (only the causal "
            "mask tells it what came before).",
        }[kind],
    )
    s.value("position scheme", kind)
    if kind == "learned":
        P = model.pos_emb.weight[: len(ids)]
        s.value(
            f"position vectors (first {T}, first 8 numbers)", P[:T, :8], rows=[f"pos {i}" for i in range(T)]
        )
        s.value(f"token + position (first {T}, first 8 numbers)", x0[:T, :8], rows=labels[:T])
        s.check("the first block's input == token vector + position vector", torch.allclose(x0, vectors + P))
    elif kind == "sinusoidal":
        expected = vectors * C**0.5 + model.pos_table[: len(ids)]
        s.check(
            "the first block's input == token vector * sqrt(C) + sinusoidal table",
            torch.allclose(x0, expected),
        )
    else:
        s.check("the first block's input == the token vectors alone", torch.equal(x0, vectors))

    probes = probe_ids(tok, ctx.text)
    fresh = lm.fresh_copy(ctx.seed)
    before = _cosine(fresh.tok_emb.weight[probes])
    after = _cosine(E[probes])
    names = pieces(tok, probes)
    s = exp.step(
        "Similarity before vs after training",
        "Cosine similarity of token vectors (1 = same direction, 0 = unrelated). In a freshly "
        f"initialised model of the same configuration the rows are random: in {C} dimensions two random "
        f"vectors have |cosine| around 1/sqrt({C}) = {C**-0.5:.2f}. Training moves tokens used in similar "
        "contexts close together: nothing told the model that they are alike, it found out by predicting "
        "the next token.",
    )
    s.value("cosine similarity, freshly initialised", before, rows=names, cols=names)
    s.value("cosine similarity, trained", after, rows=names, cols=names)
    off = ~torch.eye(len(probes), dtype=torch.bool)
    s.value(
        "mean |cosine| between different tokens, fresh",
        float(before[off].abs().mean()) if len(probes) > 1 else 0.0,
    )
    s.value(
        "mean |cosine| between different tokens, trained",
        float(after[off].abs().mean()) if len(probes) > 1 else 0.0,
    )
    s.value("nearest tokens, fresh", _neighbours(fresh.tok_emb.weight, probes, tok))
    s.value("nearest tokens, trained", _neighbours(E, probes, tok))
    s.check(
        "every token is most similar to itself (diagonal = 1)",
        torch.allclose(after.diagonal(), torch.ones(len(probes)), atol=1e-5),
    )

    if (path := ctx.figure_path("embeddings")) is not None:
        from scratchllm.visualize import pyplot

        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(11, 5))
        for ax, m, title in ((axes[0], before, "freshly initialised"), (axes[1], after, "trained")):
            im = ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
            ax.set_xticks(range(len(names)), names, rotation=90)
            ax.set_yticks(range(len(names)), names)
            ax.set_title(f"cosine similarity, {title}")
        fig.colorbar(im, ax=axes, shrink=0.8)
        save_picture(exp, fig, path, "cosine similarity of token embeddings before and after training")
    return exp


# ----------------------------------------------------------------------------- positions


@torch.no_grad()
def positions(ctx: Context) -> Explanation:
    from scratchllm.model.attention import Attention, alibi_bias
    from scratchllm.model.layers import alibi_slopes, apply_rope, rope_cache, sinusoidal_table

    exp = Explanation(
        "positions",
        "how a transformer knows where a token is",
        "scratchllm.model.layers (sinusoidal_table, rope_cache/apply_rope, alibi_slopes) and "
        "scratchllm.model.attention on small random inputs",
    )
    g = torch.Generator().manual_seed(ctx.seed)
    T, C = 5, 8
    with torch.random.fork_rng():
        torch.manual_seed(ctx.seed)
        attn = Attention(C, 2, causal=False).eval()
    x = torch.randn(1, T, C, generator=g)
    perm = torch.tensor([3, 0, 4, 1, 2])
    y, y_shuffled = attn(x), attn(x[:, perm])
    table = sinusoidal_table(T, C)
    yp, yp_shuffled = attn(x + table), attn(x[:, perm] + table)
    s = exp.step(
        "Attention alone is blind to order",
        "Attention compares every token with every other and averages: shuffle the input tokens and "
        "the outputs are the same vectors, shuffled the same way. 'dog bites man' and 'man bites dog' "
        "would look alike. Adding a position vector to each token breaks the symmetry.",
    )
    s.value("shuffle", perm).value("outputs of the shuffled input (first 4 numbers)", y_shuffled[0, :, :4])
    s.value("outputs of the original input, shuffled afterwards", y[0, perm, :4])
    s.check(
        "attention(shuffled x) == shuffled attention(x)", torch.allclose(y_shuffled, y[:, perm], atol=1e-6)
    )
    s.check(
        "with positions added, the outputs no longer just permute",
        not torch.allclose(yp_shuffled, yp[:, perm], atol=1e-3),
    )

    from scratchllm.model.config import GPTConfig
    from scratchllm.model.gpt import GPTModel

    with torch.random.fork_rng():
        torch.manual_seed(ctx.seed)
        gpt = GPTModel(GPTConfig(vocab_size=16, context_length=16, n_layer=1, n_head=2, n_embd=C))
    P = gpt.pos_emb.weight
    exp.step(
        "Learned positions (GPT-2)",
        "GPT-2 simply learns a table with one vector per position, added to the token vector. Before "
        "training the rows are random; training shapes them. The table caps the context: there is no "
        "row for position context_length.",
    ).value("table shape", list(P.shape)).value("parameters", P.numel()).check(
        "the table has context_length x n_embd numbers", P.numel() == 16 * C
    )

    n_pos, d = 32, 16
    table = sinusoidal_table(n_pos, d)
    s = exp.step(
        "Sinusoidal positions (the original transformer)",
        "A fixed table: feature 2i of position p is sin(p / 10000^(2i/d)), feature 2i+1 the matching "
        "cosine. Each pair of features is a clock turning at its own speed, fast for the first pairs, "
        "slow for the last. Nothing is learned, and since sin² + cos² = 1 every row has the same length.",
    )
    s.value(f"table (first 6 positions, all {d} features)", table[:6], rows=[f"pos {p}" for p in range(6)])
    s.check(
        f"every row has norm sqrt(d/2) = {(d / 2) ** 0.5:.4g}",
        torch.allclose(table.norm(dim=1), torch.full((n_pos,), (d / 2) ** 0.5), atol=1e-4),
    )
    dots = [float(table[p] @ table[p + 3]) for p in range(6)]
    s.value("PE[p] . PE[p+3] for p = 0..5", dots)
    s.check("the dot product of two positions depends only on their distance", max(dots) - min(dots) < 1e-4)

    head_dim = 8
    cos, sin = rope_cache(16, head_dim)
    q = torch.randn(head_dim, generator=g)
    k = torch.randn(head_dim, generator=g)

    def rot(v: torch.Tensor, p: int) -> torch.Tensor:
        return apply_rope(v.view(1, 1, 1, -1), cos[p : p + 1], sin[p : p + 1]).view(-1)

    pairs = [(m, m - 2) for m in range(2, 8)]
    scores = [float(rot(q, m) @ rot(k, n)) for m, n in pairs]
    s = exp.step(
        "RoPE: rotate queries and keys",
        "Rotary embeddings turn each pair of query/key features by an angle proportional to the "
        "position (Llama, Mistral). A rotation keeps lengths, and the dot product of a query rotated "
        "to position m with a key rotated to position n depends only on m - n: attention sees "
        "relative positions, with no parameters.",
    )
    s.value("q", q).value("k", k)
    s.value("q . k at (m, n)", {f"({m}, {n})": v for (m, n), v in zip(pairs, scores)})
    s.value("the same vectors at offset 5 instead of 2: (7, 2)", float(rot(q, 7) @ rot(k, 2)))
    s.check("same offset -> same score", max(scores) - min(scores) < 1e-4)
    s.check("rotation keeps the vector's length", abs(float(rot(q, 5).norm() - q.norm())) < 1e-5)

    slopes = alibi_slopes(4)
    bias = alibi_bias(slopes, 6, 6)
    lower = torch.ones(6, 6, dtype=torch.bool).tril()
    distance = (torch.arange(6)[:, None] - torch.arange(6)[None, :]).clamp(min=0)
    s = exp.step(
        "ALiBi: a penalty that grows with distance",
        "ALiBi adds nothing to the tokens; it subtracts slope x distance from every attention score, "
        "with a different slope per head: steep heads look at the last few tokens, shallow heads far "
        "back. (Only the lower triangle matters: the causal mask removes the rest.)",
    )
    s.value("slopes of 4 heads", slopes)
    s.value(
        "bias of head 0",
        bias[0].masked_fill(~lower, float("-inf")),
        rows=[f"q{i}" for i in range(6)],
        cols=[f"k{j}" for j in range(6)],
    )
    s.check("bias[h, i, j] == -slope[h] * (i - j)", torch.allclose(bias, -slopes[:, None, None] * distance))

    if (path := ctx.figure_path("positions")) is not None:
        from scratchllm.visualize import pyplot

        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        axes[0].imshow(sinusoidal_table(128, 64).T.numpy(), cmap="RdBu_r", aspect="auto")
        axes[0].set_title("sinusoidal table (features x positions)")
        axes[0].set_xlabel("position")
        axes[0].set_ylabel("feature")
        for h in range(4):
            axes[1].plot(range(16), (-slopes[h] * torch.arange(16)).numpy(), label=f"head {h}")
        axes[1].set_title("ALiBi bias by distance")
        axes[1].set_xlabel("distance to the key")
        axes[1].legend()
        save_picture(exp, fig, path, "the sinusoidal position table and ALiBi's per-head penalties")
    return exp


# ----------------------------------------------------------------------------- dataloader


def dataloader(ctx: Context) -> Explanation:
    from scratchllm.data.datasets import SlidingWindowDataset, create_dataloader
    from scratchllm.explain.context import corpus_char_tokenizer

    if ctx.loaded is not None:
        tok, source = ctx.loaded.tokenizer, f"the tokenizer of {ctx.model_path}"
    else:
        tok, source = corpus_char_tokenizer(), "the character tokenizer of the embedded corpus"
    text = ctx.text_or(DATALOADER_TEXT)
    ids = encode_checked(tok, text)
    exp = Explanation(
        "dataloader",
        "turning text into training pairs",
        f"scratchllm.data.datasets (SlidingWindowDataset, create_dataloader) with {source}",
    )
    ctx_len = 4
    if len(ids) < 2 * ctx_len + 2:
        from scratchllm.errors import ScratchLLMError

        raise ScratchLLMError(
            f"the text is only {len(ids)} tokens; give at least {2 * ctx_len + 2} with --text"
        )
    s = exp.step(
        "Next-token prediction, position by position",
        "A language model learns from plain text by predicting each next token from the ones before "
        "it. One window of context_length tokens holds context_length such exercises at once.",
    )
    s.tokens("tokens", pieces(tok, ids)).value("ids", ids)
    s.value(
        "exercises in the first window",
        [
            {
                "context": "".join(f"[{p}]" for p in pieces(tok, ids[: i + 1])),
                "predict": pieces(tok, [ids[i + 1]])[0],
            }
            for i in range(ctx_len)
        ],
    )

    for stride in (1, ctx_len):
        ds = SlidingWindowDataset(ids, ctx_len, stride)
        shown = [ds[i] for i in range(min(3, len(ds)))]
        s = exp.step(
            f"Sliding window, context_length {ctx_len}, stride {stride}",
            "Each sample is a window of input ids and the same window shifted one token to the right "
            "as targets. "
            + (
                "Stride 1 moves the window one token at a time: many overlapping samples from a short text."
                if stride == 1
                else "Stride = context_length gives non-overlapping windows: every token is a target once."
            ),
        )
        s.value("windows", len(ds)).value(
            "formula (n - context_length - 1) // stride + 1", (len(ids) - ctx_len - 1) // stride + 1
        )
        s.value(
            "first samples",
            [
                {
                    "input": "".join(f"[{p}]" for p in pieces(tok, x.tolist())),
                    "target": "".join(f"[{p}]" for p in pieces(tok, y.tolist())),
                    "input ids": x.tolist(),
                    "target ids": y.tolist(),
                }
                for x, y in shown
            ],
        )
        s.check("target == input shifted by one token", all(torch.equal(x[1:], y[:-1]) for x, y in shown))
        s.check(
            "the number of windows follows the formula", len(ds) == (len(ids) - ctx_len - 1) // stride + 1
        )
        if stride == ctx_len:
            starts = [i * stride for i in range(len(ds))]
            s.check("windows do not overlap", all(b - a >= ctx_len for a, b in zip(starts, starts[1:])))

    loader = create_dataloader(text, tok, batch_size=2, context_length=ctx_len, stride=ctx_len, shuffle=False)
    x, y = next(iter(loader))
    s = exp.step(
        "A batch",
        "The DataLoader stacks samples into a batch tensor [batch, context_length] (shuffled in "
        "training, here in order); the model processes all rows in parallel.",
    )
    s.value("inputs", x).value("targets", y).value("shape", list(x.shape))
    s.check("x[:, 1:] == y[:, :-1]", torch.equal(x[:, 1:], y[:, :-1]))
    if ctx.loaded is not None:
        exp.note(
            f"your model trains on windows of {ctx.loaded.model.config.context_length} tokens; 4 "
            "keeps this readable"
        )
    return exp
