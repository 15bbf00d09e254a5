"""Fill-mask: what a BERT thinks belongs where ``[MASK]`` stands — its pretraining task as inference."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.specials import MASK, BertSpecialIds

if TYPE_CHECKING:
    from scratchllm.model.bert import BertModel
    from scratchllm.tokenizer.base import Tokenizer


@torch.no_grad()
def fill_mask_ids(
    model: BertModel, ids: list[int], mask_id: int, *, top_k: int = 5
) -> list[tuple[int, list[tuple[int, float]]]]:
    """For every ``[MASK]`` in ``ids`` (a full sequence, ``[CLS] ... [SEP]``): its position and the
    ``top_k`` most likely ``(token id, probability)`` fills."""
    device = model.tok_emb.weight.device
    logits = model(torch.tensor([ids], device=device)).mlm_logits[0]
    out = []
    for pos in [i for i, t in enumerate(ids) if t == mask_id]:
        probs = torch.softmax(logits[pos].float(), dim=-1)
        p, tok = probs.topk(min(top_k, probs.numel()))
        out.append((pos, list(zip(tok.tolist(), p.tolist(), strict=True))))
    return out


def fill_mask(model: BertModel, tokenizer: Tokenizer, text: str, *, top_k: int = 5) -> list[dict]:
    """Fill the ``[MASK]`` tokens of ``text``. One dict per mask, in order: ``{"position",
    "candidates": [{"token", "token_id", "probability", "text"}, ...]}`` where ``text`` is the input
    with that mask replaced by the candidate (other masks left as they are).

    One ``[MASK]`` stands for one token: a character with a char tokenizer, a word (or a piece of
    a rare word) with BPE. With byte-level BPE a word carries the space before it (``" be"``), so
    the space written before a ``[MASK]`` goes into the mask, as Hugging Face's RoBERTa tokenizer
    does: ``"to [MASK]"`` is read as ``"to"`` + ``[MASK]`` and filled with ``" be"``.
    """
    special = BertSpecialIds.of(tokenizer)
    parts = text.split(MASK)  # the text around each [MASK], to write the filled-in versions
    absorbed = [tokenizer.space_joins_next_word and p.endswith(" ") for p in parts[:-1]]
    if tokenizer.space_joins_next_word:
        text = text.replace(" " + MASK, MASK)
    # The one place a special string in user text is read on purpose: the [MASK]s to fill (only
    # those - a "[CLS]" or "<|endoftext|>" typed into the text stays text).
    body = tokenizer.encode(text, allowed_special={MASK})
    if special.mask not in body:
        raise ScratchLLMError("the text has no [MASK] token; write [MASK] where a token should be filled in")
    ids = [special.cls, *body, special.sep]
    if len(ids) > model.config.context_length:
        raise ScratchLLMError(
            f"the text is {len(ids)} tokens with [CLS]/[SEP]; "
            f"this model reads at most {model.config.context_length}"
        )
    results = []
    for k, (pos, cands) in enumerate(fill_mask_ids(model, ids, special.mask, top_k=top_k)):
        before = "".join(p + MASK for p in parts[:k]) + (parts[k][:-1] if absorbed[k] else parts[k])
        after = MASK.join(parts[k + 1 :])
        rows = []
        for tok, p in cands:
            piece = tokenizer.decode([tok])
            rows.append({"token": piece, "token_id": tok, "probability": p, "text": before + piece + after})
        results.append({"position": pos - 1, "candidates": rows})
    return results
