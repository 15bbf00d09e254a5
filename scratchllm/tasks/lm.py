"""GPT pretraining: next-token prediction over prepared token shards."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scratchllm.data.batches import LMBatches, RandomWindowSampler, check_window
from scratchllm.data.shards import load_shards
from scratchllm.device import model_device, unwrap
from scratchllm.tasks.base import TaskSpec, train_context

if TYPE_CHECKING:
    import torch

    from scratchllm.data.shards import Shards
    from scratchllm.tokenizer.base import Tokenizer


class LanguageModelingTask:
    """Next-token prediction over prepared token shards (GPT pretraining).

    Args:
        shards: from :func:`scratchllm.data.shards.load_shards` (``.train`` and ``.val`` arrays).
        context_length: tokens per window (at most the model's context length).
        batch_size: windows per micro-batch, per process.
        tokenizer: enables :meth:`sample` (decoded text); None turns samples off.
        eval_batch_size: windows per evaluation batch (default: ``batch_size``).
        sample_prompt: text the samples continue (default: the first few val tokens).
        sample_tokens, temperature, top_k: how samples are drawn (temperature 0 = greedy).
    """

    def __init__(
        self,
        shards: Shards,
        context_length: int,
        batch_size: int,
        *,
        tokenizer: Tokenizer | None = None,
        eval_batch_size: int | None = None,
        sample_prompt: str | None = None,
        sample_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int | None = 40,
    ) -> None:
        self.shards = shards
        self.context_length = int(context_length)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.tokenizer = tokenizer
        self.sample_prompt = sample_prompt
        self.sample_tokens = sample_tokens
        self.temperature = temperature
        self.top_k = top_k

    def train_batches(self, *, seed: int, rank: int = 0, world_size: int = 1) -> LMBatches:
        sampler = RandomWindowSampler(
            self.shards.train,
            self.batch_size,
            self.context_length,
            seed=seed,
            rank=rank,
            world_size=world_size,
            name=f"{self.shards.path}/train.bin",
        )
        return LMBatches(sampler)

    def loss(self, model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        from scratchllm.model.gpt import lm_loss

        logits = model(batch["input_ids"])
        # The auxiliary term is zero for dense models and the MoE load-balancing loss otherwise.
        loss = lm_loss(logits, batch["targets"]) + unwrap(model).aux_loss()
        return loss, {}

    def evaluate(self, model: Any, *, max_batches: int) -> dict[str, float]:
        from scratchllm.evaluate.lm import evaluate_lm

        scores = evaluate_lm(
            unwrap(model),
            self.shards.val,
            context_length=self.context_length,
            batch_size=self.eval_batch_size,
            max_batches=max_batches,
            device=model_device(model),
            name=f"{self.shards.path}/val.bin",
        )
        if getattr(getattr(unwrap(model), "config", None), "n_experts", 0):
            from scratchllm.model.moe import expert_utilisation

            # Fraction of tokens routed to each expert, per layer (last val batch): is the router balanced?
            scores = {**scores, "expert_utilisation": expert_utilisation(unwrap(model))}
        return scores

    def _prompt_ids(self) -> list[int]:
        if self.sample_prompt is not None and self.tokenizer is not None:
            ids = self.tokenizer.encode(self.sample_prompt)
            if ids:
                return ids
        # A few tokens from the start of the val split: a natural-looking prompt for any corpus.
        val = self.shards.val
        return [int(t) for t in val[: min(8, len(val))]] or [0]

    def sample(self, model: Any) -> str | None:
        if self.tokenizer is None or self.sample_tokens < 1:
            return None
        from scratchllm.generate.engine import generate

        m = unwrap(model)
        out = generate(
            m,
            self._prompt_ids(),
            max_new_tokens=self.sample_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            vocab_size=self.tokenizer.vocab_size,
        )
        return self.tokenizer.decode(out.tolist())


def language_modeling_task(
    data: str | Path, model_config: Any, cfg: Any, *, tokenizer: Any = None
) -> TaskSpec:
    """GPT pretraining on ``scratchllm prepare`` shards: random windows to train, fixed ones to validate.

    The model's ``vocab_size`` comes from the shards' ``meta.json``; on resume the shards must have
    been made with the run's tokenizer.
    """
    shards = load_shards(data)
    if tokenizer is not None:
        shards.check_tokenizer(tokenizer)
    else:
        tokenizer = shards.load_tokenizer()
    model_config = dataclasses.replace(model_config, vocab_size=shards.vocab_size)
    ctx = train_context(model_config, cfg)
    # Check both splits hold a window now, before the run directory is written (and, for val,
    # before training for eval_interval steps only to fail at the first evaluation).
    check_window(len(shards.train), ctx, f"{shards.path}/train.bin")
    if cfg.eval_steps > 0:
        check_window(len(shards.val), ctx, f"{shards.path}/val.bin")
    task = LanguageModelingTask(
        shards,
        context_length=ctx,
        batch_size=cfg.batch_size,
        tokenizer=tokenizer,
        sample_tokens=cfg.sample_tokens,
    )
    meta = shards.meta
    extra = {
        "data": {
            "path": str(shards.path),
            "tokenizer_sha256": meta.get("tokenizer_sha256"),
            "train_tokens": meta.get("train_tokens"),
            "val_tokens": meta.get("val_tokens"),
        }
    }
    return TaskSpec(task=task, tokenizer=tokenizer, model_config=model_config, extra=extra)
