"""Character-level tokenizer: one id per distinct character of the training text.

The simplest tokenizer there is, and the one nanoGPT's Shakespeare example starts from. Its
vocabulary is tiny (65 symbols for tinyshakespeare), so sequences are long and the model must
learn spelling itself — which is exactly why subword tokenizers such as BPE were invented.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.base import EOT, Tokenizer


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: Iterable[str], special_tokens: Iterable[str] = (EOT,)) -> None:
        self.chars = sorted(set(chars))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.special_tokens = {}
        for s in special_tokens:
            if s not in self.special_tokens:
                self.special_tokens[s] = len(self.chars) + len(self.special_tokens)
        self.itos = {i: c for c, i in self.stoi.items()}
        self.itos.update({i: s for s, i in self.special_tokens.items()})

    @classmethod
    def train(cls, text: str, special_tokens: Iterable[str] = (EOT,)) -> CharTokenizer:
        """The vocabulary is simply the set of characters in ``text``.

        A special-token string written in ``text`` is text like any other (that is how ``encode``
        reads it), so its characters are part of the vocabulary too.
        """
        if not text:
            raise ScratchLLMError("cannot build a char tokenizer from empty text")
        return cls(set(text), list(special_tokens))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.special_tokens)

    def encode_ordinary(self, text: str) -> list[int]:
        try:
            return list(map(self.stoi.__getitem__, text))  # C-speed lookups
        except KeyError:
            pos, ch = next((k, c) for k, c in enumerate(text) if c not in self.stoi)
            literal = next((s for s in self.special_tokens if ch in s and s in text), None)
            hint = (
                f"; it is part of the text {literal!r}, which is read as ordinary characters unless "
                "special tokens are allowed (--allow-special)"
                if literal
                else ""
            )
            raise ScratchLLMError(
                f"character {ch!r} (U+{ord(ch):04X}, at position {pos}) is not in this char "
                f"tokenizer's vocabulary of {len(self.chars)} characters{hint}"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        self.check_ids(ids)
        return "".join(self.itos[int(i)] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"chars": "".join(self.chars), "special_tokens": self.special_tokens}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        specials = sorted(data.get("special_tokens", {}).items(), key=lambda kv: kv[1])
        return cls(data["chars"], [s for s, _ in specials])
