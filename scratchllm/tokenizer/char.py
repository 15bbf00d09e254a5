"""Character-level tokenizer: one id per distinct character of the training text.

The simplest tokenizer there is, and the one nanoGPT's Shakespeare example starts from. Its
vocabulary is tiny (65 symbols for tinyshakespeare), so sequences are long and the model must
learn spelling itself — which is exactly why subword tokenizers such as BPE were invented.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.base import EOT, Tokenizer, split_on_specials


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
        """The vocabulary is simply the set of characters in ``text``."""
        if not text:
            raise ScratchLLMError("cannot build a char tokenizer from empty text")
        specials = list(special_tokens)
        for s in specials:
            text = text.replace(s, "")
        return cls(set(text), specials)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.special_tokens)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        # Split out special tokens first so "<|endoftext|>" becomes one id, not 13 characters.
        for piece, is_special in split_on_specials(text, self.special_tokens):
            if is_special:
                ids.append(self.special_tokens[piece])
                continue
            try:
                ids.extend(map(self.stoi.__getitem__, piece))  # C-speed lookups
            except KeyError:
                pos, ch = next((k, c) for k, c in enumerate(piece) if c not in self.stoi)
                raise ScratchLLMError(
                    f"character {ch!r} (U+{ord(ch):04X}, at position {pos}) is not in this char "
                    f"tokenizer's vocabulary of {len(self.chars)} characters"
                ) from None
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        self.check_ids(ids)
        return "".join(self.itos[int(i)] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"chars": "".join(self.chars), "special_tokens": self.special_tokens}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        specials = sorted(data.get("special_tokens", {}).items(), key=lambda kv: kv[1])
        return cls(data["chars"], [s for s, _ in specials])
