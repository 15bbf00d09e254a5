"""Tokenizers: char, word, byte-level BPE (trained here) and GPT-2's published BPE.

Use :func:`load_tokenizer` to read any of them back: it accepts a tokenizer JSON file written by
``Tokenizer.save`` (or ``scratchllm tokenizer train``), a run directory holding
``tokenizer.json``, or a directory with GPT-2's ``encoder.json`` + ``vocab.bpe`` or Hugging
Face's ``vocab.json`` + ``merges.txt``.
"""

from __future__ import annotations

from pathlib import Path

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.base import EOT, Tokenizer
from scratchllm.tokenizer.char import CharTokenizer

__all__ = ["EOT", "CharTokenizer", "Tokenizer", "load_tokenizer", "tokenizer_classes"]


def tokenizer_classes() -> dict[str, type[Tokenizer]]:
    """kind → class, for every tokenizer that can be saved to and loaded from JSON."""
    classes: dict[str, type[Tokenizer]] = {"char": CharTokenizer}
    try:  # the other kinds register themselves here as their modules land
        from scratchllm.tokenizer.word import WordTokenizer

        classes["word"] = WordTokenizer
    except ImportError:  # pragma: no cover
        pass
    try:
        from scratchllm.tokenizer.bpe import BPETokenizer

        classes["bpe"] = BPETokenizer
    except ImportError:  # pragma: no cover
        pass
    return classes


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer from a JSON file or a directory (see the module docstring)."""
    import json

    path = Path(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file() and _is_ours(path / "tokenizer.json"):
            return load_tokenizer(path / "tokenizer.json")
        from scratchllm.tokenizer import gpt2

        return gpt2.load_gpt2_dir(path)
    if not path.is_file():
        raise ScratchLLMError(f"tokenizer not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ScratchLLMError(f"{path} is not a tokenizer JSON file ({err})") from None
    kind = data.get("kind") if isinstance(data, dict) else None
    classes = tokenizer_classes()
    if kind not in classes:
        raise ScratchLLMError(
            f"{path} is not a scratchllm tokenizer file (kind {kind!r}; expected one of {', '.join(classes)})"
        )
    try:
        return classes[kind].from_dict(data)
    except (KeyError, TypeError, ValueError) as err:
        raise ScratchLLMError(f"tokenizer file {path} is malformed ({type(err).__name__}: {err})") from None


def _is_ours(path: Path) -> bool:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "kind" in data and "version" in data
