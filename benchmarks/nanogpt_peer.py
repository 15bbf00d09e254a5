"""nanoGPT's CPU recipe as a peer: its model, its training iteration, its data loading.

nanoGPT (Karpathy, MIT licence) is what most people train a first GPT with; its README's CPU
example trains a "baby GPT" on tinyshakespeare characters::

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 \\
        --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 \\
        --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

and reports a validation loss of about 1.88. nanoGPT is not a package, so this module restates
what that command computes, operation for operation, so that the benchmarks can run it beside
scratchllm in the same process or run (nothing here is imported by scratchllm):

* **model** — GPT-2's architecture *without biases* (nanoGPT's default ``bias=False``): token +
  learned position embeddings; per block ``x + attn(ln_1(x))`` with one fused ``c_attn`` Linear
  split into q, k, v, PyTorch's ``scaled_dot_product_attention(is_causal=True)``, ``c_proj``;
  then ``x + mlp(ln_2(x))`` with ``c_fc`` (4C), the exact (erf) ``nn.GELU``, ``c_proj``; a final
  LayerNorm and an ``lm_head`` tied to the token embedding. Init N(0, 0.02), ``c_proj`` weights
  0.02 / sqrt(2 n_layer). The loss is the cross-entropy over every position.
* **optimizer** — ``torch.optim.AdamW`` with weight decay 0.1 on the >= 2-D tensors, betas
  (0.9, 0.99) (the shakespeare-char config), and *no* ``fused`` flag: nanoGPT asks for the fused
  kernel on CUDA only, so on a CPU it gets PyTorch's default implementation.
* **one iteration** — set the lr of every group (warm-up of 100 iterations to 1e-3 as
  ``lr * (it + 1) / (warmup + 1)``, cosine to 1e-4 at iteration 2000), forward, fetch the next
  batch, backward, clip the gradient norm to 1.0, step, ``zero_grad(set_to_none=True)``, and (the
  command's ``--log_interval=1``) read the loss back with ``.item()``. (Its ``GradScaler`` is
  disabled without CUDA, and its autocast context is a ``nullcontext`` on the CPU: no-ops both.)
* **data** — every batch re-opens ``train.bin`` as a ``np.memmap``, draws 12 offsets with
  ``torch.randint`` and stacks ``astype(np.int64)`` copies of the windows.
* **evaluation** — every 250 iterations (and at 0), the mean loss of 20 random batches of each
  split; the run goes from iteration 0 to 2000 inclusive, so the last evaluation is at 2000.

``SCRATCHLLM_NANOGPT_DIR=/path/to/nanoGPT`` makes :func:`build_model` import the ``GPT`` class
from a real nanoGPT checkout instead (``model.py``), to check the restatement against it.

    python -m benchmarks.nanogpt_peer train --data DATA --out OUT [--max-iters 2000]

trains the recipe on scratchllm shards (``train.bin``/``val.bin`` of uint16 ids, as nanoGPT's own
``prepare.py`` writes them) and saves the final weights as a scratchllm run directory, so that
``scratchllm eval`` can score it on the whole val split like any of our runs.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Recipe:
    """The README's CPU command (and the shakespeare-char config it starts from)."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    batch_size: int = 12
    dropout: float = 0.0
    bias: bool = False
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 2000
    max_iters: int = 2000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_iters: int = 20
    seed: int = 1337


def lr_at(it: int, r: Recipe) -> float:
    """nanoGPT's schedule: linear warm-up to ``learning_rate``, cosine down to ``min_lr``."""
    if it < r.warmup_iters:
        return r.learning_rate * (it + 1) / (r.warmup_iters + 1)
    if it > r.lr_decay_iters:
        return r.min_lr
    ratio = (it - r.warmup_iters) / (r.lr_decay_iters - r.warmup_iters)
    return r.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (r.learning_rate - r.min_lr)


def _restated_model(vocab_size: int, r: Recipe) -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    C, H = r.n_embd, r.n_head

    class Norm(nn.Module):  # LayerNorm whose bias is optional
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(C))
            self.bias = nn.Parameter(torch.zeros(C)) if r.bias else None

        def forward(self, x):
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c_attn = nn.Linear(C, 3 * C, bias=r.bias)
            self.c_proj = nn.Linear(C, C, bias=r.bias)
            self.attn_dropout, self.resid_dropout = nn.Dropout(r.dropout), nn.Dropout(r.dropout)

        def forward(self, x):
            B, T, _ = x.shape
            heads = [t.view(B, T, H, C // H).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2)]
            q, k, v = heads
            p = r.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=p, is_causal=True)
            return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c_fc, self.gelu = nn.Linear(C, 4 * C, bias=r.bias), nn.GELU()
            self.c_proj, self.dropout = nn.Linear(4 * C, C, bias=r.bias), nn.Dropout(r.dropout)

        def forward(self, x):
            return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1, self.attn, self.ln_2, self.mlp = Norm(), SelfAttention(), Norm(), MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class BabyGPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = nn.ModuleDict(
                dict(
                    wte=nn.Embedding(vocab_size, C),
                    wpe=nn.Embedding(r.block_size, C),
                    drop=nn.Dropout(r.dropout),
                    h=nn.ModuleList(Block() for _ in range(r.n_layer)),
                    ln_f=Norm(),
                )
            )
            self.lm_head = nn.Linear(C, vocab_size, bias=False)
            self.transformer.wte.weight = self.lm_head.weight
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, 0.0, 0.02)
                    if getattr(m, "bias", None) is not None:
                        nn.init.zeros_(m.bias)
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * r.n_layer))

        def forward(self, idx, targets=None):
            t = idx.shape[1]
            pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
            x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
            for block in self.transformer.h:
                x = block(x)
            x = self.transformer.ln_f(x)
            if targets is None:
                return self.lm_head(x[:, [-1], :]), None
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
            return logits, loss

    return BabyGPT()


def build_model(vocab_size: int, r: Recipe) -> Any:
    """The peer's model: restated here, or nanoGPT's own ``GPT`` with ``SCRATCHLLM_NANOGPT_DIR``."""
    real = os.environ.get("SCRATCHLLM_NANOGPT_DIR")
    if not real:
        return _restated_model(vocab_size, r)
    import contextlib
    import importlib.util
    import io

    spec = importlib.util.spec_from_file_location("nanogpt_model", Path(real) / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.GPTConfig(
        block_size=r.block_size,
        vocab_size=vocab_size,
        n_layer=r.n_layer,
        n_head=r.n_head,
        n_embd=r.n_embd,
        dropout=r.dropout,
        bias=r.bias,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter count
        return mod.GPT(cfg)


def build_optimizer(model: Any, r: Recipe) -> Any:
    """AdamW, decay on >= 2-D tensors; not fused (nanoGPT fuses on CUDA only)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": r.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=r.learning_rate, betas=(r.beta1, r.beta2))


class Batches:
    """nanoGPT's ``get_batch``: a fresh memmap per call, ``torch.randint`` offsets, stacked copies."""

    def __init__(self, data_dir: str | Path, r: Recipe) -> None:
        self.dir, self.r = Path(data_dir), r

    def get(self, split: str) -> tuple[Any, Any]:
        import torch

        data = np.memmap(self.dir / f"{split}.bin", dtype=np.uint16, mode="r")
        T = self.r.block_size
        ix = torch.randint(len(data) - T, (self.r.batch_size,))
        x = torch.stack([torch.from_numpy(data[i : i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + T].astype(np.int64)) for i in ix])
        return x.to("cpu"), y.to("cpu")


class Trainer:
    """The state of nanoGPT's training loop; :meth:`iteration` is one pass of its ``while True``."""

    def __init__(self, data_dir: str | Path, vocab_size: int, r: Recipe | None = None) -> None:
        import torch

        self.r = r or Recipe()
        torch.manual_seed(self.r.seed)
        self.batches = Batches(data_dir, self.r)
        self.model = build_model(vocab_size, self.r)
        self.optimizer = build_optimizer(self.model, self.r)
        self.model.train()
        self.it = 0
        self.X, self.Y = self.batches.get("train")

    def iteration(self) -> float:
        import torch

        lr = lr_at(self.it, self.r)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        _, loss = self.model(self.X, self.Y)
        self.X, self.Y = self.batches.get("train")  # fetched while (on a GPU) the step runs
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.r.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.it += 1
        return loss.item()  # --log_interval=1: every iteration prints its loss

    def estimate_loss(self) -> dict[str, float]:
        import torch

        out = {}
        self.model.eval()
        with torch.no_grad():
            for split in ("train", "val"):
                losses = [self.model(*self.batches.get(split))[1].item() for _ in range(self.r.eval_iters)]
                out[split] = sum(losses) / len(losses)
        self.model.train()
        return out


def our_config(vocab_size: int, r: Recipe | None = None) -> Any:
    """The scratchllm ``GPTConfig`` that computes the same function as the peer's model."""
    from scratchllm.model.config import GPTConfig

    r = r or Recipe()
    return GPTConfig(
        vocab_size=vocab_size,
        context_length=r.block_size,
        n_layer=r.n_layer,
        n_head=r.n_head,
        n_embd=r.n_embd,
        dropout=r.dropout,
        bias=r.bias,
        activation="gelu_erf",
        pos_emb="learned",
        norm="layernorm",
        tie_weights=True,
    )


def to_our_state_dict(model: Any) -> dict[str, Any]:
    """The peer's weights under scratchllm's parameter names (the tied head stored once)."""
    sd = model.state_dict()
    out = {"tok_emb.weight": sd["transformer.wte.weight"], "pos_emb.weight": sd["transformer.wpe.weight"]}
    names = {"ln_1": "norm1", "ln_2": "norm2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj"}
    names.update({"mlp.c_fc": "ffn.fc", "mlp.c_proj": "ffn.proj"})
    for key, value in sd.items():
        if key.startswith("transformer.h."):
            i, rest = key[len("transformer.h.") :].split(".", 1)
            for theirs, ours in names.items():
                if rest.startswith(theirs + "."):
                    out[f"blocks.{i}.{ours}{rest[len(theirs) :]}"] = value
        elif key.startswith("transformer.ln_f."):
            out["final_norm." + key.rsplit(".", 1)[1]] = value
    return out


def train_recipe(data_dir: str | Path, out_dir: str | Path, r: Recipe | None = None) -> dict[str, Any]:
    """The whole recipe: iterations 0..max_iters, evaluations at every ``eval_interval``; the final
    weights go to ``out_dir`` as a scratchllm run (for ``scratchllm eval``). Returns the log."""
    import torch

    from scratchllm.data.shards import load_shards
    from scratchllm.model.gpt import GPTModel
    from scratchllm.runs import save_run_files

    r = r or Recipe()
    t_start = time.perf_counter()
    shards = load_shards(data_dir)
    trainer = Trainer(data_dir, shards.vocab_size, r)
    evals, train_s = [], 0.0
    while True:  # nanoGPT's loop: evaluate (every eval_interval), step, stop after max_iters + 1 steps
        if trainer.it % r.eval_interval == 0:
            elapsed = time.perf_counter() - t_start
            evals.append({"iter": trainer.it, **trainer.estimate_loss(), "elapsed": round(elapsed, 2)})
        t0 = time.perf_counter()
        trainer.iteration()
        train_s += time.perf_counter() - t0
        if trainer.it > r.max_iters:
            break
    ours = GPTModel(our_config(shards.vocab_size, r))
    ours.load_state_dict(to_our_state_dict(trainer.model), strict=False)
    with torch.no_grad():
        assert torch.equal(ours.out_head.weight, trainer.model.lm_head.weight)
    save_run_files(out_dir, ours, arch="gpt", model_config=ours.config, tokenizer=shards.load_tokenizer())
    return {
        "iterations": trainer.it,
        "evals": evals,
        "train_seconds": round(train_s, 2),
        "wall_s": round(time.perf_counter() - t_start, 2),
        "final_val_loss": evals[-1]["val"],
        "real_nanogpt": bool(os.environ.get("SCRATCHLLM_NANOGPT_DIR")),
    }


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.nanogpt_peer")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train nanoGPT's CPU recipe on scratchllm shards")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--max-iters", type=int, default=Recipe.max_iters)
    t.add_argument("--eval-interval", type=int, default=Recipe.eval_interval)
    t.add_argument("--eval-iters", type=int, default=Recipe.eval_iters)
    args = p.parse_args(argv)
    r = Recipe(
        max_iters=args.max_iters,
        lr_decay_iters=args.max_iters,
        eval_interval=args.eval_interval,
        eval_iters=args.eval_iters,
        warmup_iters=min(Recipe.warmup_iters, max(1, args.max_iters // 10)),
    )
    log = train_recipe(args.data, args.out, r)
    print(json.dumps(log))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
