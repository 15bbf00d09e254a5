"""LoRA: a low-rank update beside a frozen weight — counts, the B = 0 start, merging."""

from __future__ import annotations

import copy

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.explain.context import Context, encode_checked
from scratchllm.explain.result import Explanation

RANKS = [1, 2, 4, 8, 16, 32, 64]
LORA_TEXT = "Every effort moves you"


def _selects(model: torch.nn.Module, target: str) -> bool:
    from scratchllm.model.lora import find_targets

    try:
        return bool(find_targets(model, [target]))
    except ScratchLLMError:
        return False


def lora(ctx: Context) -> Explanation:
    from scratchllm.architectures import get_architecture
    from scratchllm.model.config import GPTConfig, get_preset
    from scratchllm.model.gpt import GPTModel
    from scratchllm.model.lora import (
        DEFAULT_TARGETS,
        LoRAConfig,
        LoRALinear,
        apply_lora,
        count_parameters,
        lora_layers,
        merge_lora,
    )

    lm = ctx.untrained_lm()
    model = lm.model
    has_adapters = (
        ctx.loaded is not None and get_architecture(ctx.loaded.arch).has_lora and bool(lora_layers(model))
    )
    exp = Explanation(
        "lora", "low-rank adaptation, W + (alpha/r) B A", f"scratchllm.model.lora on {lm.description}"
    )
    g = torch.Generator().manual_seed(ctx.seed)

    layer_name = "blocks.0.attn.qkv"
    base = model.get_submodule(layer_name)
    if isinstance(base, LoRALinear):  # a LoRA model: wrap a plain copy of its base weight instead
        plain = torch.nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
        plain.load_state_dict(
            {
                "weight": base.weight.detach().clone(),
                **({"bias": base.bias.detach().clone()} if base.bias is not None else {}),
            }
        )
        base = plain
    r, alpha = 4, 8.0
    with torch.random.fork_rng():
        torch.manual_seed(ctx.seed)
        layer = LoRALinear(base, r, alpha)
    d_in, d_out = layer.in_features, layer.out_features
    x = torch.randn(3, d_in, generator=g)
    with torch.no_grad():
        diff0 = float((layer(x) - base(x)).abs().max())
    s = (
        exp.step(
            "A frozen weight plus two thin matrices",
            f"Take one linear layer of the model, {layer_name}: W is {d_out} x {d_in}. LoRA (Hu et al. 2021) "
            f"freezes W and learns the change as B @ A with A: r x in and B: out x r for a small rank r "
            f"(here {r}), scaled by alpha / r = {alpha:g}/{r} = {alpha / r:g}: y = x W^T + b + "
            "(alpha/r) x A^T B^T. "
            "A starts random and B at zero, so at step 0 the layer computes exactly what it did.",
        )
        .value("W", list(layer.weight.shape))
        .value("A", list(layer.lora_A.shape))
        .value("B", list(layer.lora_B.shape))
    )
    s.value("max |LoRA layer - base layer| at init", diff0)
    s.check("B is all zeros at init", bool((layer.lora_B == 0).all()))
    s.check("so the output is unchanged (exactly)", diff0 == 0.0)

    for p in (layer.weight, layer.bias):
        if p is not None:
            p.requires_grad_(False)
    target = torch.randn(3, d_out, generator=g)
    opt = torch.optim.Adam([layer.lora_A, layer.lora_B], lr=1e-2)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(layer(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        delta = layer.delta_weight()
        by_formula = x @ (layer.weight + alpha / r * layer.lora_B @ layer.lora_A).T + (
            layer.bias if layer.bias is not None else 0
        )
        y = layer(x)
    s = exp.step(
        "After a few steps",
        "20 Adam steps fitting the layer to a random target, training only A and B. The update "
        "(alpha/r) B @ A is a full out x in matrix, but of rank at most r.",
    ).value("loss", {"first step": losses[0], "last step": losses[-1]})
    s.value("delta_weight() (first 4 x 6)", delta[:4, :6]).value(
        "rank of the update", int(torch.linalg.matrix_rank(delta))
    )
    s.check("y == x (W + (alpha/r) B A)^T + b", torch.allclose(y, by_formula, atol=1e-5))
    s.check(
        "delta_weight() == (alpha/r) B @ A", torch.allclose(delta, alpha / r * layer.lora_B @ layer.lora_A)
    )
    s.check(f"the update has rank <= {r}", int(torch.linalg.matrix_rank(delta)) <= r)
    s.check("the loss went down", losses[-1] < losses[0])

    counts = [
        {
            "r": rr,
            "LoRA r (in + out)": rr * (d_in + d_out),
            "full W in x out": d_in * d_out,
            "share": round(rr * (d_in + d_out) / (d_in * d_out), 4),
        }
        for rr in RANKS
    ]
    with torch.device("meta"):
        gpt2 = GPTModel(GPTConfig(**get_preset("gpt2")["model"]))
    gpt2_total = count_parameters(gpt2)[1]
    whole = []
    for rr in (1, 4, 8, 16, 64):
        m = copy.deepcopy(gpt2)
        apply_lora(m, LoRAConfig(r=rr, alpha=2 * rr))
        trainable, total = count_parameters(m)
        whole.append(
            {"r": rr, "trainable": trainable, "total": total, "trainable share": round(trainable / total, 5)}
        )
    s = (
        exp.step(
            "Parameter counts",
            f"For this {d_out} x {d_in} layer LoRA trains r (in + out) numbers instead of in x out. On GPT-2 "
            "small (124M) with adapters on every attention and feed-forward matrix (qkv, proj, fc), "
            "r = 8 trains about 1 % of the model; the optimizer state shrinks with it and the adapter "
            "file is a few megabytes.",
        )
        .value(f"{layer_name} ({d_out} x {d_in})", counts)
        .value("GPT-2 small, targets qkv, proj, fc", whole)
    )
    s.check(
        "LoRA parameters == r x (in + out) for every r",
        all(c["LoRA r (in + out)"] == c["r"] * (d_in + d_out) for c in counts),
    )
    s.check(
        "the base model's parameters stay in the total, frozen",
        all(w["total"] == gpt2_total + w["trainable"] for w in whole),
    )

    work = copy.deepcopy(model)
    targets = tuple(t for t in DEFAULT_TARGETS if _selects(work, t))  # (a MoE model has no ffn.fc)
    if not has_adapters:
        with torch.random.fork_rng():
            torch.manual_seed(ctx.seed)
            apply_lora(work, LoRAConfig(r=r, alpha=alpha, targets=targets))
        with torch.no_grad():
            for lay in lora_layers(work).values():  # as if trained: B is no longer zero
                lay.lora_B.normal_(0, 0.02, generator=g)
    ids = encode_checked(lm.tokenizer, ctx.text_or(LORA_TEXT), work.config.context_length)
    idx = torch.tensor([ids])
    work.eval()
    with torch.no_grad():
        before = work(idx)
        n_layers = len(lora_layers(work))
        merge_lora(work)
        after = work(idx)
    diff = float((before - after).abs().max())
    s = (
        exp.step(
            "Merging",
            "After training, W + (alpha/r) B @ A is just a matrix: merge_lora folds every adapter into its "
            "weight and puts plain linear layers back, so the fine-tuned model costs nothing extra at "
            "inference ('scratchllm lora merge'). "
            + (
                "Here: your model's own trained adapters."
                if has_adapters
                else f"Here: rank-{r} adapters on every {', '.join(targets)} layer of the model, B "
                "set to random values as if trained."
            ),
        )
        .value("adapted layers", n_layers)
        .value("max |logits with adapters - merged logits|", diff)
    )
    s.check("merged logits == logits with the adapters (1e-4)", diff < 1e-4)
    s.check("no LoRA layer is left after merging", not lora_layers(work))
    return exp
