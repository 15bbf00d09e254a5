"""The task protocol, the task-factory contract and the helpers every task shares."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from scratchllm.data.corpus import read_text_data  # noqa: F401  (re-exported for the task factories)
from scratchllm.errors import ScratchLLMError

if TYPE_CHECKING:
    import torch

    from scratchllm.data.batches import BatchSource


@runtime_checkable
class Task(Protocol):
    """See :mod:`scratchllm.tasks` for what each method promises."""

    def train_batches(self, *, seed: int, rank: int, world_size: int) -> BatchSource: ...

    def loss(self, model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]: ...

    def evaluate(self, model: Any, *, max_batches: int) -> dict[str, float]: ...

    def sample(self, model: Any) -> str | None: ...


@dataclass
class TaskSpec:
    """What a task factory returns: the task and what the run directory must record about it."""

    task: Any
    #: the tokenizer to save in the run directory (its vocabulary must fit the model).
    tokenizer: Any
    #: the model config, completed from the data (e.g. ``vocab_size``).
    model_config: Any
    #: extra top-level entries for the run's config.json (e.g. ``{"data": {...}}``).
    extra: dict[str, Any] = field(default_factory=dict)


#: ``factory(data, model_config, train_config, *, tokenizer=None) -> TaskSpec``.
#:
#: ``data`` is whatever ``--data`` names (shards dir, text file, pairs file...). ``tokenizer`` is
#: the run's own tokenizer on ``--resume`` (use it, so ids keep their meaning), the user's
#: ``--tokenizer`` for a new run, or None. Families that build their vocabulary from text (BERT,
#: seq2seq) use it instead of a char vocabulary and append their special tokens; the GPT checks it
#: against the tokenizer its shards were made with. The factory returns the task, the tokenizer
#: and the model config completed from the data;
#: on resume the completed config must equal the saved one. Bad data raises ScratchLLMError —
#: before anything is written, since factories run before the run directory is created.
TaskFactory = Callable[..., TaskSpec]


def data_record(source: str, tokenizer: Any, **counts: int) -> dict[str, Any]:
    """The ``{"data": ...}`` entry of a run's ``config.json`` for a task that reads text: where it
    came from, how many examples each split has, and the tokenizer's kind and size (the tokenizer
    itself is ``tokenizer.json``)."""
    vocab = {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size}
    return {"data": {"source": source, **counts, "tokenizer": vocab}}


def train_context(model_config: Any, train_config: Any) -> int:
    """Tokens per training window: the train config's ``context_length``, else the model's."""
    ctx = train_config.context_length or model_config.context_length
    if ctx > model_config.context_length:
        raise ScratchLLMError(
            f"train context_length {ctx} exceeds the model's context_length {model_config.context_length}"
        )
    return ctx
