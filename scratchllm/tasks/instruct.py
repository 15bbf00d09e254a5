"""Instruction fine-tuning's task: next-token loss on the *response* tokens of templated records.

The records, templates, encoding and prompt masking are :mod:`scratchllm.data.instruction`; the
whole job — base model in, fine-tuned run and scored test answers out — is
:func:`scratchllm.finetune.instruct.finetune_instruct`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from scratchllm.data.batches import EpochBatches
from scratchllm.data.instruction import (  # noqa: F401  (InstructionData, load_instruction_data: re-exported)
    EncodedInstruction,
    InstructionData,
    collate_instruction,
    load_instruction_data,
)
from scratchllm.device import unwrap
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluate.lm import response_loss
from scratchllm.generate.engine import generate_responses


class InstructionTask:
    """The loop's :class:`~scratchllm.tasks.base.Task` for instruction tuning.

    ``sample`` answers the first val instruction greedily, so the eval log shows the model
    learning the format.
    """

    def __init__(
        self,
        train: Sequence[EncodedInstruction],
        val: Sequence[EncodedInstruction],
        *,
        batch_size: int,
        pad_id: int,
        mask_prompt: bool = True,
        tokenizer: Any = None,
        sample_prompt: str | Sequence[tuple[str, bool]] | None = None,
        sample_tokens: int = 64,
    ) -> None:
        if not train:
            raise ScratchLLMError("no training records left (every prompt was longer than the context)")
        self.train, self.val = list(train), list(val)
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.mask_prompt = mask_prompt
        self.tokenizer = tokenizer
        self.sample_prompt = sample_prompt
        self.sample_tokens = sample_tokens

    def collate(self, items: list[EncodedInstruction]) -> dict[str, torch.Tensor]:
        return collate_instruction(items, self.pad_id, mask_prompt=self.mask_prompt)

    def train_batches(self, *, seed: int, rank: int = 0, world_size: int = 1) -> EpochBatches:
        return EpochBatches(
            self.train, self.batch_size, self.collate, seed=seed, rank=rank, world_size=world_size
        )

    def loss(self, model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        from scratchllm.model.gpt import lm_loss

        logits = model(batch["input_ids"])
        return lm_loss(logits, batch["targets"]) + unwrap(model).aux_loss(), {}

    def evaluate(self, model: Any, *, max_batches: int) -> dict[str, float]:
        if not self.val:
            return {}
        loss = response_loss(
            unwrap(model), self.val, pad_id=self.pad_id, batch_size=self.batch_size, max_batches=max_batches
        )
        return {"val_loss": loss, "perplexity": math.exp(min(loss, 50.0))}

    def sample(self, model: Any) -> str | None:
        if self.tokenizer is None or self.sample_prompt is None or self.sample_tokens < 1:
            return None
        reply = generate_responses(
            unwrap(model), self.tokenizer, [self.sample_prompt], max_new_tokens=self.sample_tokens
        )[0]
        prompt = self.sample_prompt
        return (prompt if isinstance(prompt, str) else "".join(text for text, _ in prompt)) + reply
