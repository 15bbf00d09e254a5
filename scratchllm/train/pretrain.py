"""From a prepared data directory to a trained run: what ``scratchllm train`` (and ``demo``) do.

:func:`setup_pretraining` resolves the configuration, checks the data against the run, builds the
model and the task; :func:`pretrain` then hands them to the one loop (:func:`~.loop.train`).
Kept apart from the CLI so that scripts and notebooks can do the same in two calls.

Configuration, in order: the architecture's config dataclass and :class:`TrainConfig` defaults →
a named preset (``PRESETS[name]["model"]`` / ``["train"]``) → ``--config file.toml`` → ``--set
key=value``. The model's ``vocab_size`` always comes from the data (for GPT: the shards' ``meta.json``), so
the model and the tokenizer that made the data can never disagree. On ``--resume`` the run's saved
``config.json`` is the base instead, with the same layers applied on top (so "the same command
plus --resume" works): the model config must not change (it would not fit the saved weights),
train keys such as ``max_steps`` may.

Each architecture's record in :mod:`scratchllm.architectures` names its *task factory*, which turns
``--data`` and the resolved configs into a :class:`~scratchllm.tasks.base.TaskSpec` (task,
tokenizer, completed model config).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.tasks.base import TaskSpec
from scratchllm.train.config import TrainConfig


def make_task(
    arch: str, data: str | Path, model_config: Any, cfg: TrainConfig, *, tokenizer: Any = None
) -> TaskSpec:
    """The task that trains ``arch`` on ``data``: the registry's task factory for it."""
    from scratchllm.architectures import get_architecture, trainable_names

    factory = get_architecture(arch).task
    if factory is None:
        raise ScratchLLMError(
            f"'scratchllm train' cannot train architecture {arch!r} (fine-tuning makes it); "
            f"available: {', '.join(trainable_names())}"
        )
    return factory(data, model_config, cfg, tokenizer=tokenizer)


@dataclass
class PretrainSetup:
    """Everything :func:`~.loop.train` needs, resolved and checked."""

    arch: str
    model_config: Any
    train_config: TrainConfig
    model: Any
    task: Any
    tokenizer: Any
    resume: bool
    extra: dict[str, Any] = field(default_factory=dict)
    #: the preset the config started from (None: the dataclass defaults or the resumed run's config).
    preset: str | None = None


#: The model keys of a preset that other architectures than GPT take from it (sizes, not switches).
PRESET_SIZE_KEYS = {"context_length", "n_layer", "n_head", "n_embd", "ffn_hidden", "dropout"}


def _preset_sections(name: str | None, arch: str) -> dict[str, dict[str, Any]] | None:
    """The ``model``/``train`` sections of preset ``name`` as they apply to ``arch``.

    A preset written for ``arch`` applies in full; a GPT recipe given to another architecture
    (BERT, seq2seq) lends only its sizes — char-shakespeare's RoPE/RMSNorm/SwiGLU switches are GPT
    choices, not BERT's; a preset written for another non-GPT architecture is an error.
    """
    if not name:
        return None
    from scratchllm.model.config import get_preset

    preset = get_preset(name)
    written_for = preset.get("arch", "gpt")
    sections = {k: dict(preset[k]) for k in ("model", "train") if k in preset}
    sections.get("model", {}).pop("vocab_size", None)  # always taken from the data
    if written_for != arch:
        if written_for != "gpt":
            raise ScratchLLMError(f"preset {name!r} is for --arch {written_for}, not {arch}")
        sections["model"] = {k: v for k, v in sections.get("model", {}).items() if k in PRESET_SIZE_KEYS}
    return sections


def _changed_fields(a: Any, b: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]


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
    use_default_preset: bool = True,
    check_memory: bool = True,
    tokenizer: str | Path | Any = None,
) -> PretrainSetup:
    """Resolve configs, open and check the data, build the model and the task (nothing is written).

    Without ``preset`` a new run starts from its architecture's ``default_preset`` (a laptop-sized
    model: ``small`` for GPT) — pass ``use_default_preset=False`` for the bare dataclass defaults
    (GPT-2 small for a GPT). ``PretrainSetup.preset`` says which preset was used.
    ``check_memory`` refuses, before any weight is allocated, a run whose estimated peak memory
    exceeds what the machine has free (:mod:`scratchllm.train.estimate`).
    ``tokenizer`` (a path :func:`~scratchllm.tokenizer.load_tokenizer` reads, or a tokenizer) is the
    vocabulary a BERT or seq2seq run builds on instead of characters; for a GPT it must be the
    one the shards were made with. On ``--resume`` the run keeps its own ``tokenizer.json``, and a
    ``tokenizer`` given again must be the one the run started from.
    """
    import torch

    from scratchllm.architectures import build_model, config_from_dict, get_architecture
    from scratchllm.config import from_dict, parse_set_args, resolve_configs
    from scratchllm.io import read_json
    from scratchllm.runs import holds_a_run

    out = Path(out)
    overrides = dict(overrides) if isinstance(overrides, dict) else parse_set_args(overrides)
    if "vocab_size" in overrides or "model.vocab_size" in overrides:
        raise ScratchLLMError("vocab_size comes from the data (its tokenizer); remove --set vocab_size")

    user_tokenizer = tokenizer
    if isinstance(tokenizer, (str, Path)):
        from scratchllm.tokenizer import load_tokenizer

        user_tokenizer = load_tokenizer(tokenizer)
    run_tokenizer = None
    cfg_path = out / "config.json"
    if resume and not cfg_path.is_file() and holds_a_run(out):
        raise ScratchLLMError(
            f"cannot resume: {out} holds files but no config.json (not a scratchllm run?); "
            "choose another --out"
        )
    continuing = resume and cfg_path.is_file()  # else --resume starts a new run (nothing saved yet)
    if continuing:
        saved = read_json(cfg_path, "run config")
        if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
            raise ScratchLLMError(f"{cfg_path} is not a scratchllm run config")
        saved_arch = saved.get("architecture", "gpt")
        if arch is not None and arch != saved_arch:
            raise ScratchLLMError(f"--arch {arch} does not match the run being resumed ({saved_arch})")
        arch = saved_arch
        base_model = config_from_dict(arch, saved["model"])
        base_train = from_dict(TrainConfig, saved.get("train") or {}, what="train config")
        # The same command plus --resume resolves to the same config; it may also change train keys
        # (e.g. a larger max_steps), never the model.
        resolved = resolve_configs(
            {"model": base_model, "train": base_train},
            preset=_preset_sections(preset, arch),
            config_file=config_file,
            overrides=overrides,
        )
        if resolved["model"] != base_model:
            raise ScratchLLMError(
                "the model config cannot change on --resume "
                f"({', '.join(_changed_fields(resolved['model'], base_model))}); "
                "only train keys such as max_steps may be overridden"
            )
        if (out / "tokenizer.json").is_file():
            from scratchllm.tokenizer import load_tokenizer
            from scratchllm.tokenizer.specials import extends

            run_tokenizer = load_tokenizer(out / "tokenizer.json")
            # The run's tokenizer is the given one itself, or it plus the family's special tokens.
            if user_tokenizer is not None and not extends(run_tokenizer, user_tokenizer):
                raise ScratchLLMError(
                    f"--tokenizer {tokenizer} is not the tokenizer the run in {out} was trained with "
                    "(its tokenizer.json); resume without --tokenizer, the run keeps its own"
                )
        else:
            run_tokenizer = user_tokenizer
    else:
        run_tokenizer = user_tokenizer
        arch = arch or "gpt"
        record = get_architecture(arch)
        cfg_cls = record.config
        if preset is None and use_default_preset:
            preset = record.default_preset  # laptop-sized; the big shapes are one --preset away
        resolved = resolve_configs(
            {"model": cfg_cls(), "train": TrainConfig()},
            preset=_preset_sections(preset, arch),
            config_file=config_file,
            overrides=overrides,
        )

    train_config = resolved["train"]
    changes: dict[str, Any] = {}
    if seed is not None:
        changes["seed"] = seed
    if device is not None:
        changes["device"] = device
    if changes:
        train_config = dataclasses.replace(train_config, **changes)

    spec = make_task(arch, data, resolved["model"], train_config, tokenizer=run_tokenizer)
    if continuing and spec.model_config != resolved["model"]:
        raise ScratchLLMError(
            f"the data in {data} does not fit the run being resumed (it changes "
            f"{', '.join(_changed_fields(spec.model_config, resolved['model']))}); resume with the run's data"
        )

    if check_memory:  # sizes from a model on the meta device: nothing is allocated yet
        from scratchllm.device import resolve_device
        from scratchllm.train.estimate import check_fits, estimate_run

        with torch.device("meta"):
            shapes = build_model(arch, spec.model_config)
        seq_len = getattr(spec.task, "context_length", None) or spec.model_config.context_length
        check_fits(
            estimate_run(
                shapes, train_config, batch_size=train_config.batch_size, seq_len=seq_len,
                device=resolve_device(train_config.device),
            )
        )  # fmt: skip
    torch.manual_seed(train_config.seed)  # the initial weights follow from the seed
    model = build_model(arch, spec.model_config)
    return PretrainSetup(
        arch=arch,
        model_config=spec.model_config,
        train_config=train_config,
        model=model,
        task=spec.task,
        tokenizer=spec.tokenizer,
        resume=resume,
        extra=spec.extra,
        preset=None if continuing else preset,
    )


def pretrain(
    setup: PretrainSetup,
    out: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    allow_world_size_change: bool = False,
    echo: Callable[[str], None] | None = None,
    check_memory: bool = True,
    estimate_time: bool = False,
) -> Any:
    """Run the loop for a :class:`PretrainSetup`; returns the :class:`~.loop.TrainResult`."""
    from scratchllm.train.loop import train

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
        extra_config=setup.extra or None,
        progress=progress,
        allow_world_size_change=allow_world_size_change,
        echo=echo,
        check_memory=check_memory,
        estimate_time=estimate_time,
    )
