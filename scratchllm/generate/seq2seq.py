"""Decoding for the encoder-decoder: greedy, beam search, and the cross-attention map.

The encoder reads the whole source once (the "memory"); the decoder then writes the target one
token at a time, each step attending to what it wrote so far and, through cross-attention, to the
memory. :func:`greedy_decode` always takes the most likely token; :func:`beam_search` keeps the
``beam`` best partial outputs.

Both decode incrementally by default (``use_cache=True``): each step feeds only the newest token,
the decoder's self-attention keys/values are cached and the memory's cross-attention keys/values
are computed once per source (:meth:`~scratchllm.model.seq2seq.Seq2SeqTransformer.start_decoding`).
``use_cache=False`` re-runs the decoder over the whole prefix at every step — the textbook loop,
kept as the reference the tests compare the cache against (same tokens, same logits).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.specials import EOS, Seq2SeqSpecialIds

if TYPE_CHECKING:
    from scratchllm.model.seq2seq import Seq2SeqTransformer


@torch.no_grad()
def greedy_decode(
    model: Seq2SeqTransformer,
    src_ids: Tensor,
    src_mask: Tensor | None = None,
    *,
    max_len: int | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """Pick the most likely next token until ``<eos>`` for a batch; returns ids without bos/eos."""
    cfg = model.config
    max_len = min(max_len or cfg.context_length, cfg.context_length)
    memory = model.encode(src_ids, src_mask)
    B = src_ids.shape[0]
    ys = torch.full((B, 1), cfg.bos_id, dtype=torch.long, device=src_ids.device)
    done = torch.zeros(B, dtype=torch.bool, device=src_ids.device)
    state = model.start_decoding(memory, src_mask, max_len=max_len) if use_cache else None
    for _ in range(max_len - 1):
        if state is not None:
            logits = model.decode_step(ys[:, -1:], state)
        else:
            logits = model.decode(ys, memory, src_mask)
        nxt = logits[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, cfg.eos_id), nxt)
        ys = torch.cat([ys, nxt[:, None]], dim=1)
        done |= nxt == cfg.eos_id
        if bool(done.all()):
            break
    return [_strip(row.tolist()[1:], cfg.eos_id) for row in ys]


def _strip(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


@torch.no_grad()
def beam_search(
    model: Seq2SeqTransformer,
    src_ids: Tensor,
    *,
    beam: int = 4,
    max_len: int | None = None,
    length_penalty: float = 1.0,
    use_cache: bool = True,
) -> list[int]:
    """Beam search for ONE source sequence ``[1, S]``; returns the best target ids (no bos/eos).

    Keeps the ``beam`` most likely partial targets; a hypothesis that emits ``<eos>`` is finished.
    Finished hypotheses are ranked by ``log p / length ** length_penalty`` (longer outputs are not
    punished just for having more factors below 1). With ``beam=1`` this is exactly greedy decoding.
    With the cache, the rows of the caches follow the hypotheses: after each step row ``i`` is
    reordered to hold the beam that the ``i``-th surviving hypothesis extends.
    """
    if beam < 1:
        raise ScratchLLMError(f"--beam must be >= 1 (got {beam})")
    cfg = model.config
    max_len = min(max_len or cfg.context_length, cfg.context_length)
    memory = model.encode(src_ids)
    state = model.start_decoding(memory, max_len=max_len) if use_cache else None
    alive = [([cfg.bos_id], 0.0)]  # (tokens, summed log-probability)
    finished: list[tuple[list[int], float]] = []
    for _ in range(max_len - 1):
        if state is not None:
            last = torch.tensor([[t[-1]] for t, _ in alive], device=src_ids.device)
            logits = model.decode_step(last, state)
        else:
            ys = torch.tensor([t for t, _ in alive], device=src_ids.device)
            logits = model.decode(ys, memory.expand(len(alive), -1, -1))
        logp = F.log_softmax(logits[:, -1].float(), dim=-1)
        scores = torch.tensor([s for _, s in alive], device=logp.device)[:, None] + logp
        top, flat = scores.flatten().topk(min(beam, scores.numel()))
        candidates = []
        for score, idx in zip(top.tolist(), flat.tolist(), strict=True):
            row, tok = divmod(idx, logp.shape[1])
            candidates.append((alive[row][0] + [tok], score, row))
        alive, rows = [], []
        for tokens, score, row in candidates:
            if tokens[-1] == cfg.eos_id:
                finished.append((tokens, score))
            else:
                alive.append((tokens, score))
                rows.append(row)
        if len(finished) >= beam or not alive:
            break
        if state is not None:
            state.reorder(rows)  # cache row i now holds the prefix hypothesis i extends
    pool = finished or alive

    def normalised(hyp: tuple[list[int], float]) -> float:
        return hyp[1] / (len(hyp[0]) - 1) ** length_penalty

    best = max(pool, key=normalised)[0]
    return _strip(best[1:], cfg.eos_id)


def translate(
    model: Seq2SeqTransformer,
    tokenizer: object,
    sources: list[str] | tuple[str, ...],
    *,
    beam: int = 1,
    batch_size: int = 64,
    max_len: int | None = None,
) -> list[str]:
    """Decode source strings to target strings (greedy in padded batches for ``beam=1``)."""
    sp = Seq2SeqSpecialIds(tokenizer)
    device = model.tgt_emb.weight.device
    encoded = []
    for s in sources:
        ids = tokenizer.encode(s) + [sp.eos]
        if len(ids) > model.config.context_length:
            raise ScratchLLMError(
                f"the source is {len(ids)} tokens; this model reads at most {model.config.context_length}"
            )
        encoded.append(ids)
    outs: list[list[int]] = []
    if beam == 1:
        for i in range(0, len(encoded), batch_size):
            chunk = encoded[i : i + batch_size]
            S = max(len(c) for c in chunk)
            src = torch.tensor([c + [sp.pad] * (S - len(c)) for c in chunk], device=device)
            mask = torch.tensor([[1] * len(c) + [0] * (S - len(c)) for c in chunk], device=device)
            outs.extend(greedy_decode(model, src, mask, max_len=max_len))
    else:
        for c in encoded:
            outs.append(beam_search(model, torch.tensor([c], device=device), beam=beam, max_len=max_len))
    specials = set(tokenizer.special_tokens.values())
    return [tokenizer.decode([t for t in o if t not in specials]) for o in outs]


def cross_attention_map(
    model: Seq2SeqTransformer, tokenizer: object, source: str, output: str
) -> tuple[Tensor, list[str], list[str]]:
    """Cross-attention of the last decoder layer, averaged over heads, for one (source, output) pair.

    Returns ``(weights [T, S], source tokens, output tokens)``: row t says where the decoder looked
    while writing output token t (the last row is the ``<eos>`` it wrote at the end).
    """
    sp = Seq2SeqSpecialIds(tokenizer)
    device = model.tgt_emb.weight.device
    src = tokenizer.encode(source) + [sp.eos]
    out = tokenizer.encode(output)
    tgt_in = torch.tensor([[sp.bos, *out]], device=device)
    weights = model.cross_attention(torch.tensor([src], device=device), tgt_in)[-1][0].mean(0)  # [T, S]
    names = [tokenizer.decode([t]) for t in src[:-1]] + [EOS]
    return weights.cpu(), names, [tokenizer.decode([t]) for t in out] + [EOS]
