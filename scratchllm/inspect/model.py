"""Inside a GPT on one text: attention, the logit lens, the sampling pipeline, the embedding map.

All functions run the model in inference mode on the CPU or GPU it lives on and return plain
Python numbers. They cap what they compute — ``max_tokens`` of text (the *last* tokens are kept,
as a model with a full context would see them), a bounded number of layers and candidates — so
one call costs at most a few forward passes.
"""

from __future__ import annotations

from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.inspect.tokens import encode_text, token_pieces

#: Default caps (a server may pass smaller ones).
MAX_ATTENTION_TOKENS = 512
MAX_LENS_TOKENS = 128
MAX_LENS_LAYERS = 48
MAX_EMBEDDING_POINTS = 4000


def _ids(model: Any, tokenizer: Any, text: str, max_tokens: int) -> list[int]:
    ids = encode_text(tokenizer, text)
    if not ids:
        raise ScratchLLMError("the text has no tokens; type some text first")
    return ids[-min(max_tokens, int(model.config.context_length)) :]


def _gpt(model: Any, what: str) -> None:
    if not (hasattr(model, "blocks") and hasattr(model, "out_head") and hasattr(model, "final_norm")):
        raise ScratchLLMError(f"{what} needs a decoder-only language model (a GPT); this model is not one")


def attention(
    model: Any,
    tokenizer: Any,
    text: str,
    *,
    layer: int | None = None,
    max_tokens: int = MAX_ATTENTION_TOKENS,
    as_bytes: bool = False,
) -> dict[str, Any]:
    """Every head's attention weights of one ``layer`` (default: the last) over ``text``.

    ``weights[h][i][j]`` is how much token ``i`` (the query) attends to token ``j <= i`` (a key);
    each row sums to 1. Values are rounded to 4 decimals (enough for any colour map).

    ``as_bytes`` (what the playground asks for): instead of ``weights``, ``weights_u8`` holds the
    ``[n_head, T, T]`` weights times 255 rounded to bytes, base64-encoded — 512 tokens x 12 heads
    are 3 MB that way instead of 20 MB of JSON numbers (resolution 1/255, plenty for a heatmap).
    """
    import torch

    from scratchllm.visualize import attention_maps

    _gpt(model, "attention")
    ids = _ids(model, tokenizer, text, max_tokens)
    weights, layer = attention_maps(model, ids, layer)
    out = {
        "tokens": token_pieces(tokenizer, ids),
        "ids": ids,
        "layer": layer,
        "n_layer": int(model.config.n_layer),
        "n_head": int(weights.shape[0]),
    }
    if as_bytes:
        import base64

        raw = (weights.clamp(0, 1) * 255).round().to(torch.uint8).contiguous().numpy().tobytes()
        out["weights_u8"] = base64.b64encode(raw).decode("ascii")
    else:
        out["weights"] = (weights.double() * 10_000).round().div(10_000).tolist()
    return out


def logit_lens(
    model: Any,
    tokenizer: Any,
    text: str,
    *,
    max_tokens: int = MAX_LENS_TOKENS,
    max_layers: int = MAX_LENS_LAYERS,
    top: int = 3,
) -> dict[str, Any]:
    """What the model would predict if it stopped after each layer (nostalgebraist's logit lens).

    The residual stream after block ``l`` goes through the final norm and the output head, as the
    last block's output does. Row ``l`` of ``layers`` holds, for every position, the ``top`` most
    likely next tokens with their probabilities; the last row is the model's real prediction.
    Layer ``0`` of the result is the embedding (before any block). With more than ``max_layers``
    blocks, evenly spaced layers are shown (always including the last).
    """
    import torch

    _gpt(model, "the logit lens")
    ids = _ids(model, tokenizer, text, max_tokens)
    n_layer = len(model.blocks)
    wanted = list(range(n_layer + 1))
    if len(wanted) > max_layers:
        step = n_layer / (max_layers - 1)
        wanted = sorted({round(i * step) for i in range(max_layers - 1)} | {n_layer})
    streams: dict[int, torch.Tensor] = {}

    def keep(index: int) -> Any:
        def hook(_module: Any, args: tuple, output: Any) -> None:
            if index == 0:
                streams[0] = args[0].detach()
            streams[index + 1] = (output[0] if isinstance(output, tuple) else output).detach()

        return hook

    hooks = [block.register_forward_hook(keep(i)) for i, block in enumerate(model.blocks)]
    try:
        with torch.inference_mode():
            model(torch.tensor([ids], device=next(model.parameters()).device))
            rows = []
            for layer in wanted:
                probs = torch.softmax(model.out_head(model.final_norm(streams[layer][0])).float(), dim=-1)
                p, idx = probs.topk(min(top, probs.shape[-1]), dim=-1)
                rows.append(
                    {
                        "layer": layer,
                        "top": [
                            [
                                {"id": int(i), "text": t, "p": round(float(v), 4)}
                                for i, t, v in zip(ii, token_pieces(tokenizer, ii.tolist()), pp)
                            ]
                            for ii, pp in zip(idx, p)
                        ],
                    }
                )
    finally:
        for h in hooks:
            h.remove()
    targets = ids[1:] + [None]
    return {
        "tokens": token_pieces(tokenizer, ids),
        "ids": ids,
        "next_ids": targets,
        "n_layer": n_layer,
        "layers": rows,
    }


def next_token_logits(model: Any, tokenizer: Any, text: str) -> Any:
    """The model's raw next-token logits ``[V]`` after ``text`` (its last context-length tokens)."""
    import torch

    _gpt(model, "the sampling pipeline")
    ids = _ids(model, tokenizer, text, int(model.config.context_length))
    with torch.inference_mode():
        logits = model(torch.tensor([ids], device=next(model.parameters()).device), only_last=True)
    return logits[0, -1].float().cpu()


def sampling_pipeline(
    logits: Any,
    tokenizer: Any,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    show: int = 20,
) -> dict[str, Any]:
    """How the sampler turns ``logits`` ``[V]`` into one token, stage by stage.

    The stages are those of :func:`scratchllm.generate.sampling.sample_next`: the model's own
    probabilities (softmax of the logits), after dividing by the temperature, after keeping the
    top-k, after keeping the top-p nucleus (renormalised), and the token drawn with ``seed``. Each
    stage lists the same ``show`` candidates (the most likely under the model) so bars line up;
    ``kept`` counts the tokens still possible at that stage.
    """
    import torch

    from scratchllm.generate.sampling import check_sampling_args, filter_logits, next_token_probs, sample_next

    check_sampling_args(temperature=temperature, top_k=top_k, top_p=top_p)
    if not 1 <= show <= 100:
        raise ScratchLLMError(f"show must be between 1 and 100 (got {show})")
    row = logits.float()[None]
    model_p = torch.softmax(row, dim=-1)[0]
    cand = model_p.topk(min(show, model_p.numel())).indices
    t = temperature if temperature > 0 else 1.0
    scaled = next_token_probs(row, temperature=t)[0]
    after_k = next_token_probs(row, temperature=t, top_k=top_k)[0]
    final = next_token_probs(row, temperature=temperature, top_k=top_k, top_p=top_p)[0]
    g = torch.Generator().manual_seed(int(seed))
    token = int(sample_next(row, temperature=temperature, top_k=top_k, top_p=top_p, generator=g)[0])

    def stage(name: str, probs: torch.Tensor) -> dict[str, Any]:
        return {"name": name, "p": [round(float(probs[i]), 5) for i in cand], "kept": int((probs > 0).sum())}

    stages = [stage("model", model_p), stage(f"temperature {temperature:g}", scaled)]
    kept_k = filter_logits(row, top_k=top_k)
    stages.append(stage("top-k " + (str(top_k) if top_k else "off"), after_k))
    stages.append(stage("top-p " + (f"{top_p:g}" if top_p is not None and top_p < 1 else "off"), final))
    labels = token_pieces(tokenizer, cand.tolist())
    return {
        "candidates": [
            {"id": int(i), "text": s, "logit": round(float(logits[i]), 4)} for i, s in zip(cand, labels)
        ],
        "stages": stages,
        "vocab_size": int(logits.numel()),
        "greedy": temperature == 0,
        "top_k_kept": int(torch.isfinite(kept_k).sum()),
        "sampled": {
            "id": token,
            "text": token_pieces(tokenizer, [token])[0],
            "p": round(float(final[token]), 5),
        },
        "seed": int(seed),
    }


def _embedding_table(model: Any) -> Any:
    emb = getattr(model, "tok_emb", None)
    if emb is None or not hasattr(emb, "weight"):
        raise ScratchLLMError("this model has no token embedding table (tok_emb) to map")
    return emb.weight.detach().float().cpu()


def embedding_map(model: Any, tokenizer: Any, *, max_points: int = MAX_EMBEDDING_POINTS) -> dict[str, Any]:
    """The first ``max_points`` token embeddings on their 2 principal components, with labels."""
    from scratchllm.visualize import pca_2d

    w = _embedding_table(model)
    n = min(max_points, w.shape[0], int(tokenizer.vocab_size))
    xy, explained = pca_2d(w[:n])
    return {
        "ids": list(range(n)),
        "tokens": token_pieces(tokenizer, list(range(n))),
        "xy": (xy.double() * 1000).round().div(1000).tolist(),
        "explained_variance": explained,
        "vocab_size": int(tokenizer.vocab_size),
    }


def cosine_neighbours(table: Any, token_id: int, k: int) -> tuple[Any, Any]:
    """The ``k`` rows of ``table`` (``[V, d]``) nearest row ``token_id`` by cosine, itself left out.

    Cosine compares directions only, so a frequent token's larger embedding norm does not make it
    everyone's neighbour. Returns ``(ids, cosines)``, nearest first."""
    import torch

    w = table / table.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sims = w @ w[token_id]
    sims[token_id] = -2.0
    val, idx = torch.topk(sims, min(k, w.shape[0] - 1))
    return idx, val


def nearest_tokens(model: Any, tokenizer: Any, token_id: int, *, k: int = 10) -> dict[str, Any]:
    """The ``k`` tokens whose embeddings point most nearly the same way as ``token_id``'s (cosine)."""

    w = _embedding_table(model)
    n = min(w.shape[0], int(tokenizer.vocab_size))
    if not 0 <= token_id < n:
        raise ScratchLLMError(f"token id {token_id} is outside the vocabulary (0..{n - 1})")
    if not 1 <= k <= 100:
        raise ScratchLLMError(f"k must be between 1 and 100 (got {k})")
    idx, val = cosine_neighbours(w[:n], token_id, k)
    labels = token_pieces(tokenizer, idx.tolist())
    return {
        "id": int(token_id),
        "text": token_pieces(tokenizer, [token_id])[0],
        "neighbours": [
            {"id": int(i), "text": t, "cosine": round(float(v), 4)} for i, t, v in zip(idx, labels, val)
        ],
    }
