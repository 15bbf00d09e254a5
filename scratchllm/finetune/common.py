"""What classification and instruction fine-tuning share: the base model, the config, which
parameters train, and the LoRA adapter written at the end of a LoRA run.

Fine-tuning is not a second training loop. It is three decisions handed to the one loop
(:func:`scratchllm.train.loop.train`): a *task* (data + loss + evaluation), a *model* (the
pretrained base, possibly with a new head or LoRA adapters) and *which parameters train*
(``requires_grad``; the optimizer only sees those).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.adapters import AdapterInfo, save_adapter
from scratchllm.architectures import get_architecture
from scratchllm.device import is_main_process
from scratchllm.errors import ScratchLLMError
from scratchllm.model.lora import LoRAConfig, count_parameters, merge_lora

#: The training defaults of the book's fine-tuning chapters (AdamW, lr 5e-5, weight decay 0.1,
#: batch 8), replacing the pretraining ones; presets, --config and --set still override them.
FINETUNE_TRAIN_DEFAULTS: dict[str, Any] = {
    "lr": 5e-5,
    "weight_decay": 0.1,
    "batch_size": 8,
    "warmup_steps": 0,
    "eval_interval": 50,
    "eval_steps": 10,
    "save_interval": 100,
    "log_interval": 5,
}
#: LoRA trains far fewer numbers from a zero start and wants a bigger step.
LORA_LR = 5e-4

TRAINABLE_MODES = ("head", "last", "all", "lora")


@dataclasses.dataclass
class ResolvedConfig:
    train: Any  # TrainConfig
    dropout: float | None  # a new model dropout, when the user changed it
    explicit: set[str]  # train keys the user set (so e.g. --epochs does not override max_steps)


def resolve_train_config(
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    base_dropout: float = 0.0,
    lora: bool = False,
) -> ResolvedConfig:
    """Fine-tuning defaults → preset → TOML → ``--set``, for the train keys plus model ``dropout``.

    The model's shape comes from the base checkpoint, so of the model keys only ``dropout`` may
    change; anything else is an error that says so.
    """
    from scratchllm.config import load_toml, parse_set_args, resolve_configs, split_sections
    from scratchllm.model.config import GPTConfig, get_preset
    from scratchllm.train.config import TrainConfig

    defaults = dict(FINETUNE_TRAIN_DEFAULTS)
    if lora:
        defaults["lr"] = LORA_LR
    base = {"train": TrainConfig(**defaults), "model": GPTConfig(dropout=base_dropout)}
    layers: list[dict[str, Any]] = []
    preset_layer = None
    if preset:
        p = get_preset(preset)
        preset_layer = {"train": dict(p.get("train", {}))}  # a preset's model shape does not apply
        layers.append(preset_layer)
    if config_file:
        layers.append(load_toml(config_file))
    set_args = parse_set_args(list(overrides))
    layers.append(set_args)
    explicit: set[str] = set()
    for layer in layers:
        routed = split_sections(layer, base)
        explicit |= set(routed["train"])
        changed_model = set(routed["model"]) - {"dropout"}
        if changed_model:
            raise ScratchLLMError(
                f"model key {sorted(changed_model)[0]!r} cannot change when fine-tuning (the shape comes "
                "from the base model); only dropout can"
            )
    resolved = resolve_configs(base, preset=preset_layer, config_file=config_file, overrides=set_args)
    dropout = resolved["model"].dropout
    return ResolvedConfig(resolved["train"], dropout if dropout != base_dropout else None, explicit)


def load_base(path: str | Path, device: str = "cpu", *, kind: str = "instruct") -> Any:
    """Load the pretrained model to fine-tune: a GPT run, checkpoint or Hugging Face GPT-2 dir
    (and, for ``kind="classify"``, a BERT run too — the registry's ``classifier_base``).

    A model with LoRA adapters is merged first (so one can LoRA-tune a LoRA-tuned model). Returns
    :class:`scratchllm.runs.LoadedModel`.
    """
    from scratchllm.load import load_base_model

    loaded = load_base_model(path, device=device)
    record = get_architecture(loaded.arch)
    ok = record.classifier_base if kind == "classify" else record.instruct_base
    if not ok:
        also = " or a BERT run" if kind == "classify" else ""
        raise ScratchLLMError(
            f"{path} is a {loaded.arch!r} model; fine-tuning starts from a GPT language model "
            f"(a pretraining run, a checkpoint or a Hugging Face GPT-2 directory){also}"
        )
    if loaded.tokenizer is None:
        raise ScratchLLMError(f"{path} has no tokenizer.json; fine-tuning needs the base model's tokenizer")
    return loaded


def select_trainable(model: nn.Module, mode: str, *, last_blocks: int = 1) -> tuple[int, int]:
    """Set ``requires_grad`` for a fine-tuning mode; return (trainable, total) parameter counts.

    * ``head``: only the output head (a linear probe on frozen features);
    * ``last``: the last ``last_blocks`` transformer blocks, what sits above them (the final norm;
      a BERT's pooler too — the model's ``top_modules``) and the head — the book's choice for
      classification: the top layers are the most task-specific;
    * ``all``: everything (the book's choice for instruction tuning);
    * ``lora``: only the LoRA matrices (plus a classifier's new head, which starts random).
    """
    if mode not in TRAINABLE_MODES:
        raise ScratchLLMError(f"unknown trainable mode {mode!r}; choose from {', '.join(TRAINABLE_MODES)}")
    from scratchllm.model.finetuned import GPTClassifier

    for p in model.parameters():
        p.requires_grad_(mode == "all")
    if mode in ("head", "last") or (mode == "lora" and isinstance(model, GPTClassifier)):
        for p in model.out_head.parameters():
            p.requires_grad_(True)
    if mode == "last":
        n = len(model.blocks)
        if not 1 <= last_blocks <= n:
            raise ScratchLLMError(f"--trainable-blocks must be between 1 and {n} (got {last_blocks})")
        for block in model.blocks[n - last_blocks :]:
            for p in block.parameters():
                p.requires_grad_(True)
        for name in getattr(model, "top_modules", ("final_norm",)):
            for p in getattr(model, name).parameters():
                p.requires_grad_(True)
    if mode == "lora":
        found = False
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.requires_grad_(True)
                found = True
        if not found:
            raise ScratchLLMError("trainable mode 'lora' needs LoRA layers (pass --lora-r R)")
    trainable, total = count_parameters(model)
    if trainable == 0:
        raise ScratchLLMError(f"trainable mode {mode!r} leaves nothing to train")
    return trainable, total


def lora_from_args(
    r: int | None, alpha: float | None, dropout: float, targets: str | None
) -> LoRAConfig | None:
    """A :class:`LoRAConfig` from CLI-style values, or None when ``r`` is not given."""
    if r is not None and r < 1:
        raise ScratchLLMError(f"--lora-r must be >= 1 (got {r}); leave it out to fine-tune without LoRA")
    if r is None:
        if alpha is not None or targets is not None:
            raise ScratchLLMError("--lora-alpha/--lora-targets need --lora-r")
        return None
    from scratchllm.model.lora import DEFAULT_TARGETS

    return LoRAConfig(
        r=r,
        alpha=float(alpha) if alpha is not None else 2.0 * r,
        dropout=dropout,
        targets=tuple(t.strip() for t in targets.split(",") if t.strip()) if targets else DEFAULT_TARGETS,
    )


def write_adapter(model: nn.Module, run_dir: str | Path, *, arch: str, info: dict[str, Any]) -> Path:
    """Save ``RUN/adapter/`` (LoRA weights + a classifier's head) for ``scratchllm lora merge``."""
    from scratchllm.config import to_dict

    cfg = model.config
    extra = ("out_head",) if arch == "gpt-classifier" else ()
    adapter = AdapterInfo(
        lora=cfg.lora_config(),
        base_fingerprint=info["base_fingerprint"],
        base_model=info.get("base_model"),
        architecture=arch,
        model=to_dict(cfg),
        extra_params=extra,
        notes={"finetune": info},
    )
    return save_adapter(model, Path(run_dir) / "adapter", adapter, reuse=Path(run_dir) / "model.safetensors")


def describe_params(trainable: int, total: int) -> str:
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)"


# ----------------------------------------------------------------------------- merging


@dataclasses.dataclass
class MergedModel:
    model: nn.Module  # a plain gpt or a gpt-classifier without adapters
    arch: str
    tokenizer: Any
    extra: dict[str, Any]  # config.json extras for the merged run
    untied: list[str]


def merge_adapter(model_path: str | Path, base: str | Path | None = None) -> MergedModel:
    """Fold a LoRA run's adapters into its weights: the result is an ordinary model.

    * ``model_path`` a LoRA run directory and no ``base``: the run already holds the base weights
      next to the adapters, so it is loaded and merged directly;
    * ``base`` given, or ``model_path`` an adapter directory (``adapter_config.json`` +
      ``adapter.safetensors``, e.g. ``RUN/adapter``): the base is loaded (from ``base`` or the path
      recorded in the adapter), checked against the adapter's fingerprint, and the adapter
      attached and merged.
    """
    from scratchllm.adapters import is_adapter_dir, load_adapter, read_adapter
    from scratchllm.architectures import build_model
    from scratchllm.load import load_model
    from scratchllm.model.finetuned import GPTClassifierConfig, classifier_from_base, plain_config

    path = Path(model_path)
    adapter_dir = (
        path if is_adapter_dir(path) else (path / "adapter" if is_adapter_dir(path / "adapter") else None)
    )
    if base is None and adapter_dir is not path:
        loaded = load_model(path)
        if not get_architecture(loaded.arch).has_lora or not getattr(loaded.model.config, "lora_r", 0):
            raise ScratchLLMError(
                f"{path} is a {loaded.arch!r} model without LoRA adapters; nothing to merge"
            )
        model, tokenizer = loaded.model, loaded.tokenizer
        extra = {k: v for k, v in loaded.config.items() if k == "finetune"}
    else:
        if adapter_dir is None:
            raise ScratchLLMError(
                f"no LoRA adapter in {path} (expected adapter_config.json or a run with adapter/)"
            )
        info, _ = read_adapter(adapter_dir)
        if base is None:
            from scratchllm.runs import find_base

            recorded = {"base_model": info.base_model, **(info.notes.get("finetune") or {})}
            if not recorded.get("base_model"):
                raise ScratchLLMError(
                    f"the adapter in {adapter_dir} does not record its base model; pass --base"
                )
            # Recorded as typed (maybe relative to where training ran): also try beside the adapter.
            base = find_base(recorded, adapter_dir.parent if adapter_dir.name == "adapter" else adapter_dir)
        loaded = load_base(base, kind="classify" if info.architecture == "gpt-classifier" else "instruct")
        tokenizer = loaded.tokenizer
        if info.architecture == "gpt-classifier":
            labels = list(info.model.get("labels") or [])
            if not labels:
                raise ScratchLLMError(f"the adapter in {adapter_dir} has no class labels; it is incomplete")
            model = classifier_from_base(loaded.model, labels)
            load_adapter(model, adapter_dir, exclude=("out_head",))
        else:
            model = loaded.model
            load_adapter(model, adapter_dir)
        extra = dict(info.notes)
    untied = merge_lora(model, untie=True)
    cfg = plain_config(model)
    if untied:
        cfg = dataclasses.replace(cfg, tie_weights=False)
    arch = "gpt-classifier" if isinstance(cfg, GPTClassifierConfig) else "gpt"
    plain = build_model(arch, cfg)
    plain.load_state_dict(model.state_dict())
    plain.eval()
    extra["merged_from"] = str(path)
    return MergedModel(plain, arch, tokenizer, extra, untied)


# ----------------------------------------------------------------------------- the whole job

#: What every fine-tuning run writes next to its checkpoints when it finishes.
METRICS_FILE = "test_metrics.json"


@dataclasses.dataclass
class FinetuneKind:
    """What one kind of fine-tuning (classify, instruct) plugs into :func:`run_finetune`.

    * ``build(base_model, train_cfg) -> (model, arch)`` — a new run: turn the loaded base into the
      model that trains (a new head, LoRA layers...). Called under a seeded RNG.
    * ``make_task(model, tokenizer, info, train_cfg) -> task`` — encode the data for this model
      (``task.train`` is the list of training examples).
    * ``score(model, tokenizer, task, run_dir) -> dict`` — after training: val/test metrics (and
      any result files, such as generated answers).
    * ``check_resume(config_json) -> None`` — refuse to resume a run of another kind or on other data.
    """

    name: str
    build: Any
    make_task: Any
    score: Any
    check_resume: Any
    #: base-model parameter names left out of its fingerprint (a replaced head).
    fingerprint_exclude: tuple[str, ...] = ()


@dataclasses.dataclass
class FinetuneOutcome:
    model: nn.Module
    tokenizer: Any
    arch: str
    task: Any
    trainable: int
    total: int
    metrics: dict[str, Any]
    adapter: Path | None
    train_result: Any


def run_finetune(
    kind: FinetuneKind,
    base: str | Path | None,
    run_dir: str | Path,
    *,
    train_cfg: Any,
    info: dict[str, Any],
    trainable: str,
    last_blocks: int = 1,
    dropout: float | None = None,
    epochs: float | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    echo: Any = None,
    stop_at: int | None = None,
    check_memory: bool = True,
    estimate_time: bool = False,
) -> FinetuneOutcome:
    """The one fine-tuning recipe, for every kind: base model → model → task → the training loop →
    scores, metrics file and LoRA adapter.

    ``info`` is what this kind records in ``config.json["finetune"]`` besides the common entries
    (base model, its fingerprint, what trains). With ``resume`` the model is rebuilt from
    ``run_dir``'s config (the loop then loads the newest checkpoint into it). ``epochs`` sets
    ``max_steps`` from the number of training examples (None keeps ``train_cfg``'s).
    """
    from scratchllm.data.batches import steps_for_epochs
    from scratchllm.io import atomic_write_json
    from scratchllm.model.lora import base_fingerprint
    from scratchllm.train.loop import train
    from scratchllm.weights import state_sha256

    run_dir = Path(run_dir)
    if resume:
        model, tokenizer, arch, info = rebuild_for_resume(run_dir, kind)
        trainable, last_blocks = info["trainable"], info["trainable_blocks"]
    else:
        loaded = load_base(base, kind=kind.name)
        tokenizer = loaded.tokenizer
        if dropout is not None:
            loaded.model.config.dropout = dropout
        fp = base_fingerprint(loaded.model, exclude=kind.fingerprint_exclude)
        base_sha = state_sha256(loaded.model, exclude=kind.fingerprint_exclude)
        # New heads and LoRA's A matrices start random: seed them so a run is repeatable.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(train_cfg.seed)
            model, arch = kind.build(loaded.model, train_cfg)
        del loaded
        info = {
            "task": kind.name,
            "base_model": str(base),
            "base_model_path": os.path.abspath(base),
            "base_fingerprint": fp,
            "base_sha256": base_sha,
            "fingerprint_exclude": list(kind.fingerprint_exclude),
            "trainable": trainable,
            "trainable_blocks": last_blocks,
            # Only what trains is stored when that is a part of the model (LoRA, a head, the last
            # blocks): the run then loads on top of its base, at a few percent of the base's size.
            "stored": "all" if trainable == "all" else "trainable",
            **info,
        }
    trainable_n, total_n = select_trainable(model, trainable, last_blocks=last_blocks)
    store_only = None
    if info.get("stored") == "trainable":
        store_only = {n for n, p in model.named_parameters() if p.requires_grad}
    task = kind.make_task(model, tokenizer, info, train_cfg)
    if epochs is not None:
        steps = steps_for_epochs(len(task.train), epochs, train_cfg.batch_size, train_cfg.grad_accum_steps)
        train_cfg = dataclasses.replace(train_cfg, max_steps=steps)
    result = train(
        model,
        task,
        train_cfg,
        run_dir,
        arch=arch,
        tokenizer=tokenizer,
        resume=resume,
        force=force,
        extra_config={"finetune": info},
        progress=progress,
        echo=echo,
        stop_at=stop_at,
        check_memory=check_memory,
        estimate_time=estimate_time,
        store_only=store_only,
    )
    metrics: dict[str, Any] = {}
    adapter = None
    if result.interrupted is None and is_main_process():
        metrics = kind.score(model, tokenizer, task, run_dir)
        atomic_write_json(run_dir / METRICS_FILE, {"step": result.step, **metrics})
        if getattr(model.config, "lora_r", 0):
            adapter = write_adapter(model, run_dir, arch=arch, info=info)
    return FinetuneOutcome(model, tokenizer, arch, task, trainable_n, total_n, metrics, adapter, result)


def rebuild_for_resume(run_dir: Path, kind: FinetuneKind) -> tuple[nn.Module, Any, str, dict[str, Any]]:
    """The fine-tuned model as the interrupted run built it (structure only; the loop loads the
    weights), its tokenizer, architecture and ``finetune`` record."""
    from scratchllm.architectures import build_model, config_from_dict
    from scratchllm.io import read_json
    from scratchllm.tokenizer import load_tokenizer

    cfg = read_json(run_dir / "config.json", "run config")
    info = cfg.get("finetune") if isinstance(cfg, dict) else None
    if not isinstance(info, dict) or info.get("task", kind.name) != kind.name:
        raise ScratchLLMError(f"{run_dir} is not a {kind.name} fine-tuning run; cannot --resume it here")
    kind.check_resume(cfg)
    arch = cfg["architecture"]
    model = build_model(arch, config_from_dict(arch, cfg["model"]))
    if info.get("stored") == "trainable":  # checkpoints hold only what trains: the base gives the rest
        from scratchllm.load import load_base_model
        from scratchllm.runs import attach_base

        attach_base(model, cfg, run_dir, load_base_model, str(run_dir))
    return model, load_tokenizer(run_dir / "tokenizer.json"), arch, info


def progress_bars(enabled: bool) -> Any:
    """``bar(desc)`` -> a progress wrapper for the scoring loops (see :func:`scratchllm.progress.tracker`)."""
    from scratchllm.progress import tracker

    return tracker(enabled)
