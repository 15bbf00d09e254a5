"""A text as the model sees it: tokens with ids, and (for byte-level BPE) the merges that made them."""

from __future__ import annotations

from typing import Any

from scratchllm.errors import ScratchLLMError

#: The most characters one request may tokenize, and the most words whose merges are replayed.
MAX_CHARS = 20_000
MAX_REPLAY_WORDS = 64


def piece_label(piece: str | bytes) -> str:
    """A token as a reader can see it: bytes that are not UTF-8 on their own as ``\\xNN``."""
    if isinstance(piece, bytes):
        try:
            return piece.decode("utf-8")
        except UnicodeDecodeError:
            return "".join(chr(b) if b < 128 else f"\\x{b:02x}" for b in piece)
    return piece


def token_pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    """How each token of ``ids`` reads on its own (a byte-level token may be part of a character)."""
    if hasattr(tokenizer, "token_bytes"):
        return [piece_label(tokenizer.token_bytes(i)) for i in ids]
    return [tokenizer.token_text(i) for i in ids]


def encode_text(tokenizer: Any, text: str, *, max_chars: int = MAX_CHARS) -> list[int]:
    """``tokenizer.encode(text)`` with the checks a server needs (type, length, encodable)."""
    if not isinstance(text, str):
        raise ScratchLLMError("text must be a string")
    if len(text) > max_chars:
        raise ScratchLLMError(f"the text has {len(text)} characters; at most {max_chars} are allowed")
    try:
        return tokenizer.encode(text)
    except ScratchLLMError:
        raise
    except (KeyError, ValueError, UnicodeError) as err:
        raise ScratchLLMError(f"the tokenizer cannot encode this text ({err})") from None


def tokenize(
    tokenizer: Any, text: str, *, max_chars: int = MAX_CHARS, replay_words: int = MAX_REPLAY_WORDS
) -> dict[str, Any]:
    """Split ``text`` into tokens; for BPE also replay, word by word, the merges that built them.

    Returns ``{"kind", "vocab_size", "tokens": [{"id", "text"}], "merges": [...] | None}`` where
    each entry of ``merges`` is one pre-token: ``{"word", "special", "steps": [[part, ...], ...]}``
    — the single bytes first, then the parts after each merge (lowest rank first), ending in the
    word's final tokens.
    """
    ids = encode_text(tokenizer, text, max_chars=max_chars)
    out: dict[str, Any] = {
        "kind": getattr(tokenizer, "kind", type(tokenizer).__name__),
        "vocab_size": int(tokenizer.vocab_size),
        "tokens": [{"id": int(i), "text": t} for i, t in zip(ids, token_pieces(tokenizer, ids))],
        "merges": None,
        "merges_truncated": False,
    }
    if hasattr(tokenizer, "pre_tokens") and hasattr(tokenizer, "ranks"):
        from scratchllm.tokenizer.bpe import bpe_encode_piece

        words = []
        for n, (word, special) in enumerate(tokenizer.pre_tokens(text)):
            if n >= replay_words:
                out["merges_truncated"] = True
                break
            steps: list[list[bytes]] = []
            if special:
                steps = [[word.encode("utf-8")]]
            else:
                bpe_encode_piece(word.encode("utf-8"), tokenizer.ranks, trace=steps)
            words.append(
                {
                    "word": word,
                    "special": special,
                    "steps": [[piece_label(p) for p in parts] for parts in steps],
                    "ids": [int(tokenizer.special_tokens[word])]
                    if special
                    else [int(tokenizer.ranks[p]) for p in steps[-1]],
                }
            )
        out["merges"] = words
    return out
