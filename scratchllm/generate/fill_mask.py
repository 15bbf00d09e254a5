"""Fill-mask: what a BERT thinks belongs where ``[MASK]`` stands — its pretraining task as inference."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.specials import BertSpecialIds

if TYPE_CHECKING:
    from scratchllm.model.bert import BertModel


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


def fill_mask(model: BertModel, tokenizer: object, text: str, *, top_k: int = 5) -> list[dict]:
    """Fill the ``[MASK]`` tokens of ``text``. One dict per mask, in order: ``{"position",
    "candidates": [{"token", "token_id", "probability", "text"}, ...]}`` where ``text`` is the input
    with that mask replaced by the candidate (other masks left as they are)."""
    special = BertSpecialIds.of(tokenizer)
    body = tokenizer.encode(text)
    if special.mask not in body:
        raise ScratchLLMError("the text has no [MASK] token; write [MASK] where a token should be filled in")
    ids = [special.cls, *body, special.sep]
    if len(ids) > model.config.context_length:
        raise ScratchLLMError(
            f"the text is {len(ids)} tokens with [CLS]/[SEP]; "
            f"this model reads at most {model.config.context_length}"
        )
    results = []
    for pos, cands in fill_mask_ids(model, ids, special.mask, top_k=top_k):
        rows = []
        for tok, p in cands:
            filled = ids[1:-1]
            filled[pos - 1] = tok
            rows.append(
                {
                    "token": tokenizer.decode([tok]),
                    "token_id": tok,
                    "probability": p,
                    "text": tokenizer.decode(filled),
                }
            )
        results.append({"position": pos - 1, "candidates": rows})
    return results
