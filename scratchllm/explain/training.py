"""What training minimises and how it steps: the loss, perplexity, AdamW, the schedule, clipping."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from scratchllm.explain.context import Context, encode_checked, save_picture
from scratchllm.explain.result import Explanation
from scratchllm.explain.tokens import pieces

LOSS_TEXT = "Every effort moves you forward."


@torch.no_grad()
def loss(ctx: Context) -> Explanation:
    import numpy as np

    from scratchllm.evaluate.lm import evaluate_lm
    from scratchllm.model.gpt import lm_loss

    lm = ctx.language_model()
    model, tok = lm.model, lm.tokenizer
    ids = encode_checked(tok, ctx.text_or(LOSS_TEXT), model.config.context_length + 1)
    if len(ids) < 2:
        from scratchllm.errors import ScratchLLMError

        raise ScratchLLMError(
            "the loss needs at least two tokens (an input and a target); give a longer --text"
        )
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    logits = model(x)[0].float()
    V = logits.shape[-1]
    exp = Explanation("loss", "cross-entropy, by hand and by the library", lm.description)
    labels = pieces(tok, ids)
    s = exp.step(
        "Logits",
        f"For every position the model outputs one score (logit) per token of its vocabulary ({V:,}), "
        "for the token that comes next. The targets are the inputs shifted by one.",
    )
    s.tokens("inputs", labels[:-1]).tokens("targets", labels[1:])
    s.value("logits of position 0 (first 8 tokens of the vocabulary)", logits[0, :8])

    shifted = logits - logits.max(-1, keepdim=True).values
    probs = shifted.exp() / shifted.exp().sum(-1, keepdim=True)
    p_target = probs[torch.arange(len(ids) - 1), y[0]]
    nll = -p_target.log()
    rows = [
        {
            "position": t,
            "input": labels[t],
            "target": labels[t + 1],
            "p(target)": float(p_target[t]),
            "-log p": float(nll[t]),
            "model's favourite": pieces(tok, [int(probs[t].argmax())])[0],
        }
        for t in range(len(ids) - 1)
    ]
    s = exp.step(
        "Softmax, then -log p(target)",
        "Softmax turns a row of logits into probabilities: exp(logit) / sum of exp(logits) (the "
        "largest logit is subtracted first so exp cannot overflow; it cancels out). The loss at a "
        "position is -log of the probability the model gave the true next token: 0 if it was "
        "certain and right, large if it thought the target unlikely.",
    ).value("per position", rows)
    s.check(
        "every row of probabilities sums to 1",
        torch.allclose(probs.sum(-1), torch.ones(len(probs)), atol=1e-5),
    )

    by_hand = float(nll.mean())
    library = float(F.cross_entropy(logits, y[0]))
    scores = evaluate_lm(model, np.asarray(ids), context_length=len(ids) - 1, batch_size=1)
    s = (
        exp.step(
            "The loss is the mean",
            "Training minimises the mean of -log p(target) over all positions: the cross-entropy. "
            "torch's cross_entropy fuses softmax and log into one stable log_softmax; the trainer "
            "(lm_loss) and 'scratchllm eval' (evaluate_lm) use it.",
        )
        .value("mean of -log p, by hand", by_hand)
        .value("F.cross_entropy", library)
    )
    s.value("lm_loss (the training loss)", float(lm_loss(logits[None], y))).value(
        "evaluate_lm val_loss", scores["val_loss"]
    )
    s.check("by hand == cross_entropy (1e-4)", abs(by_hand - library) < 1e-4)
    s.check("== the loss training and eval report", abs(library - scores["val_loss"]) < 1e-4)

    fresh = lm.fresh_copy(ctx.seed)
    fresh_loss = float(F.cross_entropy(fresh(x)[0].float(), y[0]))
    s = exp.step(
        "Perplexity, and the uniform guess",
        "Perplexity = exp(loss): the model is as unsure as if it picked uniformly among that many "
        f"tokens. Guessing uniformly among all {V:,} gives loss ln({V:,}) = {math.log(V):.3f}, perplexity "
        f"{V:,}; a freshly initialised model is close to that. Training is the distance from there.",
    )
    s.value("loss", library).value("perplexity = exp(loss)", math.exp(library)).value(
        "evaluate_lm perplexity", scores["perplexity"]
    )
    s.value("uniform guess: ln(vocab)", math.log(V)).value("freshly initialised model's loss", fresh_loss)
    s.value("better than a uniform guess", library < math.log(V))
    s.check(
        "perplexity == exp(loss)",
        math.isclose(scores["perplexity"], math.exp(scores["val_loss"]), rel_tol=1e-6),
    )
    s.check("a fresh model's loss is near ln(vocab) (within 0.5)", abs(fresh_loss - math.log(V)) < 0.5)
    return exp


# ----------------------------------------------------------------------------- optimizer


def _train_config(ctx: Context) -> tuple[Any, str]:
    from scratchllm.model.config import get_preset
    from scratchllm.train.config import TrainConfig

    if ctx.loaded is not None and isinstance(ctx.loaded.config.get("train"), dict):
        try:
            return TrainConfig(**ctx.loaded.config["train"]), f"the train config of {ctx.model_path}"
        except TypeError:
            pass
    return TrainConfig(**get_preset("char-shakespeare")["train"]), "the char-shakespeare preset's recipe"


def optimizer(ctx: Context) -> Explanation:
    from scratchllm.train.optim import clip_gradients, lr_at, param_groups

    lm = ctx.untrained_lm()
    model = lm.model
    exp = Explanation(
        "optimizer",
        "AdamW, the learning-rate schedule, gradient clipping",
        f"scratchllm.train.optim (param_groups, lr_at, clip_gradients) and torch.optim; {lm.description}",
    )

    groups = param_groups(model, 0.1)
    named = {id(p): n for n, p in model.named_parameters()}
    decay = [named[id(p)] for p in groups[0]["params"]]
    no_decay = [named[id(p)] for p in groups[1]["params"]] if len(groups) > 1 else []
    s = (
        exp.step(
            "Which parameters decay",
            "Weight decay pulls weights towards 0 so none grows without need. It suits the matrices "
            "(linear layers, embeddings), not biases and norm gains, whose job is to shift and scale: "
            "decaying a LayerNorm gain would fight the normalisation. The rule is by shape: >= 2-D decays.",
        )
        .value("decayed (first 6)", decay[:6])
        .value("not decayed (first 6)", no_decay[:6])
    )
    s.value("counts", {"decayed tensors": len(decay), "not decayed tensors": len(no_decay)})
    params = dict(model.named_parameters())
    s.check("every decayed parameter has >= 2 dimensions", all(params[n].dim() >= 2 for n in decay))
    s.check("every parameter without decay is 1-D", all(params[n].dim() == 1 for n in no_decay))

    lr, steps = 0.1, 5
    trajectories: dict[str, list[float]] = {}
    for wd in (0.1, 0.01):
        for name, cls in (("Adam + L2", torch.optim.Adam), ("AdamW", torch.optim.AdamW)):
            w = torch.nn.Parameter(torch.tensor([1.0]))
            opt = cls([w], lr=lr, weight_decay=wd)
            values = [1.0]
            for _ in range(steps):
                w.grad = torch.zeros(1)  # the loss does not care about w: only decay acts
                opt.step()
                values.append(w.item())
            trajectories[f"{name}, decay {wd}"] = values
    s = exp.step(
        "Adam + L2 vs AdamW: decay on one parameter",
        "One weight w = 1 whose loss gradient is 0, so only weight decay acts, lr 0.1. Adam with "
        "weight_decay adds decay * w to the gradient — and then Adam divides every gradient by its own "
        "running size, so the decay step is about lr whatever the decay is. AdamW (Loshchilov & Hutter) "
        "decouples it: w <- w - lr * decay * w, a shrink by (1 - lr * decay) per step, independent of "
        "the gradients. The trainer uses AdamW.",
    ).value("w after each step", trajectories, cols=[f"step {i}" for i in range(steps + 1)])
    s.check(
        "AdamW: w = (1 - lr * decay)^t",
        all(
            math.isclose(v, (1 - lr * 0.1) ** t, rel_tol=1e-5)
            for t, v in enumerate(trajectories["AdamW, decay 0.1"])
        ),
    )
    s.check(
        "Adam + L2: the first step is about lr for both decays",
        all(abs(1 - trajectories[f"Adam + L2, decay {wd}"][1] - lr) < 1e-3 for wd in (0.1, 0.01)),
    )

    cfg, source = _train_config(ctx)
    marks = sorted(
        {
            0,
            1,
            max(cfg.warmup_steps - 1, 0),
            cfg.warmup_steps,
            cfg.max_steps // 2,
            cfg.max_steps - 1,
            cfg.max_steps,
        }
    )
    curve = [lr_at(t, cfg) for t in range(cfg.max_steps + 1)]
    s = exp.step(
        "Warm-up, then cosine decay",
        f"The learning rate of {source}: lr {cfg.lr:g}, {cfg.warmup_steps} warm-up steps, "
        f"{cfg.max_steps} steps. "
        "Warm-up rises linearly from lr/warmup to lr (Adam's moment estimates are noisy at first, big "
        "early steps can wreck a fresh model); then half a cosine glides down to min_lr (lr/10 by "
        "default) so the last steps are small and the model settles. It is a pure function of the "
        "step, so resuming needs only the step number.",
    ).value("lr at step", {f"step {t}": lr_at(t, cfg) for t in marks})
    warm = curve[: cfg.warmup_steps]
    s.check(
        "step 0 == lr / warmup_steps",
        cfg.warmup_steps == 0 or math.isclose(curve[0], cfg.lr / cfg.warmup_steps),
    )
    s.check("the peak is lr, at the end of warm-up", math.isclose(max(curve), cfg.lr))
    s.check(
        "warm-up rises, decay never rises",
        all(a < b for a, b in zip(warm, warm[1:]))
        and all(a >= b for a, b in zip(curve[cfg.warmup_steps :], curve[cfg.warmup_steps + 1 :])),
    )
    s.check("the last step reaches min_lr", math.isclose(curve[-1], cfg.effective_min_lr))

    from scratchllm.model.gpt import lm_loss

    ids = encode_checked(lm.tokenizer, ctx.text_or(LOSS_TEXT), model.config.context_length + 1)
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        lm_loss(model(x), y).backward()
    trainable = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
    before = torch.cat([p.grad.reshape(-1) for p in trainable]).clone()
    norm_before = float(before.norm())
    clip = norm_before / 2
    reported = float(clip_gradients(trainable, clip))
    after = torch.cat([p.grad.reshape(-1) for p in trainable])
    model.zero_grad(set_to_none=True)
    s = (
        exp.step(
            "Gradient clipping",
            "A rare bad batch can produce a huge gradient and one huge step. Clipping measures the norm of "
            "all gradients together and, if it exceeds grad_clip (1.0 in the trainer), scales every "
            "gradient by the same factor so the norm equals grad_clip: the step keeps its direction, only "
            "its length is capped. One real backward pass on the text, clipped to half its norm "
            f"({clip:.4g}):",
        )
        .value("norm before", norm_before)
        .value("clip_gradients returned", reported)
        .value("norm after", float(after.norm()))
    )
    s.check(
        "clip_gradients returns the norm before clipping", math.isclose(reported, norm_before, rel_tol=1e-5)
    )
    s.check(
        "the norm after clipping is the clip value", math.isclose(float(after.norm()), clip, rel_tol=1e-4)
    )
    s.check(
        "the direction is unchanged (cosine 1)", float(F.cosine_similarity(before, after, dim=0)) > 0.99999
    )

    if (path := ctx.figure_path("optimizer")) is not None:
        from scratchllm.visualize import pyplot

        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        axes[0].plot(range(len(curve)), curve)
        axes[0].axvline(cfg.warmup_steps, color="grey", ls=":")
        axes[0].set_title(f"learning rate ({source})")
        axes[0].set_xlabel("step")
        for name, values in trajectories.items():
            axes[1].plot(range(steps + 1), values, marker="o", label=name)
        axes[1].set_title("one weight under decay alone")
        axes[1].set_xlabel("step")
        axes[1].legend()
        save_picture(exp, fig, path, "the warm-up + cosine schedule, and Adam + L2 vs AdamW decay")
    return exp
