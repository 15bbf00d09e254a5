"""Seeded noise for robustness tests: how much worse does a model get when its input is messy?

A model that scores well on clean held-out text can still fall apart on what users really type:
typos, SHOUTING, stray spaces, a message cut short. ``scratchllm eval --perturb`` scores the same
examples twice — clean and perturbed — and reports the drop. Each perturbation below is a pure
function ``f(text, rate, rng, alphabet) -> text``; a *spec* such as
``typos=0.05,case=0.1,whitespace=0.1,truncate=0.2`` applies several, in the order written.

Character noise

* ``typos=R`` — each letter, with probability ``R``, suffers one typing slip, chosen uniformly:
  *substitution* by a neighbouring key on a QWERTY keyboard, *insertion* of a neighbouring key
  after it, *deletion*, or *transposition* with the next letter (when that is a letter too).
* ``case=R`` — each cased letter flips case (``a`` ↔ ``A``) with probability ``R``.
* ``whitespace=R`` — each space, with probability ``R``, is deleted (two words run together) or
  doubled (equal odds).

Word ("token") noise — words are the runs of non-space characters

* ``truncate=R`` — keep only the first ``ceil((1 - R) * words)`` words (at least one): the text
  is cut short. Deterministic: no randomness involved.
* ``drop=R`` — each word is deleted with probability ``R`` (at least one word stays).
* ``swap=R`` — walking left to right, each adjacent pair of words is swapped with probability
  ``R`` (a swapped word is not swapped again).

  (``drop`` and ``swap`` re-join the words with single spaces.)

**Seeds.** :func:`perturb_texts` gives text number ``i`` its own generator,
``random.Random(f"{seed}/{i}")``, so a text's noise does not depend on which other texts are
scored, and the same seed gives the same noisy texts on every machine and Python version.

**Alphabets.** A character-level tokenizer cannot encode a character it never saw. Pass its
characters as ``alphabet`` and no perturbation produces a character outside it: a typo picks
its replacement among the keyboard neighbours that are in the alphabet (skipping the edit when
none is), and a case flip happens only when the other case exists.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Collection, Sequence

from scratchllm.errors import ScratchLLMError

#: Neighbouring keys on a US QWERTY keyboard (same row and the rows above and below).
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS: dict[str, str] = {}
for _r, _row in enumerate(_ROWS):
    for _c, _key in enumerate(_row):
        near = []
        for dr in (-1, 0, 1):
            if 0 <= _r + dr < len(_ROWS):
                other = _ROWS[_r + dr]
                near += [other[j] for j in range(_c - 1, _c + 2) if 0 <= j < len(other) and other[j] != _key]
        _NEIGHBOURS[_key] = "".join(near)

_WORD = re.compile(r"\S+")


def _near_keys(ch: str, alphabet: Collection[str] | None) -> list[str]:
    """Keyboard neighbours of ``ch`` in the same case as ``ch``, restricted to ``alphabet``."""
    keys = _NEIGHBOURS.get(ch.lower(), "")
    keys = keys.upper() if ch.isupper() else keys
    return [k for k in keys if alphabet is None or k in alphabet]


def typos(text: str, rate: float, rng: random.Random, alphabet: Collection[str] | None = None) -> str:
    """Typing slips on letters: substitute / insert a neighbouring key, delete, or transpose."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if not ch.isalpha() or rng.random() >= rate:
            out.append(ch)
            i += 1
            continue
        edit = rng.randrange(4)
        near = _near_keys(ch, alphabet)
        if edit == 0 and near:  # substitution
            out.append(rng.choice(near))
        elif edit == 1 and near:  # insertion after the letter
            out += [ch, rng.choice(near)]
        elif edit == 2:  # deletion
            pass
        elif edit == 3 and i + 1 < len(text) and text[i + 1].isalpha():  # transposition
            out += [text[i + 1], ch]
            i += 1
        else:  # the chosen edit is impossible here (no usable neighbour / nothing to swap with)
            out.append(ch)
        i += 1
    return "".join(out)


def case(text: str, rate: float, rng: random.Random, alphabet: Collection[str] | None = None) -> str:
    """Flip the case of each cased letter with probability ``rate``."""
    out = []
    for ch in text:
        flipped = ch.swapcase()
        if flipped != ch and len(flipped) == 1 and (alphabet is None or flipped in alphabet):
            out.append(flipped if rng.random() < rate else ch)
        else:
            out.append(ch)
    return "".join(out)


def whitespace(text: str, rate: float, rng: random.Random, alphabet: Collection[str] | None = None) -> str:
    """Delete or double each space with probability ``rate`` (half the time each)."""
    out = []
    for ch in text:
        if ch == " " and rng.random() < rate:
            out.append("" if rng.random() < 0.5 else "  ")
        else:
            out.append(ch)
    result = "".join(out)
    return result if result.strip() else text


def truncate(text: str, rate: float, rng: random.Random, alphabet: Collection[str] | None = None) -> str:
    """Keep the first ``ceil((1 - rate) * words)`` words (at least one), cutting the text after the
    last kept word."""
    spans = [m.span() for m in _WORD.finditer(text)]
    if not spans:
        return text
    keep = max(1, math.ceil((1 - rate) * len(spans) - 1e-9))
    return text[: spans[keep - 1][1]]


def drop(text: str, rate: float, rng: random.Random, alphabet: Collection[str] | None = None) -> str:
    """Delete each word with probability ``rate`` (with the space after it); at least one stays."""
    words = _WORD.findall(text)
    if len(words) < 2:
        return text
    kept = [w for w in words if rng.random() >= rate]
    return " ".join(kept) if kept else words[0]


def swap(text: str, rate: float, rng: random.Random, alphabet: Collection[str] | None = None) -> str:
    """Swap adjacent words with probability ``rate`` per pair, left to right, each word at most once."""
    words = _WORD.findall(text)
    i = 0
    while i + 1 < len(words):
        if rng.random() < rate:
            words[i], words[i + 1] = words[i + 1], words[i]
            i += 2
        else:
            i += 1
    return " ".join(words) if words else text


Perturbation = Callable[[str, float, random.Random, Collection[str] | None], str]

#: Every perturbation ``--perturb`` knows, by name.
PERTURBATIONS: dict[str, Perturbation] = {
    "typos": typos,
    "case": case,
    "whitespace": whitespace,
    "truncate": truncate,
    "drop": drop,
    "swap": swap,
}


def parse_perturb(spec: str) -> list[tuple[str, float]]:
    """``"typos=0.05,case=0.1"`` → ``[("typos", 0.05), ("case", 0.1)]`` (rates in [0, 1])."""
    out: list[tuple[str, float]] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if name not in PERTURBATIONS:
            raise ScratchLLMError(
                f"unknown perturbation {name!r} in --perturb {spec!r}; choose from {', '.join(PERTURBATIONS)}"
            )
        try:
            rate = float(value) if sep else math.nan
        except ValueError:
            rate = math.nan
        if not 0.0 <= rate <= 1.0:
            raise ScratchLLMError(
                f"--perturb {name} needs a rate between 0 and 1 (like {name}=0.1); got {part!r}"
            )
        out.append((name, rate))
    if not out:
        raise ScratchLLMError(f"--perturb {spec!r} names no perturbation; e.g. typos=0.05,case=0.1")
    return out


def format_perturb(spec: Sequence[tuple[str, float]]) -> str:
    """The canonical text of a parsed spec (what results record)."""
    return ",".join(f"{name}={rate:g}" for name, rate in spec)


def perturb_text(
    text: str,
    spec: Sequence[tuple[str, float]],
    rng: random.Random,
    alphabet: Collection[str] | None = None,
) -> str:
    """Apply each ``(name, rate)`` of ``spec`` in order, drawing from ``rng``."""
    for name, rate in spec:
        text = PERTURBATIONS[name](text, rate, rng, alphabet)
    return text


def perturb_texts(
    texts: Sequence[str],
    spec: Sequence[tuple[str, float]],
    *,
    seed: int | str = 0,
    alphabet: Collection[str] | None = None,
) -> list[str]:
    """Perturb every text; text ``i`` draws from ``random.Random(f"{seed}/{i}")``."""
    return [perturb_text(t, spec, random.Random(f"{seed}/{i}"), alphabet) for i, t in enumerate(texts)]
