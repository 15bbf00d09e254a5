"""The one small interface every tokenizer implements.

A tokenizer turns text into a list of integer ids and back. Whatever the algorithm (characters,
words, byte-level BPE, GPT-2's published merges) it offers the same surface:

* ``encode(text) -> list[int]`` and ``decode(ids) -> str``;
* ``vocab_size`` — ids run from 0 to ``vocab_size - 1``;
* ``special_tokens`` — a dict such as ``{"<|endoftext|>": 50256}``, and ``eot_id`` for the
  end-of-text token that separates documents;
* ``save(path)`` / ``Tokenizer.load(path)`` to and from **one JSON file** whose ``"kind"`` field
  says which class reads it back (:func:`scratchllm.tokenizer.load_tokenizer` dispatches on it).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from scratchllm.errors import ScratchLLMError

EOT = "<|endoftext|>"
FORMAT_VERSION = 1


def split_on_specials(text: str, specials: Iterable[str]) -> list[tuple[str, bool]]:
    """Cut ``text`` around special-token strings: ``[(piece, is_special), ...]``, empty pieces dropped.

    Longer specials are tried first, so one that contains another wins. Every tokenizer uses this
    so that ``"<|endoftext|>"`` in text becomes one special id, not a dozen ordinary tokens.
    """
    alts = sorted(set(specials), key=lambda s: (-len(s), s))
    if not alts:
        return [(text, False)] if text else []
    parts = re.split("(" + "|".join(map(re.escape, alts)) + ")", text)
    return [(part, k % 2 == 1) for k, part in enumerate(parts) if part]


class Tokenizer(ABC):
    """Base class: subclasses set ``kind`` and implement the abstract methods."""

    #: Name stored in the JSON file's ``"kind"`` field.
    kind: ClassVar[str] = ""

    special_tokens: dict[str, int]

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Text → token ids. Special-token strings in ``text`` map to their special ids."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Token ids → text (the exact inverse of :meth:`encode` where the tokenizer allows)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the tokenizer, JSON-serialisable (without ``kind``)."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> Tokenizer:
        """Inverse of :meth:`to_dict`."""

    # ------------------------------------------------------------------ shared behaviour
    @property
    def eot_id(self) -> int:
        """Id of ``<|endoftext|>``, the document separator."""
        try:
            return self.special_tokens[EOT]
        except KeyError:
            raise ScratchLLMError(f"this {self.kind} tokenizer has no {EOT} token") from None

    def encode_words(self, text: str) -> list[list[int]]:
        """:meth:`encode` grouped by word: one list of ids per word, concatenating to ``encode(text)``.

        BERT's *whole-word masking* hides every token of a chosen word at once (hiding ``"ing"``
        alone is too easy a guess when ``" walk"`` is visible). Here a word is a run of non-space
        characters together with the white space before it, and a special token is a word of its
        own. Subword tokenizers whose pieces follow other rules override this (byte-level BPE: one
        word per pre-token, the ``" the"``, ``"'s"``, ``","`` its regex splits off).
        """
        words: list[list[int]] = []
        for piece, is_special in split_on_specials(text, self.special_tokens):
            chunks = [piece] if is_special else re.findall(r"\s*\S+|\s+", piece)
            words.extend(ids for ids in map(self.encode, chunks) if ids)
        return words

    @property
    def space_joins_next_word(self) -> bool:
        """True when a space is part of the token of the word after it (byte-level BPE: ``" the"``).

        Then ``"to [MASK]"`` must give the space to the mask — the word ``" be"`` that fills it
        brings its own — or the model would see a lone ``" "`` token it never met in training.
        """
        return False

    def token_text(self, token_id: int) -> str:
        """How one token reads on its own (for ``tokenizer show``); may be a partial character."""
        return self.decode([token_id])

    def check_ids(self, ids: Sequence[int]) -> None:
        """Raise a clear error when an id is outside ``[0, vocab_size)``."""
        n = self.vocab_size
        if len(ids) == 0:
            return
        lo, hi = min(ids), max(ids)  # two C-speed passes instead of a Python loop per id
        if lo < 0 or hi >= n:
            bad = lo if lo < 0 else hi
            raise ScratchLLMError(f"token id {bad} is outside this tokenizer's vocabulary (0..{n - 1})")

    def save(self, path: str | Path) -> None:
        """Write the tokenizer to one JSON file, atomically."""
        from scratchllm.io import atomic_write_json

        atomic_write_json(path, {"kind": self.kind, "version": FORMAT_VERSION, **self.to_dict()})

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer JSON file written by :meth:`save` (any kind)."""
        from scratchllm.tokenizer import load_tokenizer

        tok = load_tokenizer(path)
        if cls is not Tokenizer and not isinstance(tok, cls):
            raise ScratchLLMError(f"{path} holds a {tok.kind} tokenizer, not a {cls.kind} one")
        return tok

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"
