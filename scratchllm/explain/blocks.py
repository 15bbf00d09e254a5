"""Inside a transformer block: normalisation, activations, residual connections, pre/post-norm,
and the tied output head."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from scratchllm.explain.context import Context, encode_checked, save_picture
from scratchllm.explain.result import Explanation
from scratchllm.explain.tokens import pieces

LAYERNORM_TEXT = "Every effort moves you"


def _moments(x: torch.Tensor) -> dict[str, list[float]]:
    return {"mean": x.mean(-1).tolist(), "variance": x.var(-1, unbiased=False).tolist()}


# ----------------------------------------------------------------------------- layernorm


@torch.no_grad()
def layernorm(ctx: Context) -> Explanation:
    from scratchllm.model.layers import LayerNorm, RMSNorm

    g = torch.Generator().manual_seed(ctx.seed)
    model_norm = None
    if ctx.loaded is not None:
        from scratchllm.explain.embeddings import first_block_input

        model = ctx.loaded.model
        tok = ctx.loaded.tokenizer
        ids = encode_checked(tok, ctx.text_or(LAYERNORM_TEXT), model.config.context_length)[:6]
        x = first_block_input(model, torch.tensor([ids]))[0]
        rows = pieces(tok, ids)
        model_norm = model.blocks[0].norm1
        source = f"model {ctx.model_path}: what its first block receives for the first {len(ids)} tokens"
    else:
        x = torch.randn(4, 6, generator=g) * 2 + 1
        rows = [f"token {i}" for i in range(4)]
        source = "random vectors (4 tokens x 6 features, mean about 1, spread about 2)"
    C = x.shape[-1]
    exp = Explanation(
        "layernorm",
        "normalisation: every token to mean 0, variance 1",
        f"scratchllm.model.layers.LayerNorm / RMSNorm and torch's BatchNorm1d on {source}",
    )
    exp.step(
        "Before",
        "Activations drift to any scale as they pass through layers; a deep stack trains badly when "
        "some are huge and others tiny. Each row is one token's vector.",
    ).value("x (first 8 features)", x[:, :8], rows=rows).value("per token", _moments(x))

    ln = LayerNorm(C)
    y = ln(x)
    manual = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + ln.eps)
    s = (
        exp.step(
            "LayerNorm",
            "Per token: subtract the mean of its features and divide by their standard deviation, "
            "(x - mean) / sqrt(variance + eps). Every token now has mean 0 and variance 1, whatever the "
            "other tokens in the batch are.",
        )
        .value("LayerNorm(x) (first 8 features)", y[:, :8], rows=rows)
        .value("per token", _moments(y))
    )
    var = x.var(-1, unbiased=False)
    s.check("every token has mean 0", torch.allclose(y.mean(-1), torch.zeros(len(y)), atol=1e-5))
    s.check(
        "every token has variance 1 (exactly var / (var + eps): eps matters only for tiny vectors)",
        torch.allclose(y.var(-1, unbiased=False), var / (var + ln.eps), atol=1e-4),
    )
    s.check("== (x - mean) / sqrt(var + eps)", torch.allclose(y, manual, atol=1e-5))

    if model_norm is not None:
        out = model_norm(x)
        s = exp.step(
            "Your model's learned gain and bias",
            "After normalising, a learned per-feature gain (weight) and shift (bias) let the network undo "
            "the normalisation where that helps. Both start at 1 and 0; here are your model's, "
            "after training.",
        ).value("gain (first 8)", model_norm.weight[:8])
        if getattr(model_norm, "bias", None) is not None:
            s.value("bias (first 8)", model_norm.bias[:8])
            expected = (
                torch.nn.functional.layer_norm(x, (C,), eps=model_norm.eps) * model_norm.weight
                + model_norm.bias
            )
            s.check("norm1(x) == normalised * gain + bias", torch.allclose(out, expected, atol=1e-4))
        elif isinstance(model_norm, RMSNorm):
            expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + model_norm.eps) * model_norm.weight
            s.check("norm1(x) == x / rms(x) * gain", torch.allclose(out, expected, atol=1e-4))
        else:
            expected = torch.nn.functional.layer_norm(x, (C,), eps=model_norm.eps) * model_norm.weight
            s.check("norm1(x) == normalised * gain", torch.allclose(out, expected, atol=1e-4))
        s.value("norm1(x) (first 8 features)", out[:, :8], rows=rows)

    rms = RMSNorm(C)
    r = rms(x)
    s = (
        exp.step(
            "RMSNorm",
            "Llama's cheaper variant only rescales: x / sqrt(mean(x^2) + eps). The root mean square of "
            "every token becomes 1, but the mean is not removed.",
        )
        .value("RMSNorm(x) (first 8 features)", r[:, :8], rows=rows)
        .value(
            "per token", {"mean": r.mean(-1).tolist(), "root mean square": r.pow(2).mean(-1).sqrt().tolist()}
        )
    )
    ms = x.pow(2).mean(-1)
    s.check(
        "every token has root mean square 1 (exactly ms / (ms + eps))",
        torch.allclose(r.pow(2).mean(-1), ms / (ms + rms.eps), atol=1e-4),
    )

    bn = nn.BatchNorm1d(C, affine=False).train()
    b = bn(x)
    b_fewer = nn.BatchNorm1d(C, affine=False).train()(x[:2])
    s = (
        exp.step(
            "Batch norm: across the batch instead",
            "Batch normalisation (from image models) normalises each feature across the tokens of the "
            "batch: columns get mean 0, rows do not. A token's output then depends on which other tokens "
            "share its batch — awkward for variable-length text and for generating one token at a time. "
            "Transformers use LayerNorm.",
        )
        .value("BatchNorm(x) (first 8 features)", b[:, :8], rows=rows)
        .value("per feature mean", b.mean(0))
    )
    s.value("per token mean", b.mean(-1))
    s.check(
        "every feature (column) has mean 0 across the batch",
        torch.allclose(b.mean(0), torch.zeros(C), atol=1e-5),
    )
    s.check(
        "LayerNorm of token 0 alone == its LayerNorm in the batch",
        torch.allclose(ln(x[:1]), y[:1], atol=1e-6),
    )
    s.check(
        "BatchNorm of token 0 changes when the batch changes", not torch.allclose(b_fewer[0], b[0], atol=1e-3)
    )
    return exp


# ----------------------------------------------------------------------------- activations

GRID = [-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0]


@torch.no_grad()
def activations(ctx: Context) -> Explanation:
    from scratchllm.model.config import BlockConfig
    from scratchllm.model.layers import GELU, FeedForward

    exp = Explanation(
        "activations",
        "the non-linearities of the feed-forward network",
        "scratchllm.model.layers (GELU, FeedForward) and torch's ReLU, exact GELU and SiLU",
    )
    x = torch.tensor(GRID)
    fns = {
        "ReLU": nn.ReLU(),
        "GELU (exact, erf)": nn.GELU(),
        "GELU (tanh, GPT-2)": GELU(),
        "SiLU / swish": nn.SiLU(),
    }
    table = [{"x": float(v), **{n: float(f(v)) for n, f in fns.items()}} for v in x]
    dense = torch.linspace(-6, 6, 2401)
    diff = (GELU()(dense) - nn.GELU()(dense)).abs().max()
    gelu_min = nn.GELU()(dense).min()
    s = exp.step(
        "The curves, as numbers",
        "Without a non-linearity, stacked linear layers collapse into one linear map. ReLU = max(0, x) "
        "cuts negatives to 0. GELU = x * Phi(x) (Phi: the normal CDF) is a smooth ReLU that lets a "
        "little negative signal through; GPT-2 uses the tanh approximation "
        "0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). SiLU = x * sigmoid(x) is its close cousin.",
    ).value("values", table)
    s.value("max |GELU tanh - GELU exact| on [-6, 6]", float(diff)).value(
        "smallest GELU value", float(gelu_min)
    )
    s.check("the tanh approximation is within 1e-3 of the exact GELU", diff < 1e-3)
    s.check(
        "GELU dips below 0 for negative inputs (ReLU never does)",
        gelu_min < 0 and bool((nn.ReLU()(dense) >= 0).all()),
    )

    g = torch.Generator().manual_seed(ctx.seed)
    cfg = BlockConfig(n_embd=4, n_head=1, activation="swiglu", ffn_hidden=3, bias=False)
    with torch.random.fork_rng():
        torch.manual_seed(ctx.seed)
        ffn = FeedForward(cfg)
    h_in = torch.randn(2, 4, generator=g)
    gate, up = ffn.fc(h_in).chunk(2, dim=-1)
    hidden = torch.nn.functional.silu(gate) * up
    s = (
        exp.step(
            "SwiGLU (PaLM, Llama)",
            "A gated feed-forward: two projections of the same input, one through SiLU acting as a gate "
            "on the other, then the down projection: proj(silu(gate(x)) * up(x)). Stored here as one fused "
            "fc matrix (gate rows first) so one matmul makes both.",
        )
        .value("gate(x)", gate)
        .value("up(x)", up)
        .value("silu(gate) * up", hidden)
        .value("output", ffn.proj(hidden))
    )
    s.check("== FeedForward(activation='swiglu')(x)", torch.allclose(ffn.proj(hidden), ffn(h_in), atol=1e-6))

    with torch.device("meta"):
        sizes = {
            a: FeedForward(BlockConfig(n_embd=768, n_head=12, activation=a, bias=False))
            for a in ("gelu", "swiglu")
        }
    counts = {a: sum(p.numel() for p in f.parameters()) for a, f in sizes.items()}
    s = (
        exp.step(
            "Same budget, three matrices",
            "A GELU FFN has two matrices of width 4C; SwiGLU has three, so its hidden width is 8/3 C "
            "(rounded up to a multiple of 64) to keep the parameter count. At GPT-2's width C = 768:",
        )
        .value("hidden width", {a: f.proj.in_features for a, f in sizes.items()})
        .value("parameters", counts)
    )
    s.check("the SwiGLU FFN has the same parameter count as the GELU one", counts["gelu"] == counts["swiglu"])

    if (path := ctx.figure_path("activations")) is not None:
        from scratchllm.visualize import pyplot

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 5))
        xs = torch.linspace(-4, 4, 401)
        for n, f in fns.items():
            ax.plot(xs.numpy(), f(xs).numpy(), label=n, linestyle="--" if "tanh" in n else "-")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.legend()
        ax.set_title("activation functions")
        save_picture(exp, fig, path, "ReLU, GELU (exact and tanh) and SiLU")
    return exp


# ----------------------------------------------------------------------------- residual


class DeepNetwork(nn.Module):
    """The book's example (chapter 4): ``Linear -> GELU`` layers, optionally with shortcuts."""

    def __init__(self, sizes: list[int], shortcut: bool) -> None:
        from scratchllm.model.layers import GELU

        super().__init__()
        self.shortcut = shortcut
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(a, b), GELU()) for a, b in zip(sizes, sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            out = layer(x)
            x = x + out if self.shortcut and out.shape == x.shape else out
        return x


def layer_gradients(sizes: list[int], shortcut: bool, seed: int, x: torch.Tensor) -> list[float]:
    """Mean |gradient| of each layer's weight for the loss (output - 0)^2 at initialisation."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = DeepNetwork(sizes, shortcut)
    loss = nn.functional.mse_loss(net(x), torch.zeros(sizes[-1]))
    loss.backward()
    return [float(layer[0].weight.grad.abs().mean()) for layer in net.layers]


def residual(ctx: Context) -> Explanation:
    exp = Explanation(
        "residual",
        "shortcut connections keep gradients alive",
        "the book's deep example network (Linear + scratchllm.model.layers.GELU) at initialisation",
    )
    x = torch.tensor([1.0, 0.0, -1.0])
    for sizes, what in (
        ([3, 3, 3, 3, 3, 1], "the book's 5 layers of width 3"),
        ([3] + [8] * 12 + [1], "13 layers of width 8"),
    ):
        plain = layer_gradients(sizes, False, ctx.seed, x)
        short = layer_gradients(sizes, True, ctx.seed, x)
        s = exp.step(
            f"Gradients per layer: {what}",
            "Backpropagation multiplies the gradient by each layer's derivative on the way back; "
            "through many small factors it shrinks towards 0 and the first layers stop learning (the "
            "vanishing gradient). A shortcut x + f(x) adds an identity path: its derivative is 1 + f'(x), "
            "so the gradient reaches the first layer undiminished. Same initial weights in both.",
        )
        s.value("mean |grad| without shortcuts", plain, cols=[f"layer {i}" for i in range(len(plain))])
        s.value("mean |grad| with shortcuts", short, cols=[f"layer {i}" for i in range(len(short))])
        s.value("first layer, with / without", short[0] / max(plain[0], 1e-30))
        s.check("the first layer gets a larger gradient with shortcuts", short[0] > plain[0])
        if (path := ctx.figure_path(f"residual-{len(plain)}-layers")) is not None:
            from scratchllm.visualize import pyplot

            plt = pyplot()
            fig, ax = plt.subplots(figsize=(7, 4))
            idx = torch.arange(len(plain)).numpy()
            ax.bar(idx - 0.2, plain, width=0.4, label="without shortcuts")
            ax.bar(idx + 0.2, short, width=0.4, label="with shortcuts")
            ax.set_yscale("log")
            ax.set_xlabel("layer")
            ax.set_ylabel("mean |gradient|")
            ax.set_title(f"gradient by layer: {what}")
            ax.legend()
            save_picture(exp, fig, path, f"gradient size by layer, {what}")
    return exp


# ----------------------------------------------------------------------------- prenorm


def prenorm(ctx: Context) -> Explanation:
    from scratchllm.model.config import GPTConfig
    from scratchllm.model.gpt import GPTModel, lm_loss

    exp = Explanation(
        "prenorm",
        "where the norm goes: pre-norm vs post-norm",
        "two GPTModels (scratchllm.model.gpt) that differ only in norm_position, same initial weights",
    )
    L, C = 8, 32
    base = GPTConfig(vocab_size=64, context_length=16, n_layer=L, n_head=2, n_embd=C)
    models = {}
    for pos in ("pre", "post"):
        with torch.random.fork_rng():
            torch.manual_seed(ctx.seed)
            models[pos] = GPTModel(replace(base, norm_position=pos))
    g = torch.Generator().manual_seed(ctx.seed)
    idx = torch.randint(0, 64, (4, 16), generator=g)
    targets = torch.randint(0, 64, (4, 16), generator=g)

    with torch.no_grad():
        x = models["pre"].tok_emb(idx) + models["pre"].pos_emb(torch.arange(16))
        blk = models["pre"].blocks[0]
        h = x + blk.attn(blk.norm1(x))
        pre_manual = h + blk.feed_forward(blk.norm2(h))
        pre_out = blk(x)
        blk = models["post"].blocks[0]
        h = blk.norm1(x + blk.attn(x))
        post_manual = blk.norm2(h + blk.feed_forward(h))
        post_out = blk(x)
    s = exp.step(
        "What each block computes",
        "Pre-norm (GPT-2 and most modern LLMs): x + attn(norm(x)), then x + ffn(norm(x)) — the "
        "residual stream itself is never normalised, only what each sub-layer reads. Post-norm (the "
        "original transformer, BERT): norm(x + attn(x)), then norm(x + ffn(x)) — the sum is "
        "normalised after every sub-layer.",
    )
    s.check(
        "pre-norm block == x + attn(norm1(x)), then + ffn(norm2(.))",
        torch.allclose(pre_out, pre_manual, atol=1e-6),
    )
    s.check(
        "post-norm block == norm1(x + attn(x)), then norm2(. + ffn(.))",
        torch.allclose(post_out, post_manual, atol=1e-6),
    )

    stream: dict[str, list[float]] = {}
    grads: dict[str, list[float]] = {}
    for pos, m in models.items():
        outs: list[torch.Tensor] = []

        def keep(module: Any, args: Any, out: torch.Tensor, outs: list[torch.Tensor] = outs) -> None:
            outs.append(out.detach())

        hooks = [b.register_forward_hook(keep) for b in m.blocks]
        try:
            loss = lm_loss(m(idx), targets)
        finally:
            for hk in hooks:
                hk.remove()
        loss.backward()
        stream[pos] = [float(o.pow(2).mean(-1).sqrt().mean()) for o in outs]
        grads[pos] = [
            float(torch.cat([p.grad.reshape(-1) for p in b.parameters() if p.grad is not None]).norm())
            for b in m.blocks
        ]
    cols = [f"block {i}" for i in range(L)]
    s = exp.step(
        "The residual stream by depth",
        "Root mean square of each token's vector after every block. Post-norm ends every block with a "
        "norm, so the stream stays at scale 1. Pre-norm adds each block's output to the stream: it "
        "grows with depth, which is why a pre-norm model needs one final norm before the output head "
        "(final_norm).",
    )
    s.value("pre-norm RMS", stream["pre"], cols=cols).value("post-norm RMS", stream["post"], cols=cols)
    s.check("post-norm: every block's output has RMS 1", all(abs(v - 1) < 1e-3 for v in stream["post"]))
    s.check(
        "pre-norm: the stream grows from the first block to the last", stream["pre"][-1] > stream["pre"][0]
    )
    s = exp.step(
        "Gradient norm per block at initialisation",
        "One backward pass of the language-model loss on random tokens. In a post-norm stack every "
        "gradient must pass through all the norms above it, which rescale it; in a pre-norm stack the "
        "residual path carries it down untouched. Post-norm's uneven gradients are why it needs a "
        "careful learning-rate warm-up (Xiong et al., 2020) and pre-norm trains more easily.",
    )
    s.value("pre-norm", grads["pre"], cols=cols).value("post-norm", grads["post"], cols=cols)
    s.value("max / min over blocks", {p: max(v) / min(v) for p, v in grads.items()})

    if (path := ctx.figure_path("prenorm")) is not None:
        from scratchllm.visualize import pyplot

        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for pos in ("pre", "post"):
            axes[0].plot(range(L), stream[pos], marker="o", label=f"{pos}-norm")
            axes[1].plot(range(L), grads[pos], marker="o", label=f"{pos}-norm")
        axes[0].set_title("residual stream RMS after each block")
        axes[1].set_title("gradient norm per block (initialisation)")
        axes[1].set_yscale("log")
        for ax in axes:
            ax.set_xlabel("block")
            ax.legend()
        save_picture(exp, fig, path, "pre-norm vs post-norm: stream scale and gradients by depth")
    return exp


# ----------------------------------------------------------------------------- weight tying


def _gpt_config(ctx: Context) -> tuple[Any, str]:
    """The config to describe: the user's model's, or a preset's (default gpt2)."""
    from scratchllm.model.config import GPTConfig

    if ctx.loaded is not None:
        from scratchllm.model.finetuned import base_config_dict

        return GPTConfig(**base_config_dict(ctx.loaded.model.config)), f"model {ctx.model_path}"
    name = ctx.preset or "gpt2"
    return preset_config(name), f"preset {name}"


#: Presets that leave vocab_size to the tokenizer are described with a character vocabulary.
CHAR_VOCAB = 65


def preset_config(name: str) -> Any:
    """A preset's model config; without a vocab_size of its own, a 65-character vocabulary
    (tinyshakespeare's), since training would take it from a char tokenizer."""
    from scratchllm.model.config import GPTConfig, get_preset

    model = dict(get_preset(name)["model"])
    model.setdefault("vocab_size", CHAR_VOCAB)
    return GPTConfig(**model)


def weight_tying(ctx: Context) -> Explanation:
    from scratchllm.model.config import GPTConfig
    from scratchllm.model.gpt import GPTModel

    cfg, source = _gpt_config(ctx)
    exp = Explanation(
        "weight-tying",
        "one matrix in, the same matrix out",
        f"scratchllm.model.gpt.GPTModel with the config of {source} (built on the meta device: shapes only)",
    )
    with torch.device("meta"):
        tied = GPTModel(replace(cfg, tie_weights=True))
        untied = GPTModel(replace(cfg, tie_weights=False))
    n_tied, n_untied = tied.num_params(), untied.num_params()
    V, C = cfg.vocab_size, cfg.n_embd
    s = exp.step(
        "Parameters with and without tying",
        "The token embedding maps an id to a C-vector ([vocab, C]); the output head maps the final "
        "C-vector back to one score per token ([vocab, C] again). Tying uses one matrix for both "
        "(Press & Wolf 2017; GPT-2 does): a token's input vector is also the direction that scores it.",
    )
    s.value("vocab_size x n_embd", f"{V:,} x {C:,} = {V * C:,}")
    s.value("parameters, tied", n_tied).value("parameters, untied", n_untied).value(
        "saved", n_untied - n_tied
    )
    s.value("share of the tied model in the embedding", V * C / n_tied)
    s.check("untied - tied == vocab_size x n_embd", n_untied - n_tied == V * C)
    s.check(
        "in the tied model the head's weight IS the embedding's", tied.out_head.weight is tied.tok_emb.weight
    )
    if ctx.loaded is not None:
        exp.note(f"your model is {'tied' if cfg.tie_weights else 'untied'} (tie_weights={cfg.tie_weights})")

    with torch.random.fork_rng():
        torch.manual_seed(ctx.seed)
        small = GPTModel(GPTConfig(vocab_size=10, context_length=4, n_layer=1, n_head=1, n_embd=4)).eval()
    with torch.no_grad():
        h = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(ctx.seed))
        logits = small.out_head(h)
        by_hand = h @ small.tok_emb.weight.T
    s = (
        exp.step(
            "Scores are similarities to the token vectors",
            "With tying, the logit of token t is the dot product of the final hidden vector with t's own "
            "embedding row: the model predicts the token whose embedding points the same way. (A tiny "
            "model with vocabulary 10, width 4.)",
        )
        .value("logits", logits[0])
        .check("out_head(h) == h @ tok_emb.weight^T", torch.allclose(logits, by_hand, atol=1e-6))
    )
    return exp
