"""Text normalisation: one spelling for the same text, before anything is counted or compared.

Web and book text arrives with the same words written several ways: ``é`` as one code point or as
``e`` plus a combining accent, stray control characters from old encodings, tabs and runs of
spaces from HTML layout, ``\\r\\n`` line ends. A model wastes capacity on such noise, and
exact-duplicate detection would miss copies that differ only in it. Each step can be switched off:

* ``nfc`` — Unicode NFC (canonical composition): ``"e\\u0301"`` becomes ``"é"``. NFC never changes
  how text looks, only how it is stored (unlike NFKC, which would fold ``"ﬁ"`` into ``"fi"``).
* ``controls`` — drop C0/C1 control characters other than newline and tab (``\\x00``, ``\\x1b``,
  ``\\x85`` ...), the byte-order mark and zero-width spaces (U+FEFF, U+200B); ``\\r\\n`` and ``\\r``
  become ``\\n``.
* ``whitespace`` — inside a line, every run of spaces, tabs and other Unicode whitespace
  (U+00A0, U+3000, U+2028, ...) becomes one space; spaces at line starts and ends are dropped;
  more than one blank line in a row becomes one; leading and trailing blank lines go.

:func:`normalize` applies them in that order. Boilerplate lines (navigation, cookie notices,
licence footers repeated across many documents) are a corpus-level property and are handled by
:class:`BoilerplateCounter` with :func:`drop_lines`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

NORMALIZE_STEPS = ("nfc", "controls", "whitespace")

# C0 and C1 controls except \t and \n, plus BOM / zero-width space: deleted by str.translate.
_CONTROLS = {c: None for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)]}
_CONTROLS.update({0xFEFF: None, 0x200B: None})
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class NormalizeConfig:
    """Which normalisation steps run (all by default)."""

    nfc: bool = True
    controls: bool = True
    whitespace: bool = True

    @classmethod
    def from_steps(cls, steps: Iterable[str]) -> NormalizeConfig:
        steps = set(steps)
        return cls(**{name: name in steps for name in NORMALIZE_STEPS})

    def steps(self) -> list[str]:
        return [name for name in NORMALIZE_STEPS if getattr(self, name)]


def normalize(text: str, config: NormalizeConfig = NormalizeConfig()) -> str:
    """``text`` with the configured normalisation steps applied (see the module docstring)."""
    if config.nfc and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    if config.controls:
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = text.translate(_CONTROLS)
    if config.whitespace:
        # str.split() splits on every run of Unicode whitespace and drops it at both ends: four
        # times faster than a regular expression over the whole text.
        text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
        if "\n\n\n" in text:
            text = _BLANK_LINES.sub("\n\n", text)
        text = text.strip("\n")
    return text


def line_key(line: str) -> int:
    """The hash boilerplate detection uses for a line (its text with surrounding spaces removed)."""
    from scratchllm.data.hashing import stable_hash64

    return stable_hash64(line.strip())


def document_line_keys(text: str) -> set[int]:
    """The distinct non-empty lines of a document, as :func:`line_key` hashes."""
    return {line_key(line) for line in text.split("\n") if line.strip()}


class BoilerplateCounter:
    """Finds lines that occur in many documents, in bounded memory (the Misra–Gries algorithm).

    Counting every distinct line of a large corpus exactly would need memory proportional to the
    corpus. Misra–Gries keeps at most ``capacity`` counters: a line already counted is incremented;
    a new one takes a free counter; when none is free, *every* counter is decremented and the ones
    that reach zero are freed. Any line that occurs in more than ``N / capacity`` of ``N`` documents
    is guaranteed to survive, and its count is at most ``N / capacity`` too low — fine for finding
    lines repeated in hundreds of documents. The result depends only on the order of documents,
    so it is deterministic.
    """

    def __init__(self, capacity: int = 1 << 16) -> None:
        self.capacity = capacity
        self.counts: dict[int, int] = {}
        self.documents = 0
        self.decrements = 0  # total amount subtracted from every counter (the error bound)

    def add_document(self, keys: Iterable[int]) -> None:
        self.documents += 1
        counts = self.counts
        for key in keys:
            if key in counts:
                counts[key] += 1
            elif len(counts) < self.capacity:
                counts[key] = 1
            else:
                self.decrements += 1
                self.counts = counts = {k: c - 1 for k, c in counts.items() if c > 1}

    def frequent(self, min_documents: int, min_fraction: float = 0.0) -> set[int]:
        """Lines counted in at least ``max(min_documents, min_fraction * documents)`` documents."""
        threshold = max(min_documents, min_fraction * self.documents)
        return {k for k, c in self.counts.items() if c >= threshold}


def drop_lines(text: str, keys: set[int]) -> tuple[str, int]:
    """``text`` without the lines whose :func:`line_key` is in ``keys``; also how many were dropped."""
    if not keys:
        return text, 0
    kept, dropped = [], 0
    for line in text.split("\n"):
        if line.strip() and line_key(line) in keys:
            dropped += 1
        else:
            kept.append(line)
    if not dropped:
        return text, 0
    return _BLANK_LINES.sub("\n\n", "\n".join(kept)).strip(), dropped
