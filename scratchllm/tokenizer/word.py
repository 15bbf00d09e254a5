"""Word-level tokenizer: the book's first tokenizer, and the reason BPE exists.

The recipe (chapter 2 of *Build a Large Language Model (From Scratch)*):

1. split the text with the regex ``([,.:;?_!"()']|--|\\s)`` — punctuation marks, double dashes
   and whitespace become separators, and the capture group keeps the punctuation as tokens;
2. drop the whitespace pieces and empty strings;
3. give every distinct remaining piece an id (sorted, so the vocabulary is deterministic), then add
   ``<|endoftext|>`` and ``<|unk|>``;
4. to decode, join the words with spaces and remove the space before punctuation.

Why it does not scale — and what byte-level BPE fixes:

* **Unknown words.** Any word not seen in training ("Hello" if the corpus only had "hello",
  every typo, every name, every word of another language) becomes ``<|unk|>``: information is lost
  for good. BPE falls back to smaller pieces, down to single bytes, and never needs ``<|unk|>``.
* **Vocabulary size.** Every inflection ("walk", "walks", "walked") and every number is its own
  entry; real corpora have millions of distinct words, and the embedding matrix grows with them.
  Capping the vocabulary (``vocab_size``) only turns more words into ``<|unk|>``. BPE chooses a
  fixed budget of *frequent* pieces and composes the rest.
* **Lossy round trip, by design.** Whitespace is thrown away (tabs, newlines and double spaces all
  come back as one space) and the punctuation-gluing rule in ``decode`` is a heuristic, so
  ``decode(encode(s))`` generally differs from ``s``. Byte-level BPE round-trips exactly.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.base import EOT, AllowedSpecial, Tokenizer

UNK = "<|unk|>"
SPLIT_RE = re.compile(r'([,.:;?_!"()\']|--|\s)')
# decode: no space before these punctuation marks ("Hello , world ." → "Hello, world.")
_GLUE_RE = re.compile(r'\s+([,.:;?_!"()\'])')


def split_words(text: str) -> list[str]:
    """The book's splitter: words and punctuation, whitespace dropped."""
    return [piece for piece in (p.strip() for p in SPLIT_RE.split(text)) if piece]


class WordTokenizer(Tokenizer):
    """One id per known word or punctuation mark; ``<|unk|>`` for everything else."""

    kind = "word"

    def __init__(self, words: Iterable[str], special_tokens: Iterable[str] = (EOT, UNK)) -> None:
        self.words = sorted(set(words))
        self.stoi = {w: i for i, w in enumerate(self.words)}
        self.special_tokens: dict[str, int] = {}
        for s in list(special_tokens) + [UNK]:  # <|unk|> is always there: encode needs it
            if s not in self.special_tokens and s not in self.stoi:
                self.special_tokens[s] = len(self.words) + len(self.special_tokens)
        self.itos = {i: w for w, i in self.stoi.items()}
        self.itos.update({i: s for s, i in self.special_tokens.items()})

    @classmethod
    def train(
        cls, text: str, vocab_size: int | None = None, special_tokens: Sequence[str] = (EOT, UNK)
    ) -> WordTokenizer:
        """Vocabulary = the distinct words of ``text`` (the most frequent ones if ``vocab_size``).

        The words are those ``encode`` sees (a special-token string in ``text`` is text); a word
        spelled like a special token is never a vocabulary word, so it cannot take the special's
        place and reads as ``<|unk|>``.
        """
        specials = list(dict.fromkeys([*special_tokens, UNK]))
        counts: Counter = Counter(split_words(text))
        for s in specials:
            counts.pop(s, None)
        if not counts:
            raise ScratchLLMError("cannot build a word tokenizer from text without any words")
        words = sorted(counts)
        if vocab_size is not None:
            keep = vocab_size - len(specials)
            if keep < 1:
                raise ScratchLLMError(
                    f"vocab size {vocab_size} leaves no room for words after {len(specials)} special tokens"
                )
            # most frequent first; equal counts in alphabetical order (deterministic)
            words = sorted(counts, key=lambda w: (-counts[w], w))[:keep]
        return cls(words, specials)

    @property
    def vocab_size(self) -> int:
        return len(self.words) + len(self.special_tokens)

    def encode_ordinary(self, text: str) -> list[int]:
        # A special-token string in the text is a word like any other: "<|endoftext|>" is not in
        # the word list (training never counts one), so it reads as <|unk|>, never as the special.
        unk = self.special_tokens[UNK]
        return [self.stoi.get(w, unk) for w in split_words(text)]

    def encode_words(self, text: str, *, allowed_special: AllowedSpecial = ()) -> list[list[int]]:
        """Every token is a word (or a punctuation mark) of its own."""
        return [[i] for i in self.encode(text, allowed_special=allowed_special)]

    def decode(self, ids: Sequence[int]) -> str:
        self.check_ids(ids)
        return _GLUE_RE.sub(r"\1", " ".join(self.itos[int(i)] for i in ids))

    def to_dict(self) -> dict[str, Any]:
        return {"words": self.words, "special_tokens": self.special_tokens}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WordTokenizer:
        specials = sorted(data.get("special_tokens", {}).items(), key=lambda kv: kv[1])
        return cls(data["words"], [s for s, _ in specials])
