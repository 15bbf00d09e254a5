"""Pictures a learner can open: attention maps and a map of the token embeddings.

* :func:`plot_attention` runs one text through a GPT and draws, for one layer, every head's
  attention weights as a heatmap: row *i* shows how much token *i* looks at each earlier token
  (the upper triangle is empty because the model is causal).
* :func:`plot_embeddings` projects the token-embedding matrix onto its two principal components
  and writes each token at its place: tokens the model treats alike end up close together
  (after training, digits cluster, as do vowels, capitals, punctuation...).
* :func:`plot_cross_attention` draws an encoder-decoder's source x output alignment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only: no window, works on a server)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> None:
    """Render to PNG in memory, then write atomically (a kill never leaves half a picture)."""
    import io

    from scratchllm.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _label(tokenizer: Any, token_id: int) -> str:
    text = tokenizer.token_text(int(token_id)).replace(" ", "␣")
    # Control characters have no glyph in the plot's font: show them escaped (\n, \x01, ...).
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text) or "∅"


def attention_maps(model: Any, ids: list[int], layer: int | None = None) -> tuple[Any, int]:
    """The ``[n_head, T, T]`` attention weights of ``layer`` (default: the last) for ``ids``."""
    import torch

    if not hasattr(model, "attention_weights"):
        raise ScratchLLMError(
            "attention maps are available for GPT models (this model has no causal attention)"
        )
    n_layer = model.config.n_layer
    layer = n_layer - 1 if layer is None else layer
    if not -n_layer <= layer < n_layer:
        raise ScratchLLMError(f"--layer must be between 0 and {n_layer - 1} (got {layer})")
    ctx = model.config.context_length
    if not ids:
        raise ScratchLLMError("the text is empty; give some text to look at")
    ids = ids[-ctx:]
    device = next(model.parameters()).device
    model.eval()
    weights = model.attention_weights(torch.tensor([ids], device=device))
    return weights[layer][0].float().cpu(), layer % n_layer


def plot_attention(
    model: Any, tokenizer: Any, text: str, path: str | Path, *, layer: int | None = None, max_tokens: int = 48
) -> dict[str, Any]:
    """Write a PNG with one heatmap per attention head of ``layer`` for ``text``."""
    ids = tokenizer.encode(text)[-max_tokens:]
    weights, layer = attention_maps(model, ids, layer)
    n_head = weights.shape[0]
    cols = min(n_head, 4)
    rows = -(-n_head // cols)
    plt = pyplot()
    size = max(3.0, 0.22 * len(ids))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    labels = [_label(tokenizer, i) for i in ids]
    for h in range(rows * cols):
        ax = axes[h // cols][h % cols]
        if h >= n_head:
            ax.axis("off")
            continue
        ax.imshow(weights[h].numpy(), cmap="viridis")  # colour scale per head: weak patterns show
        ax.set_title(f"layer {layer}, head {h}", fontsize=9)
        ax.set_xticks(range(len(ids)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(ids)), labels, fontsize=7)
        ax.set_xlabel("attends to (key)", fontsize=8)
        ax.set_ylabel("token (query)", fontsize=8)
    save_figure(fig, path)
    plt.close(fig)
    return {"path": str(path), "layer": layer, "heads": n_head, "tokens": len(ids)}


def pca_2d(w: Any) -> tuple[Any, list[float]]:
    """Rows of ``w`` ``[N, C]`` projected onto their two principal components, and the share of the
    variance each explains. PCA by SVD of the centred matrix: the two directions along which the
    rows vary most."""
    import torch

    w = w - w.mean(dim=0, keepdim=True)
    _, s, v = torch.linalg.svd(w, full_matrices=False)
    return w @ v[:2].T, (s[:2] ** 2 / (s**2).sum().clamp_min(1e-12)).tolist()


def plot_embeddings(model: Any, tokenizer: Any, path: str | Path, *, max_tokens: int = 300) -> dict[str, Any]:
    """Write a PNG of the first ``max_tokens`` token embeddings projected onto 2 principal components."""

    emb = getattr(model, "tok_emb", None)
    if emb is None:
        raise ScratchLLMError("this model has no token embedding table (tok_emb) to plot")
    n = min(max_tokens, emb.weight.shape[0], tokenizer.vocab_size)
    xy, explained = pca_2d(emb.weight[:n].detach().float().cpu())
    xy = xy.numpy()
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 9))
    ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.3)
    for i in range(n):
        ax.annotate(_label(tokenizer, i), (xy[i, 0], xy[i, 1]), fontsize=7)
    ax.set_title(
        f"token embeddings, first {n} ids (PCA: {explained[0]:.0%} + {explained[1]:.0%} of variance)"
    )
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    save_figure(fig, path)
    plt.close(fig)
    return {"path": str(path), "tokens": n, "explained_variance": explained}


def plot_cross_attention(
    weights: Any, src_tokens: list[str], tgt_tokens: list[str], path: str | Path
) -> None:
    """Save the classic alignment heatmap of an encoder-decoder: source tokens across, output
    tokens down (``weights`` ``[T, S]`` from :func:`scratchllm.generate.seq2seq.cross_attention_map`)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(0.35 * len(src_tokens) + 2, 0.35 * len(tgt_tokens) + 1.5))
    ax.imshow(weights.numpy(), cmap="viridis", aspect="auto")

    def label(t: str) -> str:  # make spaces and control characters visible
        return "␣" if t == " " else repr(t)[1:-1]

    ax.set_xticks(range(len(src_tokens)), [label(t) for t in src_tokens], rotation=90)
    ax.set_yticks(range(len(tgt_tokens)), [label(t) for t in tgt_tokens])
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    ax.set_title("cross-attention (last decoder layer, mean over heads)")
    save_figure(fig, path)
    plt.close(fig)
