"""The one small interface every tokenizer implements.

A tokenizer turns text into a list of integer ids and back. Whatever the algorithm (characters,
words, byte-level BPE, GPT-2's published merges) it offers the same surface:

* ``encode(text) -> list[int]`` and ``decode(ids) -> str``;
* ``special_tokens`` strings in text are **ordinary text** unless the caller allows them:
  ``encode("a<|endoftext|>b")`` gives the tokens of those characters, never the end-of-text id.
  Text from users and corpora is just text; special ids come from the code that inserts them
  (``prepare`` appends ``eot_id`` between documents, a chat template inserts its markers).
  ``encode(text, allowed_special="all")`` (or a set of names) restores the old reading for code
  and users who want it, tiktoken's model (``encode`` / ``encode_ordinary`` / ``allowed_special``);
* ``vocab_size`` — ids run from 0 to ``vocab_size - 1``;
* ``special_tokens`` — a dict such as ``{"<|endoftext|>": 50256}``, and ``eot_id`` for the
  end-of-text token that separates documents;
* ``save(path)`` / ``Tokenizer.load(path)`` to and from **one JSON file** whose ``"kind"`` field
  says which class reads it back (:func:`scratchllm.tokenizer.load_tokenizer` dispatches on it).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeAlias

from scratchllm.errors import ScratchLLMError

EOT = "<|endoftext|>"
FORMAT_VERSION = 1

#: Which special-token strings ``encode`` reads as special tokens: ``"all"`` or a collection of
#: names (default: none - every special-token string in the text is ordinary text).
AllowedSpecial: TypeAlias = Literal["all"] | Collection[str]


def split_on_specials(text: str, specials: Iterable[str]) -> list[tuple[str, bool]]:
    """Cut ``text`` around special-token strings: ``[(piece, is_special), ...]``, empty pieces dropped.

    Longer specials are tried first, so one that contains another wins. The one splitter: every
    encoder that has been *allowed* some specials uses it to find them (``encode(text,
    allowed_special=...)``), and the literal-occurrence counts of ``prepare`` come from it too.
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
    def encode_ordinary(self, text: str) -> list[int]:
        """Text → token ids, every character ordinary text (``"<|endoftext|>"`` is 13 characters,
        or the pieces a subword tokenizer makes of them)."""

    def encode(self, text: str, *, allowed_special: AllowedSpecial = ()) -> list[int]:
        """Text → token ids. Special-token strings are ordinary text unless ``allowed_special``
        names them (``"all"``: every special of this tokenizer); allowed ones become their ids.

        Only code that inserts markers on purpose allows them (fill-mask reads the ``[MASK]`` the
        user writes; ``--allow-special`` on the CLI verbs). Document boundaries and chat-template
        markers are added as ids by the code that builds the sequence (:meth:`encode_parts`).
        """
        allowed = self.allowed_specials(allowed_special)
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for piece, is_special in split_on_specials(text, allowed):
            if is_special:
                ids.append(self.special_tokens[piece])
            else:
                ids.extend(self.encode_ordinary(piece))
        return ids

    def allowed_specials(self, allowed_special: AllowedSpecial) -> list[str]:
        """The names of this tokenizer's special tokens that ``allowed_special`` allows."""
        if isinstance(allowed_special, str):
            if allowed_special != "all":
                raise ValueError(
                    f'allowed_special must be "all" or a collection of names, not {allowed_special!r}'
                )
            return list(self.special_tokens)
        return [s for s in dict.fromkeys(allowed_special) if s in self.special_tokens]

    def encode_parts(self, parts: Iterable[tuple[str, bool]]) -> list[int]:
        """Encode ``(text, trusted)`` parts into one id list: how a template meets user text.

        Special-token strings in *trusted* parts (a chat template's own text, such as ``"<|user|>"``
        when the tokenizer has that special) become special ids; every character of the untrusted
        parts (the user's message, a record's instruction) is ordinary text, so a message holding
        ``"<|endoftext|>"`` or a template marker cannot end its turn and forge another. Ordinary
        text is encoded in one run between special ids, so the ids equal those of encoding the
        whole text at once (as training did).
        """
        ids: list[int] = []
        run: list[str] = []

        def flush() -> None:
            if run:
                ids.extend(self.encode_ordinary("".join(run)))
                run.clear()

        for text, trusted in parts:
            if not trusted:
                run.append(text)
                continue
            for piece, is_special in split_on_specials(text, self.special_tokens):
                if is_special:
                    flush()
                    ids.append(self.special_tokens[piece])
                else:
                    run.append(piece)
        flush()
        return ids

    def count_specials(self, text: str) -> dict[str, int]:
        """How often each special-token string occurs literally in ``text`` (those that do).

        Counted as :func:`split_on_specials` finds them (longest first, no overlaps) - the places
        ``encode(text, allowed_special="all")`` would turn into special ids.
        """
        counts: dict[str, int] = {}
        if any(s in text for s in self.special_tokens):
            for piece, is_special in split_on_specials(text, self.special_tokens):
                if is_special:
                    counts[piece] = counts.get(piece, 0) + 1
        return counts

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

    def encode_words(self, text: str, *, allowed_special: AllowedSpecial = ()) -> list[list[int]]:
        """:meth:`encode` grouped by word: one list of ids per word, concatenating to
        ``encode(text, allowed_special=allowed_special)``.

        BERT's *whole-word masking* hides every token of a chosen word at once (hiding ``"ing"``
        alone is too easy a guess when ``" walk"`` is visible). Here a word is a run of non-space
        characters together with the white space before it, and a special token is a word of its
        own. Subword tokenizers whose pieces follow other rules override this (byte-level BPE: one
        word per pre-token, the ``" the"``, ``"'s"``, ``","`` its regex splits off).
        """
        words: list[list[int]] = []
        for piece, is_special in split_on_specials(text, self.allowed_specials(allowed_special)):
            if is_special:
                words.append([self.special_tokens[piece]])
            else:
                words.extend(
                    ids for ids in map(self.encode_ordinary, re.findall(r"\s*\S+|\s+", piece)) if ids
                )
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
