"""A run's history: its loss curves, its checkpoints, and how one prompt's continuation changed.

A training run (``scratchllm train``) writes ``metrics.jsonl`` and keeps its newest checkpoints
in ``checkpoints/step-XXXXXXXX/``. :func:`training_summary` reads both; to see what the model
learned step by step, :func:`checkpoint_continuations` loads each kept checkpoint in turn and
continues the same prompt greedily (temperature 0, so the only thing that changes is the weights).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError

#: Caps: points per curve returned, checkpoints continued per call, tokens per continuation.
MAX_CURVE_POINTS = 2000
MAX_CHECKPOINTS = 8
MAX_CONTINUATION_TOKENS = 64


def _thin(points: list[list[float]], n: int) -> list[list[float]]:
    if len(points) <= n:
        return points
    step = len(points) / n
    return [points[int(i * step)] for i in range(n - 1)] + [points[-1]]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def run_dir_of(path: str | Path | None) -> Path | None:
    """The run directory a served path belongs to (a run itself, or a checkpoint inside one)."""
    if path is None:
        return None
    p = Path(path)
    for cand in (p, p.parent.parent):
        if (cand / "metrics.jsonl").is_file() or (cand / "checkpoints").is_dir():
            return cand
    return None


def training_summary(run_dir: str | Path | None) -> dict[str, Any]:
    """Loss curves (train loss and validation loss by step) and the list of kept checkpoints.

    ``{"run": bool, "train": [[step, loss], ...], "val": [[step, val_loss], ...],
    "checkpoints": [step, ...]}``; ``run`` is False (and the lists empty) for a model that is not
    a training run (e.g. a Hugging Face directory).
    """
    from scratchllm.runs import list_checkpoints, read_metrics

    root = run_dir_of(run_dir)
    if root is None:
        return {"run": False, "train": [], "val": [], "checkpoints": []}

    events = read_metrics(root / "metrics.jsonl")
    train, val = [], []
    for e in events:
        step = _num(e.get("step"))
        if step is None:
            continue
        if e.get("event") == "train" and _num(e.get("loss")) is not None:
            train.append([int(step), _num(e["loss"])])
        elif e.get("event") == "eval" and _num(e.get("val_loss")) is not None:
            val.append([int(step), _num(e["val_loss"])])
    return {
        "run": True,
        "train": _thin(train, MAX_CURVE_POINTS),
        "val": _thin(val, MAX_CURVE_POINTS),
        "checkpoints": [step for step, _ in list_checkpoints(root)],
    }


def checkpoint_path(run_dir: str | Path | None, step: int) -> Path:
    """The directory of checkpoint ``step`` of the run (an error naming the kept steps if absent)."""
    from scratchllm.runs import list_checkpoints

    root = run_dir_of(run_dir)
    kept = dict(list_checkpoints(root)) if root is not None else {}
    if step not in kept:
        have = ", ".join(map(str, kept)) or "none"
        raise ScratchLLMError(f"this run has no checkpoint at step {step} (kept: {have})")
    return kept[step]


def checkpoint_continuations(
    run_dir: str | Path | None,
    prompt: str,
    *,
    steps: list[int] | None = None,
    max_tokens: int = 32,
    device: str = "cpu",
) -> dict[str, Any]:
    """The greedy continuation of ``prompt`` by each kept checkpoint (at most ``MAX_CHECKPOINTS``,
    evenly spaced, the newest always included; or the given ``steps``)."""
    from scratchllm.generate.engine import generate
    from scratchllm.inspect.tokens import encode_text
    from scratchllm.load import load_model

    if not 1 <= max_tokens <= MAX_CONTINUATION_TOKENS:
        raise ScratchLLMError(
            f"max_tokens must be between 1 and {MAX_CONTINUATION_TOKENS} (got {max_tokens})"
        )
    summary = training_summary(run_dir)
    kept = summary["checkpoints"]
    if steps is None:
        steps = kept if len(kept) <= MAX_CHECKPOINTS else _thin([[s] for s in kept], MAX_CHECKPOINTS)
        steps = [s[0] if isinstance(s, list) else s for s in steps]
    if len(steps) > MAX_CHECKPOINTS:
        raise ScratchLLMError(f"at most {MAX_CHECKPOINTS} checkpoints per call (got {len(steps)})")
    out = []
    for step in steps:
        loaded = load_model(checkpoint_path(run_dir, step), device=device)
        ids = encode_text(loaded.tokenizer, prompt)
        if not ids:
            raise ScratchLLMError("the prompt has no tokens; type a prompt first")
        ctx = int(loaded.model.config.context_length)
        ids = ids[-max(1, ctx - max_tokens) :]
        new = generate(loaded.model, ids, max_tokens, temperature=0).tolist()[len(ids) :]
        out.append({"step": step, "text": loaded.tokenizer.decode(new)})
    return {"prompt": prompt, "continuations": out}
