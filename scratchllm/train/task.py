"""What the one training loop trains on: a *task* supplies the batches, the loss and the evaluation.

The loop in :mod:`scratchllm.train.loop` knows nothing about language modelling, classification,
masked tokens or translation. Everything specific lives in a task object with four methods:

``train_batches(*, seed, rank, world_size) -> BatchSource``
    An endless, *resumable* stream of training batches for this process. Each batch is a
    ``dict[str, Tensor]`` on the CPU (the loop moves it to the device). ``rank``/``world_size``
    let every DDP process read different examples.
``loss(model, batch) -> (loss, metrics)``
    Run the model on the batch and return a scalar loss tensor (the loop calls ``backward`` on
    it) and a small dict of extra *detached* scalars (tensors or floats, e.g. ``{"accuracy": t}``).
    The loop only reads those at logging steps, so returning tensors costs no GPU sync. ``model``
    may be wrapped (DDP, ``torch.compile``): call it, and use :func:`unwrap` to reach its methods.
``evaluate(model, *, max_batches) -> dict[str, float]``
    Metrics on held-out data, e.g. ``{"val_loss": 1.9, "perplexity": 6.7}``. Called in eval mode
    under ``torch.no_grad()``; the key ``val_loss`` (if present) picks the best checkpoint.
``sample(model) -> str | None``
    Something a human can read at eval time (a generated continuation); None when there is none.

A ``BatchSource`` has ``next_batch() -> dict[str, Tensor]`` and ``state_dict()`` /
``load_state_dict(state)`` with JSON-able state: the loop saves that state in every checkpoint so
``--resume`` continues with exactly the batches an uninterrupted run would have seen.

Fine-tuning, BERT and seq2seq are just other implementations of these two protocols.
:class:`LanguageModelingTask` is the GPT pretraining one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from scratchllm.data.shards import Shards
    from scratchllm.tokenizer.base import Tokenizer


@runtime_checkable
class BatchSource(Protocol):
    def next_batch(self) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class Task(Protocol):
    def train_batches(self, *, seed: int, rank: int, world_size: int) -> BatchSource: ...

    def loss(self, model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]: ...

    def evaluate(self, model: Any, *, max_batches: int) -> dict[str, float]: ...

    def sample(self, model: Any) -> str | None: ...


def unwrap(model: Any) -> Any:
    """The plain model inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def model_device(model: Any) -> torch.device:
    import torch

    for p in unwrap(model).parameters():
        return p.device
    return torch.device("cpu")


# ----------------------------------------------------------------------------- language modelling


class LMBatches:
    """Adapts a :class:`~scratchllm.data.shards.RandomWindowSampler` to the ``BatchSource`` protocol:
    ``{"input_ids": x, "targets": y}`` with ``y`` the window shifted by one token."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def next_batch(self) -> dict[str, torch.Tensor]:
        x, y = self.sampler.next_batch()
        return {"input_ids": x, "targets": y}

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any], *, strict: bool = True) -> None:
        self.sampler.load_state_dict(state, strict=strict)


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
        from scratchllm.data.shards import RandomWindowSampler

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
        from scratchllm.evaluate import evaluate_lm

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
        import torch

        from scratchllm.generate import generate

        prompt = self._prompt_ids()
        m = unwrap(model)
        idx = torch.tensor([prompt], dtype=torch.long, device=model_device(m))
        out = generate(
            m,
            idx,
            max_new_tokens=self.sample_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
        )
        ids = out[0].tolist() if hasattr(out, "tolist") else list(out[0])
        return self.tokenizer.decode(ids)
