"""From generated token ids to text that is safe to show while it is still being written.

A byte-level tokenizer can end a decode in the middle of a multi-byte character, and a stop string
can arrive split over several tokens. :class:`TextStreamer` releases text only when it is certain
(no half character, no possible start of a stop string); :class:`StopStrings` ends a row once its
text contains a stop string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scratchllm.tokenizer.base import Tokenizer

#: ``stop(generated_ids_of_one_row) -> True`` to end that row (see :class:`StopStrings`).
StopFn = Callable[[list[int]], bool]


def settled(text: str) -> str:
    """``text`` without a trailing run of U+FFFD: bytes the next tokens may still complete.

    A byte-level tokenizer can end a decode in the middle of a multi-byte character, which decodes
    as the replacement character until its last byte arrives. While more tokens may come, only the
    text before such a run is certain; once generation has ended, the whole decode counts.
    """
    return text.rstrip("\ufffd")


def truncate_at_stop(text: str, strings: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the first occurrence of any stop string; say whether one was found."""
    cut = min((i for i in (text.find(s) for s in strings if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class StopStrings:
    """A ``stop`` callback that ends a row once its generated text contains one of ``strings``.

    It follows the same rule as :class:`TextStreamer`: the row's generated ids are decoded whole
    and the :func:`settled` text is searched. (Decoding only a tail of the ids would start in the
    middle of a character and see a U+FFFD that is not in the text.) A decode per step is cheap next
    to the forward pass that produced the token.
    """

    def __init__(self, tokenizer: Tokenizer, strings: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.strings = [s for s in strings if s]

    def __call__(self, generated: list[int]) -> bool:
        if not self.strings:
            return False
        return truncate_at_stop(settled(self.tokenizer.decode(generated)), self.strings)[1]


class TextStreamer:
    """Turn generated token ids into text pieces that are safe to print as they arrive.

    * A character may span several tokens (byte-level BPE splits UTF-8 bytes): text is released
      only once it decodes without a trailing replacement character.
    * Tokenizers may join tokens in context-dependent ways (a word tokenizer glues punctuation), so
      the whole generation is decoded together with the prompt each time and only the new suffix
      is released.
    * With stop strings, a tail of the text that could be the beginning of a stop string (``"\nUs"``
      while ``"\nUser:"`` is a stop string) is held back until the next tokens decide; once a stop
      string appears, the text before it is released and ``stopped`` becomes True.

    :meth:`take_tokens` says which text each token contributed, aligned with what was released, so
    per-token information (log-probabilities) can travel with the text it belongs to.
    """

    def __init__(
        self, tokenizer: Tokenizer, prompt_ids: Sequence[int] = (), stop: Sequence[str] = ()
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt = list(prompt_ids)
        self.prefix = tokenizer.decode(self.prompt) if self.prompt else ""
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""  # everything generated so far (decoded), cut at a stop string
        self.shown = 0  # characters of `text` already released
        self.stopped = False
        self.finished = False
        self.ends: list[int] = []  # len(text) after each pushed token
        self._taken = 0  # tokens handed out by take_tokens

    def _decode(self) -> str:
        full = self.tokenizer.decode(self.prompt + self.ids)
        return full[len(self.prefix) :] if full.startswith(self.prefix) else self.tokenizer.decode(self.ids)

    def push(self, token: int) -> str:
        """Add one generated token; return the text that can be shown now (maybe empty)."""
        if self.stopped:
            return ""
        self.ids.append(int(token))
        # A character still being spelled out byte by byte is not shown, nor searched, yet.
        text, self.stopped = truncate_at_stop(settled(self._decode()), self.stop)
        self.text = text
        self.ends.append(len(text))
        safe = len(text) if self.stopped else max(self.shown, len(text) - self._open_prefix(text))
        return self._release(safe)

    def _open_prefix(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is a proper beginning of a stop string."""
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:k]):
                    longest = k
                    break
        return longest

    def finish(self) -> str:
        """The text still held back (call once generation has ended).

        Bytes that never completed a character now count as text (U+FFFD), so a stop string may be
        found only here: check ``stopped`` after calling it.
        """
        if not self.stopped and self.ids:
            self.text, self.stopped = truncate_at_stop(self._decode(), self.stop)
        self.finished = True
        return self._release(len(self.text))

    def take_tokens(self) -> list[str]:
        """The text of each token whose text has been released since the last call, in order.

        ``"".join`` of every piece ever taken equals the released text: a token that carries only
        part of a character gets ``""`` (the token completing it carries the character), and text
        cut off by a stop string belongs to no token. Tokens are handed out only once the text up
        to their end has been released; after :meth:`finish`, all remaining ones.
        """
        final = len(self.text)
        pieces = []
        while self._taken < len(self.ends):
            i = self._taken
            end = final if self.finished and i == len(self.ends) - 1 else min(self.ends[i], final)
            if not self.finished and end > self.shown:
                break
            start = min(self.ends[i - 1], final) if i else 0
            pieces.append(self.text[start : max(start, end)])
            self._taken += 1
        return pieces

    def _release(self, upto: int) -> str:
        piece = self.text[self.shown : upto]
        self.shown = max(self.shown, upto)
        return piece
