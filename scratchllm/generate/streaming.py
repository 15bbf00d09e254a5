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
    * With stop strings, the last ``len(longest stop) - 1`` characters are held back until it is
      certain they do not begin a stop string; once one appears, the text before it is released and
      ``stopped`` becomes True.
    """

    def __init__(
        self, tokenizer: Tokenizer, prompt_ids: Sequence[int] = (), stop: Sequence[str] = ()
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt = list(prompt_ids)
        self.prefix = tokenizer.decode(self.prompt) if self.prompt else ""
        self.stop = [s for s in stop if s]
        self.holdback = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""  # everything generated so far (decoded), cut at a stop string
        self.shown = 0  # characters of `text` already released
        self.stopped = False

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
        safe = len(text) if self.stopped else max(self.shown, len(text) - self.holdback)
        return self._release(safe)

    def finish(self) -> str:
        """The text still held back (call once generation has ended).

        Bytes that never completed a character now count as text (U+FFFD), so a stop string may be
        found only here: check ``stopped`` after calling it.
        """
        if not self.stopped and self.ids:
            self.text, self.stopped = truncate_at_stop(self._decode(), self.stop)
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        piece = self.text[self.shown : upto]
        self.shown = max(self.shown, upto)
        return piece
