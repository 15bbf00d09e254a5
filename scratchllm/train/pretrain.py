"""From a prepared data directory to a trained run: what ``scratchllm train`` (and ``demo``) do.

:func:`setup_pretraining` resolves the configuration, checks the data against the run, builds the
model and the task; :func:`pretrain` then hands them to the one loop (:func:`~.loop.train`).
Kept apart from the CLI so that scripts and notebooks can do the same in two calls.

Configuration, in order: the architecture's config dataclass and :class:`TrainConfig` defaults →
a named preset (``PRESETS[name]["model"]`` / ``["train"]``) → ``--config file.toml`` → ``--set
key=value``. The model's ``vocab_size`` always comes from the data (``meta.json``), so the model
and the tokenizer that made the shards can never disagree. On ``--resume`` the run's saved
``config.json`` is the base instead: the model config is fixed (changing it would not fit the
saved weights), train keys such as ``max_steps`` may still be overridden.

Architectures other than GPT plug in through :data:`TASK_FACTORIES`: a factory builds the
:class:`~.task.Task` for an architecture from the shards and the resolved configs.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.train.config import TrainConfig

#: arch -> "module:function" building its training task:
#: ``factory(shards, model_config, train_config, tokenizer) -> Task``.
TASK_FACTORIES: dict[str, str] = {
    "gpt": "scratchllm.train.pretrain:language_modeling_task",
}


def language_modeling_task(shards: Any, model_config: Any, cfg: TrainConfig, tokenizer: Any) -> Any:
    """The GPT pretraining task: random windows for training, fixed windows for validation."""
    from scratchllm.train.task import LanguageModelingTask

    return LanguageModelingTask(
        shards,
        context_length=cfg.context_length or model_config.context_length,
        batch_size=cfg.batch_size,
        tokenizer=tokenizer,
        sample_tokens=cfg.sample_tokens,
    )


def make_task(arch: str, shards: Any, model_config: Any, cfg: TrainConfig, tokenizer: Any) -> Any:
    spec = TASK_FACTORIES.get(arch)
    if spec is None:
        raise ScratchLLMError(
            f"'scratchllm train' cannot pretrain architecture {arch!r} from token shards yet; "
            f"available: {', '.join(TASK_FACTORIES)}"
        )
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)(shards, model_config, cfg, tokenizer)


@dataclass
class PretrainSetup:
    """Everything :func:`~.loop.train` needs, resolved and checked."""

    arch: str
    model_config: Any
    train_config: TrainConfig
    model: Any
    task: Any
    tokenizer: Any
    shards: Any
    resume: bool
    #: extra config.json entries (used instead of the shards' description when ``shards`` is None).
    extra_config: dict[str, Any] | None = None


def _preset_sections(name: str | None) -> dict[str, dict[str, Any]] | None:
    if not name:
        return None
    from scratchllm.model.config import get_preset

    preset = get_preset(name)
    return {k: dict(preset[k]) for k in ("model", "train") if k in preset}


def setup_pretraining(
    data: str | Path,
    out: str | Path,
    *,
    arch: str | None = None,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Sequence[str] | dict[str, Any] | None = None,
    seed: int | None = None,
    device: str | None = None,
    resume: bool = False,
) -> PretrainSetup:
    """Resolve configs, open and check the data, build the model and the task (nothing is written)."""
    import torch

    from scratchllm.config import from_dict, parse_set_args, resolve_configs
    from scratchllm.data.shards import load_shards
    from scratchllm.io import read_json
    from scratchllm.model import architecture, build_model, config_from_dict

    out = Path(out)
    from scratchllm.train.tasks_family import family_arch, setup_family_pretraining

    family = family_arch(arch, out, resume)
    if family is not None:  # BERT and seq2seq read text / pairs, not token shards
        return setup_family_pretraining(
            family, data, out, preset=preset, config_file=config_file, overrides=overrides,
            seed=seed, device=device, resume=resume,
        )  # fmt: skip
    shards = load_shards(data)
    tokenizer = shards.load_tokenizer()
    overrides = dict(overrides) if isinstance(overrides, dict) else parse_set_args(overrides)
    if "vocab_size" in overrides or "model.vocab_size" in overrides:
        raise ScratchLLMError(
            f"vocab_size comes from the data ({shards.vocab_size} tokens in {shards.path}/meta.json); "
            "remove --set vocab_size"
        )

    if resume:
        if preset:
            raise ScratchLLMError("--preset cannot be combined with --resume: the run's saved config is used")
        cfg_path = out / "config.json"
        if not cfg_path.is_file():
            raise ScratchLLMError(f"cannot resume: {cfg_path} not found; start a run without --resume")
        saved = read_json(cfg_path, "run config")
        saved_arch = saved.get("architecture", "gpt") if isinstance(saved, dict) else None
        if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
            raise ScratchLLMError(f"{cfg_path} is not a scratchllm run config")
        if arch is not None and arch != saved_arch:
            raise ScratchLLMError(f"--arch {arch} does not match the run being resumed ({saved_arch})")
        arch = saved_arch
        model_config = config_from_dict(arch, saved["model"])
        base_train = from_dict(TrainConfig, saved.get("train") or {}, what="train config")
        resolved = resolve_configs(
            {"model": model_config, "train": base_train}, config_file=config_file, overrides=overrides
        )
        if resolved["model"] != model_config:
            changed = [
                f.name
                for f in dataclasses.fields(model_config)
                if getattr(resolved["model"], f.name) != getattr(model_config, f.name)
            ]
            raise ScratchLLMError(
                f"the model config cannot change on --resume ({', '.join(changed)}); "
                "only train keys such as max_steps may be overridden"
            )
        train_config = resolved["train"]
        # The data must be tokenized exactly like the run's tokenizer, or every id means something else.
        run_tok_path = out / "tokenizer.json"
        if run_tok_path.is_file():
            from scratchllm.tokenizer import load_tokenizer

            shards.check_tokenizer(load_tokenizer(run_tok_path))
        if model_config.vocab_size != shards.vocab_size:
            raise ScratchLLMError(
                f"the run's model has vocab_size {model_config.vocab_size} but the data in {shards.path} "
                f"has {shards.vocab_size}; resume with the data the run was trained on"
            )
    else:
        arch = arch or "gpt"
        cfg_cls, _ = architecture(arch)
        resolved = resolve_configs(
            {"model": cfg_cls(), "train": TrainConfig()},
            preset=_preset_sections(preset),
            config_file=config_file,
            overrides=overrides,
        )
        model_config = dataclasses.replace(resolved["model"], vocab_size=shards.vocab_size)
        train_config = resolved["train"]

    changes: dict[str, Any] = {}
    if seed is not None:
        changes["seed"] = seed
    if device is not None:
        changes["device"] = device
    if changes:
        train_config = dataclasses.replace(train_config, **changes)
    model_ctx = getattr(model_config, "context_length", None)
    if train_config.context_length is not None and model_ctx is not None and train_config.context_length > model_ctx:
        raise ScratchLLMError(
            f"train context_length {train_config.context_length} exceeds the model's context_length {model_ctx}"
        )

    torch.manual_seed(train_config.seed)  # the initial weights follow from the seed
    model = build_model(arch, model_config)
    task = make_task(arch, shards, model_config, train_config, tokenizer)
    return PretrainSetup(arch, model_config, train_config, model, task, tokenizer, shards, resume)


def pretrain(
    setup: PretrainSetup,
    out: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    allow_world_size_change: bool = False,
    echo: Callable[[str], None] | None = None,
) -> Any:
    """Run the loop for a :class:`PretrainSetup`; returns the :class:`~.loop.TrainResult`."""
    from scratchllm.train.loop import train

    if setup.shards is None:
        extra = setup.extra_config
    else:
        meta = setup.shards.meta
        extra = {
            "data": {
                "path": str(setup.shards.path),
                "tokenizer_sha256": meta.get("tokenizer_sha256"),
                "train_tokens": meta.get("train_tokens"),
                "val_tokens": meta.get("val_tokens"),
            }
        }
    return train(
        setup.model,
        setup.task,
        setup.train_config,
        out,
        arch=setup.arch,
        tokenizer=setup.tokenizer,
        resume=setup.resume,
        force=force,
        model_config=setup.model_config,
        extra_config=extra,
        progress=progress,
        allow_world_size_change=allow_world_size_change,
        echo=echo,
    )
