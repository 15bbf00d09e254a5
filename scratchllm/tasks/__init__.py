"""What the one training loop trains on: a *task* supplies the batches, the loss and the evaluation.

The loop (:func:`scratchllm.train.loop.train`) knows nothing about language modelling,
classification, masked tokens or translation. Everything specific lives in a task object with four
methods (:class:`~scratchllm.tasks.base.Task`):

``train_batches(*, seed, rank, world_size) -> BatchSource``
    An endless, *resumable* stream of training batches for this process
    (:mod:`scratchllm.data.batches`). Each batch is a ``dict[str, Tensor]`` on the CPU (the loop
    moves it to the device). ``rank``/``world_size`` let every DDP process read different examples.
``loss(model, batch) -> (loss, metrics)``
    Run the model on the batch and return a scalar loss tensor (the loop calls ``backward`` on
    it) and a small dict of extra *detached* scalars (tensors or floats, e.g. ``{"accuracy": t}``).
    The loop only reads those at logging steps, so returning tensors costs no GPU sync. ``model``
    may be wrapped (DDP, ``torch.compile``): call it, and use :func:`scratchllm.device.unwrap` to
    reach its methods.
``evaluate(model, *, max_batches) -> dict[str, float]``
    Metrics on held-out data, e.g. ``{"val_loss": 1.9, "perplexity": 6.7}``, computed by
    :mod:`scratchllm.evaluate`. Called in eval mode under ``torch.no_grad()``; the key
    ``val_loss`` (if present) picks the best checkpoint.
``sample(model) -> str | None``
    Something a human can read at eval time (a generated continuation); None when there is none.

One module per kind of training: :mod:`~scratchllm.tasks.lm` (GPT pretraining),
:mod:`~scratchllm.tasks.bert` (masked LM + next-sentence prediction),
:mod:`~scratchllm.tasks.seq2seq` (translation), :mod:`~scratchllm.tasks.classify`,
:mod:`~scratchllm.tasks.instruct`. The pretraining ones also have a *task factory* that turns
``--data`` and the configs into a :class:`~scratchllm.tasks.base.TaskSpec`; the architecture
registry (:mod:`scratchllm.architectures`) says which factory trains which architecture.
"""

from __future__ import annotations

from scratchllm.tasks.base import Task, TaskFactory, TaskSpec

__all__ = ["Task", "TaskFactory", "TaskSpec"]
