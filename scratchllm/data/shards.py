"""Reading token shards back, and turning them into batches for training and evaluation.

``scratchllm prepare`` leaves a directory with ``train.bin``/``val.bin`` (flat arrays of token ids)
and ``meta.json``. :func:`load_shards` opens them as :class:`numpy.memmap` arrays: the operating
system pages in only the parts a batch touches, so a corpus far larger than RAM trains just fine.

Two samplers cut ``(x, y)`` batches out of such an array. ``x`` is a window of ``context_length``
tokens and ``y`` the same window shifted one token to the right, so position ``t`` of the model's
output is asked to predict token ``t + 1``:

* :class:`RandomWindowSampler` (training) — windows at random offsets, as nanoGPT does. Random
  offsets make every position of the corpus a possible window start, which is a stronger
  augmentation than fixed, non-overlapping blocks.
* :class:`SequentialWindowSampler` (evaluation) — fixed, evenly spaced windows, so that the
  validation loss of two checkpoints is measured on exactly the same tokens.

**Exact resume.** The random windows of batch number ``k`` are drawn from a fresh generator
seeded with ``(seed, k)``. The sampler's whole state is therefore one counter: saving ``k`` and
restoring it continues with bit-identical batches, with no opaque RNG state to carry around. The
same draw is shared by all DDP ranks and each rank takes its own slice of it (rank ``r`` gets
windows ``r*B ... r*B + B - 1``), so ranks read different windows, and the state saved by rank 0 is
valid for every rank.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scratchllm.errors import ScratchLLMError

if TYPE_CHECKING:  # pragma: no cover
    import torch

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
        """The tokenizer the shards were made with (the copy stored beside them)."""
        from scratchllm.tokenizer import load_tokenizer

        return load_tokenizer(self.tokenizer_path)

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
    return Shards(path=path, train=arrays["train"], val=arrays["val"], meta=meta)


# ----------------------------------------------------------------------------- shared helpers


def check_window(n: int, context_length: int, name: str) -> None:
    """The samplers' one clear error when ``n`` tokens cannot fill a window of ``context_length + 1``."""
    if n < context_length + 1:
        raise ScratchLLMError(
            f"{name} has {n} tokens but one training window needs context_length + 1 = "
            f"{context_length + 1}; use a smaller context_length or more text"
        )


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ScratchLLMError(f"{key} must be a positive integer, got {value!r}")


def _check_rank(rank: int, world_size: int) -> None:
    _check_positive(world_size=world_size)
    if not 0 <= rank < world_size:
        raise ScratchLLMError(f"rank must be in [0, world_size={world_size}), got {rank}")


class _WindowBatcher:
    """Common part of both samplers: cut windows out of ``tokens`` and move them to a device."""

    def __init__(
        self, tokens: Any, batch_size: int, context_length: int, device: Any, pin_memory: bool | None
    ):
        _check_positive(batch_size=batch_size, context_length=context_length)
        self.tokens = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
        if self.tokens.ndim != 1:
            raise ScratchLLMError(f"tokens must be a 1-D array of ids, got shape {self.tokens.shape}")
        self.batch_size = int(batch_size)
        self.context_length = int(context_length)
        self.device = device
        self.pin_memory = pin_memory

    def _to_tensors(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        T = self.context_length
        # Contiguous slices: each window is one sequential read from the memory map.
        windows = np.stack([self.tokens[s : s + T + 1] for s in starts.tolist()])
        x = torch.from_numpy(windows[:, :-1].astype(np.int64))
        y = torch.from_numpy(windows[:, 1:].astype(np.int64))
        if self.device is None:
            return x, y
        device = torch.device(self.device)
        pin = self.pin_memory if self.pin_memory is not None else device.type == "cuda"
        if pin:
            # Page-locked host memory lets the copy run asynchronously while the GPU keeps working.
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)


# ----------------------------------------------------------------------------- training: random windows


class RandomWindowSampler(_WindowBatcher):
    """Endless random ``(x, y)`` batches of shape ``[batch_size, context_length]`` (int64).

    Args:
        tokens: 1-D array of token ids (typically ``load_shards(d).train``).
        seed: the data seed; with ``rank``/``world_size`` it fixes every batch.
        rank, world_size: DDP position; each rank reads its own ``batch_size`` windows of a draw
            of ``world_size * batch_size`` windows.
        device: where batches go (None: CPU tensors). pin_memory: use page-locked memory and a
            non-blocking copy (default: when ``device`` is CUDA).
        name: how errors refer to ``tokens`` (e.g. ``"train.bin"``).
    """

    STATE_KIND = "random_windows"

    def __init__(
        self,
        tokens: Any,
        batch_size: int,
        context_length: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        device: Any = None,
        pin_memory: bool | None = None,
        name: str = "the token array",
    ) -> None:
        super().__init__(tokens, batch_size, context_length, device, pin_memory)
        _check_rank(rank, world_size)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ScratchLLMError(f"seed must be a non-negative integer, got {seed!r}")
        check_window(len(self.tokens), self.context_length, name)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.step = 0  # number of batches drawn so far: the sampler's whole position

    def window_starts(self, step: int) -> np.ndarray:
        """Start offsets of this rank's windows in batch number ``step`` (a pure function)."""
        n_starts = len(self.tokens) - self.context_length  # a window needs T + 1 tokens
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, n_starts, size=self.world_size * self.batch_size)
        return starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``(x, y)``; ``y[:, t] == x[:, t + 1]`` for every ``t`` but the last."""
        starts = self.window_starts(self.step)
        self.step += 1
        return self._to_tensors(starts)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position; the same for every rank."""
        return {
            "kind": self.STATE_KIND,
            "step": self.step,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "context_length": self.context_length,
            "world_size": self.world_size,
            "num_tokens": len(self.tokens),
        }

    def load_state_dict(self, state: dict[str, Any], *, strict: bool = True) -> None:
        """Continue where ``state`` left off.

        With ``strict`` (the default) the settings that decide which windows are drawn must match
        the saved ones, since otherwise resuming would silently read different data; pass
        ``strict=False`` to restore only the position (e.g. after a deliberate world-size change).
        """
        if not isinstance(state, dict) or state.get("kind") != self.STATE_KIND:
            raise ScratchLLMError(f"not a random-window sampler state: {state!r:.200}")
        if strict:
            for key, value in self.state_dict().items():
                if key != "step" and state.get(key) != value:
                    raise ScratchLLMError(
                        f"cannot resume the data sampler exactly: {key} was {state.get(key)!r} when saved "
                        f"and is {value!r} now; use the same setting (or the same data) to resume"
                    )
        step = state.get("step")
        if not isinstance(step, int) or step < 0:
            raise ScratchLLMError(f"sampler state has an invalid step {step!r}")
        self.step = step


# ----------------------------------------------------------------------------- evaluation: fixed windows


class SequentialWindowSampler(_WindowBatcher):
    """Deterministic ``(x, y)`` batches over evenly spaced windows, for evaluation.

    Windows start at ``0, stride, 2*stride, ...`` (``stride`` defaults to ``context_length``:
    non-overlapping windows, so each token is predicted at most once). With DDP, rank ``r`` takes
    windows ``r, r + world_size, ...``. ``drop_last`` drops a final batch smaller than
    ``batch_size``. Iterating gives the same batches every time; ``batches(max_batches)`` stops
    early (an evaluator's ``eval_steps``).
    """

    def __init__(
        self,
        tokens: Any,
        batch_size: int,
        context_length: int,
        *,
        stride: int | None = None,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        device: Any = None,
        pin_memory: bool | None = None,
        name: str = "the token array",
    ) -> None:
        super().__init__(tokens, batch_size, context_length, device, pin_memory)
        _check_rank(rank, world_size)
        self.stride = self.context_length if stride is None else stride
        _check_positive(stride=self.stride)
        n = len(self.tokens)
        check_window(n, self.context_length, name)
        self.starts = np.arange(0, n - self.context_length, self.stride, dtype=np.int64)[rank::world_size]
        self.drop_last = drop_last
        if len(self) == 0:
            raise ScratchLLMError(
                f"{name} holds only {len(self.starts)} windows of {self.context_length + 1} tokens for this "
                f"rank, fewer than batch_size {self.batch_size}; use a smaller batch or drop_last=False"
            )

    @property
    def num_windows(self) -> int:
        return len(self.starts)

    def _num_batches(self, n_windows: int) -> int:
        full, rest = divmod(n_windows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        return self._num_batches(len(self.starts))

    def batches(
        self, max_batches: int | None = None, *, max_windows: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches in order; ``max_windows`` keeps only the first windows (a number that, unlike
        ``max_batches``, means the same tokens whatever the batch size)."""
        starts = self.starts if max_windows is None else self.starts[:max_windows]
        count = self._num_batches(len(starts))
        if max_batches is not None:
            count = min(count, max_batches)
        for b in range(count):
            yield self._to_tensors(starts[b * self.batch_size : (b + 1) * self.batch_size])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()
