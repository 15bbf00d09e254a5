"""GPT-2's published tokenizer files, read into (and written from) a :class:`BPETokenizer`.

OpenAI released GPT-2's byte-level BPE as two files, and Hugging Face kept the format:

* ``encoder.json`` (HF: ``vocab.json``): token string → id, 50,257 entries;
* ``vocab.bpe`` (HF: ``merges.txt``): one merge per line, ``"Ġt he"``, in the order learned.

The token strings are not raw bytes: GPT-2 maps each of the 256 byte values to a *printable*
Unicode character (so a space is ``Ġ``, a newline ``Ċ``) to keep the files human-editable and
whitespace-safe. :func:`bytes_to_unicode` rebuilds that table; undoing it gives byte strings,
and because GPT-2's ids follow the merge order, id == rank: exactly the ``mergeable_ranks`` that
tiktoken and our :class:`BPETokenizer` use. Ids are identical to tiktoken's ``gpt2`` encoding.
"""

from __future__ import annotations

import json
from pathlib import Path

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.bpe import GPT2_PATTERN, BPETokenizer, bpe_encode_piece


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table.

    Bytes that already print as themselves (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) keep their
    character; the other 68 (control characters, space, DEL, NBSP, soft hyphen) are moved, in
    byte order, to code points 256, 257, ... — so space (0x20) becomes U+0120 ``Ġ``.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    moved = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + moved)
            moved += 1
    return table


def _byte_decoder() -> dict[str, int]:
    return {ch: b for b, ch in bytes_to_unicode().items()}


def tokenizer_from_vocab_merges(
    vocab: dict[str, int], merges: list[tuple[str, str]], source: str, *, name: str = "gpt2"
) -> BPETokenizer:
    """Build a :class:`BPETokenizer` from GPT-2-style ``vocab`` (string → id) and ``merges``.

    Tokens that are neither a single byte nor the result of a merge (``<|endoftext|>``) are
    special tokens. The ids of ordinary tokens become their ranks, which requires ids to follow
    the merge order (true for GPT-2 and for files we write); anything else is rejected.
    """
    decoder = _byte_decoder()
    merged = {a + b for a, b in merges}
    ranks: dict[bytes, int] = {}
    specials: dict[str, int] = {}
    for token, idx in vocab.items():
        if not isinstance(idx, int):
            raise ScratchLLMError(f"{source}: id of {token!r} is not an integer")
        if (len(token) == 1 and token in decoder) or token in merged:
            try:
                ranks[bytes(decoder[ch] for ch in token)] = idx
            except KeyError:
                raise ScratchLLMError(
                    f"{source}: token {token!r} is not in GPT-2's byte-level alphabet; "
                    "only byte-level BPE vocabularies are supported"
                ) from None
        else:
            specials[token] = idx
    if len([t for t in ranks if len(t) == 1]) != 256:
        raise ScratchLLMError(f"{source}: a byte-level BPE vocabulary must contain all 256 byte tokens")
    for k, (a, b) in enumerate(merges):
        ia, ib, iab = vocab.get(a), vocab.get(b), vocab.get(a + b)
        if ia is None or ib is None or iab is None:
            raise ScratchLLMError(
                f"{source}: merge {k + 1} ({a!r} {b!r}) uses a token missing from the vocab"
            )
        if not (ia < iab and ib < iab):
            raise ScratchLLMError(
                f"{source}: token ids do not follow the merge order (merge {k + 1}: {a!r} {b!r}); "
                "ids must equal merge ranks for byte-level BPE"
            )
    return BPETokenizer(ranks, specials, GPT2_PATTERN, name=name)


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for k, line in enumerate(path.read_text(encoding="utf-8").split("\n")):
        if not line or (k == 0 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ScratchLLMError(f"{path}:{k + 1}: expected two tokens separated by a space, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _read_vocab(path: Path) -> dict[str, int]:
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScratchLLMError(f"vocabulary file not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ScratchLLMError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(vocab, dict):
        raise ScratchLLMError(f"{path} should hold a JSON object mapping token strings to ids")
    return vocab


def load_gpt2_files(encoder_json: str | Path, vocab_bpe: str | Path) -> BPETokenizer:
    """GPT-2's ``encoder.json`` + ``vocab.bpe`` (or HF's ``vocab.json`` + ``merges.txt``)."""
    encoder_json, vocab_bpe = Path(encoder_json), Path(vocab_bpe)
    if not vocab_bpe.is_file():
        raise ScratchLLMError(f"merges file not found: {vocab_bpe}")
    return tokenizer_from_vocab_merges(_read_vocab(encoder_json), _read_merges(vocab_bpe), str(encoder_json))


def load_hf_tokenizer_json(path: str | Path) -> BPETokenizer:
    """The BPE model inside a Hugging Face ``tokenizer.json`` (byte-level BPE only)."""
    path = Path(path)
    data = _read_vocab(path)
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ScratchLLMError(
            f"{path} does not hold a BPE model; only byte-level BPE tokenizers are supported"
        )
    vocab = dict(model["vocab"])
    merges: list[tuple[str, str]] = []
    for m in model.get("merges", []):
        pair = m.split(" ") if isinstance(m, str) else m  # "a b" (older files) or ["a", "b"]
        if len(pair) != 2:
            raise ScratchLLMError(f"{path}: malformed merge {m!r}")
        merges.append((pair[0], pair[1]))
    for added in data.get("added_tokens") or []:
        vocab.setdefault(added["content"], added["id"])
    return tokenizer_from_vocab_merges(vocab, merges, str(path))


def load_gpt2_dir(path: str | Path) -> BPETokenizer:
    """A directory with ``encoder.json`` + ``vocab.bpe``, ``vocab.json`` + ``merges.txt``, or HF's
    ``tokenizer.json``."""
    path = Path(path)
    for vocab_name, merges_name in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
        if (path / vocab_name).is_file() and (path / merges_name).is_file():
            return load_gpt2_files(path / vocab_name, path / merges_name)
    if (path / "tokenizer.json").is_file():
        return load_hf_tokenizer_json(path / "tokenizer.json")
    raise ScratchLLMError(
        f"no tokenizer found in directory {path}: expected tokenizer.json, encoder.json + vocab.bpe, "
        "or vocab.json + merges.txt"
    )


# ----------------------------------------------------------------------------- export
def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list behind tiktoken-style ranks, in rank order.

    A token of rank ``r`` was made by the merge that BPE with only the ranks below ``r`` cannot
    finish: encoding its bytes with those ranks leaves exactly two parts, and those are the merge.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = bpe_encode_piece(token, ranks, max_rank=rank)
        if len(parts) != 2:
            raise ScratchLLMError(f"token {token!r} (rank {rank}) is not the result of a single merge")
        merges.append((parts[0], parts[1]))
    return merges


def save_hf_vocab_merges(tokenizer: BPETokenizer, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``vocab.json`` + ``merges.txt`` (GPT-2 / Hugging Face format) into ``out_dir``.

    Existing files of those names are replaced (atomically); the caller decides about ``--force``.
    """
    from scratchllm.io import atomic_write_text

    table = bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(table[b] for b in token)

    vocab = {to_str(tok): i for tok, i in tokenizer.ranks.items()}
    vocab.update(tokenizer.special_tokens)
    vocab = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    lines = ["#version: 0.2"] + [f"{to_str(a)} {to_str(b)}" for a, b in recover_merges(tokenizer.ranks)]
    out_dir = Path(out_dir)
    vocab_path, merges_path = out_dir / "vocab.json", out_dir / "merges.txt"
    atomic_write_text(vocab_path, json.dumps(vocab, ensure_ascii=False) + "\n")
    atomic_write_text(merges_path, "\n".join(lines) + "\n")
    return vocab_path, merges_path
