"""Reading token shards back.

``scratchllm prepare`` leaves a directory with ``train.bin``/``val.bin`` (flat arrays of token ids)
and ``meta.json``. :func:`load_shards` opens them as :class:`numpy.memmap` arrays: the operating
system pages in only the parts a batch touches, so a corpus far larger than RAM trains just fine.
The samplers that cut batches out of them are in :mod:`scratchllm.data.batches`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scratchllm.errors import ScratchLLMError

if TYPE_CHECKING:  # pragma: no cover
    from scratchllm.tokenizer.base import Tokenizer

SUPPORTED_FORMAT_VERSIONS = (1,)
_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


# ----------------------------------------------------------------------------- tokenizer identity


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """SHA-256 of the tokenizer's canonical JSON (kind + ``to_dict()``, sorted keys, no spaces).

    Two tokenizers with the same fingerprint map text to the same ids. It does not depend on how
    the tokenizer file was formatted, nor on a cosmetic ``name`` (GPT-2's files record the path
    they were loaded from), so ``prepare`` (which stores it in ``meta.json`` as
    ``tokenizer_sha256``) and the trainer (which checks it) agree for any copy of a tokenizer.
    """
    data = {"kind": tokenizer.kind, **tokenizer.to_dict()}
    data.pop("name", None)
    # The JSON round trip normalises what a file round trip would (int keys become strings, tuples lists).
    data = json.loads(json.dumps(data, ensure_ascii=False))
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- the shards on disk


@dataclass
class Shards:
    """A prepared data directory: ``train``/``val`` token arrays (memory-mapped) and ``meta``."""

    path: Path
    train: np.ndarray
    val: np.ndarray
    meta: dict[str, Any] = field(repr=False)

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.meta.get("tokenizer_file", "tokenizer.json")

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def load_tokenizer(self) -> Tokenizer:
        """The tokenizer the shards were made with (the copy stored beside them), checked against
        the fingerprint ``meta.json`` recorded: a replaced ``tokenizer.json`` is an error."""
        from scratchllm.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(self.tokenizer_path)
        expected = self.meta.get("tokenizer_sha256")
        if expected and tokenizer_fingerprint(tokenizer) != expected:
            raise ScratchLLMError(
                f"{self.tokenizer_path} is not the tokenizer these shards were made with (meta.json "
                f"records sha256 {str(expected)[:12]}); restore it or re-run 'scratchllm prepare'"
            )
        return tokenizer

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Raise a clear error when ``tokenizer`` is not the one these shards were made with."""
        theirs = self.meta.get("tokenizer_sha256")
        ours = tokenizer_fingerprint(tokenizer)
        if theirs != ours:
            raise ScratchLLMError(
                f"the data in {self.path} was prepared with a different tokenizer "
                f"({self.meta.get('tokenizer_kind')}, vocab {self.meta.get('vocab_size')}, sha256 "
                f"{str(theirs)[:12]}) than the one given ({tokenizer.kind}, vocab {tokenizer.vocab_size}, "
                f"sha256 {ours[:12]}); use {self.tokenizer_path} "
                "or re-run 'scratchllm prepare' with your tokenizer"
            )


def load_shards(path: str | Path) -> Shards:
    """Open a directory written by ``scratchllm prepare``; checks its files against ``meta.json``."""
    from scratchllm.io import read_json

    path = Path(path)
    if not path.is_dir():
        raise ScratchLLMError(
            f"data directory not found: {path}; create it with 'scratchllm prepare --out {path}'"
        )
    if not (path / "meta.json").is_file():
        if (path / "train.bin").exists():
            raise ScratchLLMError(
                f"{path} has no meta.json (an interrupted 'scratchllm prepare'?); run it again with --force"
            )
        raise ScratchLLMError(
            f"{path} is not a prepared data directory (no meta.json); create one with 'scratchllm prepare'"
        )
    meta = read_json(path / "meta.json", "data metadata")
    if not isinstance(meta, dict) or meta.get("format_version") not in SUPPORTED_FORMAT_VERSIONS:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise ScratchLLMError(
            f"{path / 'meta.json'} has format version {version!r}; this scratchllm reads "
            f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))} - re-run 'scratchllm prepare'"
        )
    dtype = _DTYPES.get(meta.get("dtype"))
    if dtype is None:
        raise ScratchLLMError(f"{path / 'meta.json'}: unknown dtype {meta.get('dtype')!r}")
    arrays = {}
    for split in ("train", "val"):
        file = path / f"{split}.bin"
        n = int(meta.get(f"{split}_tokens", -1))
        if not file.is_file():
            raise ScratchLLMError(f"{file} is missing; re-run 'scratchllm prepare'")
        expected = n * np.dtype(dtype).itemsize
        if file.stat().st_size != expected:
            raise ScratchLLMError(
                f"{file} has {file.stat().st_size} bytes but meta.json promises {n} {meta['dtype']} tokens "
                f"({expected} bytes); the file is truncated or was modified - re-run 'scratchllm prepare'"
            )
        # mmap cannot map an empty file; an empty split is an empty array.
        arrays[split] = np.memmap(file, dtype=dtype, mode="r") if n else np.zeros(0, dtype=dtype)
        _check_ids(arrays[split], int(meta.get("vocab_size", 0)), file)
    return Shards(path=path, train=arrays["train"], val=arrays["val"], meta=meta)


def _check_ids(tokens: np.ndarray, vocab_size: int, file: Path) -> None:
    """Every id must index the vocabulary, or the embedding lookup would fail mid-training.

    One pass over the memory map (about a second per GB), done once when the shards are opened.
    """
    if not len(tokens) or vocab_size < 1:
        return
    top = int(tokens.max())
    if top >= vocab_size:
        raise ScratchLLMError(
            f"{file} holds token id {top} but meta.json says the vocabulary has {vocab_size} ids; "
            "the file does not belong to this data directory - re-run 'scratchllm prepare'"
        )
