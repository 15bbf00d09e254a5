"""Training: one loop for pretraining and every fine-tune. *What* is trained — the data, the loss,
the evaluation — is a task (:mod:`scratchllm.tasks`); this package is *how*.

* :mod:`~scratchllm.train.config` — :class:`TrainConfig`, every knob of the loop;
* :mod:`~scratchllm.train.optim` — AdamW parameter groups and the learning-rate schedule;
* :mod:`~scratchllm.train.loop` — :func:`train` itself;
* :mod:`~scratchllm.train.checkpoint` / :mod:`~scratchllm.train.state` — checkpoints and exact
  resume (the run directory's layout itself is :mod:`scratchllm.runs`);
* :mod:`~scratchllm.train.distributed` — DDP set-up; :mod:`~scratchllm.train.metrics` — metrics.jsonl
  and loss.png; :mod:`~scratchllm.train.pretrain` — what ``scratchllm train`` does.

Importing this package is cheap (no torch); ``train`` and ``TrainResult`` load the loop on first use.
"""

from __future__ import annotations

from typing import Any

from scratchllm.train.config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult"):
        from scratchllm.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'scratchllm.train' has no attribute {name!r}")
