"""``load_model(path)``: one function that loads a model from anywhere a model can live.

* a scratchllm run directory, a checkpoint directory, or a ``.safetensors`` file with its
  ``config.json`` (:func:`scratchllm.runs.load_run`);
* a Hugging Face GPT-2 directory (``config.json`` with ``model_type``), through the converter
  (:func:`scratchllm.convert.hf_gpt2.load_hf_gpt2`).

It sits above both, so neither the run loader nor the converter knows about the other, and
nothing here imports the training machinery: ``generate``, ``eval``, ``serve``, ``explain``… load
models without it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from scratchllm.convert.hf_gpt2 import load_hf_gpt2
from scratchllm.errors import ScratchLLMError
from scratchllm.runs import CONFIG_FILE, MODEL_FILE, LoadedModel, load_run

__all__ = ["LoadedModel", "is_hf_dir", "load_base_model", "load_model"]


def is_hf_dir(path: str | os.PathLike) -> bool:
    """True for a Hugging Face model directory: a ``config.json`` with ``model_type`` (ours say
    ``architecture`` instead)."""
    try:
        cfg = json.loads((Path(path) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and "model_type" in cfg and "architecture" not in cfg


def load_model(path: str | os.PathLike, device: str = "cpu") -> LoadedModel:
    """Load a model for inference (eval mode, on ``device``) from any path above.

    ``LoadedModel.source`` says which kind of input was found.
    """
    path = Path(path)
    if not path.exists():
        raise ScratchLLMError(
            f"model not found: {path} (give a run directory, a checkpoint or a .safetensors file)"
        )
    if path.is_file() and path.name == MODEL_FILE and is_hf_dir(path.parent):
        path = path.parent  # the weights file of a Hugging Face directory: load the directory
    if path.is_dir() and is_hf_dir(path):
        return load_hf_gpt2(path, device)
    return load_run(path, device, base_loader=lambda base: load_base_model(base, device))


def load_base_model(path: str | os.PathLike, device: str = "cpu") -> LoadedModel:
    """A model as a fine-tune starts from it: loaded from any path, its LoRA adapters (if any)
    merged into plain weights — so a LoRA run can itself be a base, and a run stored on top of
    a LoRA base finds the same weights it trained on."""
    from scratchllm.architectures import get_architecture
    from scratchllm.model.lora import merge_lora

    loaded = load_model(path, device)
    if get_architecture(loaded.arch).has_lora and getattr(loaded.model.config, "lora_r", 0):
        merge_lora(loaded.model, untie=True)
    return loaded
