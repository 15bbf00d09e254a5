"""Special tokens a model family adds to any tokenizer: BERT's ``[PAD] [CLS] [SEP] [MASK]`` and the
encoder-decoder's ``<pad> <bos> <eos>``.

They are appended after the tokenizer's last id (:func:`with_special_tokens`), so a char, BPE or
GPT-2 tokenizer keeps every id it had and gains the markers a family needs. The ``*SpecialIds``
classes look the ids up once, with a clear error when a tokenizer lacks them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.base import Tokenizer

PAD, CLS, SEP, MASK = "[PAD]", "[CLS]", "[SEP]", "[MASK]"
BERT_SPECIAL_TOKENS = (PAD, CLS, SEP, MASK)


def with_special_tokens(tokenizer: Tokenizer, names: Iterable[str]) -> Tokenizer:
    """Return a copy of ``tokenizer`` with extra special tokens appended at the end of the id space.

    Existing ids do not move, so a model trained with the old tokenizer still reads the new ids
    correctly; tokens the tokenizer already has are kept where they are.
    """
    data = tokenizer.to_dict()
    specials = dict(data.get("special_tokens", tokenizer.special_tokens))
    next_id = tokenizer.vocab_size
    wanted = {}
    for name in names:
        if name not in specials:
            specials[name] = wanted[name] = next_id
            next_id += 1
    if not wanted:
        return tokenizer
    data["special_tokens"] = specials
    new = type(tokenizer).from_dict(data)
    if any(new.special_tokens.get(n) != i for n, i in wanted.items()) or new.vocab_size != next_id:
        raise ScratchLLMError(
            f"could not add special tokens {', '.join(wanted)} to this {tokenizer.kind} tokenizer"
        )
    return new


def extends(tokenizer: Tokenizer, base: Tokenizer) -> bool:
    """True when ``tokenizer`` is ``base`` plus special tokens appended (what :func:`with_special_tokens`
    makes): every id of ``base`` means the same in ``tokenizer``.

    A run saves the tokenizer it trained with (specials included); ``--resume`` with the
    ``--tokenizer`` that started the run passes this check, any other tokenizer does not.
    """
    if type(tokenizer) is not type(base):
        return False
    by_id = sorted(tokenizer.special_tokens.items(), key=lambda kv: kv[1])
    try:
        rebuilt = with_special_tokens(base, [name for name, _ in by_id if name not in base.special_tokens])
    except ScratchLLMError:
        return False
    return rebuilt.vocab_size == tokenizer.vocab_size and rebuilt.to_dict() == tokenizer.to_dict()


@dataclass(frozen=True)
class BertSpecialIds:
    """The ids of BERT's four special tokens in one tokenizer."""

    pad: int
    cls: int
    sep: int
    mask: int

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> BertSpecialIds:
        missing = [t for t in BERT_SPECIAL_TOKENS if t not in tokenizer.special_tokens]
        if missing:
            raise ScratchLLMError(
                f"the tokenizer lacks BERT's special tokens {', '.join(missing)}; "
                "add them with scratchllm.tokenizer.specials.with_special_tokens"
            )
        s = tokenizer.special_tokens
        return cls(pad=s[PAD], cls=s[CLS], sep=s[SEP], mask=s[MASK])


SEQ2SEQ_PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SEQ2SEQ_SPECIAL_TOKENS = (SEQ2SEQ_PAD, BOS, EOS)


class Seq2SeqSpecialIds:
    """Ids of ``<pad>``, ``<bos>``, ``<eos>`` in a tokenizer (with a clear error if missing)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        missing = [t for t in SEQ2SEQ_SPECIAL_TOKENS if t not in tokenizer.special_tokens]
        if missing:
            raise ScratchLLMError(f"the tokenizer lacks the seq2seq special tokens {', '.join(missing)}")
        s = tokenizer.special_tokens
        self.pad, self.bos, self.eos = s[SEQ2SEQ_PAD], s[BOS], s[EOS]
