"""The encoder–decoder transformer of "Attention Is All You Need" (Vaswani et al. 2017).

Built for *transduction*: read a whole source sequence, then write a target sequence.

* The **encoder** is BERT-like: token embeddings + a fixed sinusoidal position table, then blocks
  with *bidirectional* self-attention (the shared :class:`~scratchllm.model.gpt.TransformerBlock`
  with ``causal=False``). Its output, one vector per source token, is the "memory".
* The **decoder** is GPT-like — causal self-attention over the target written so far — with one
  extra sub-layer per block: **cross-attention**, whose queries come from the decoder and whose
  keys/values come from the memory. That is where the model "looks at" the source; the weights
  make the classic source × target alignment heatmap (:meth:`Seq2SeqTransformer.cross_attention`).

Everything else is shared with the GPT: attention (:class:`FastMultiHeadAttention` with its
``context`` input for cross-attention), norms, FFNs, positions. Decoding is greedy or beam search
(:func:`greedy_decode`, :func:`beam_search`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchllm.errors import ScratchLLMError
from scratchllm.model.attention import FastMultiHeadAttention, build_attn_mask
from scratchllm.model.config import Activation, GPTConfig, Norm, NormPosition
from scratchllm.model.gpt import TransformerBlock
from scratchllm.model.layers import (
    block_config,
    init_transformer_weights,
    make_ffn,
    make_norm,
    residual,
    sinusoidal_table,
)


@dataclass
class Seq2SeqConfig:
    #: source and target vocabulary sizes (equal, with share_embeddings, for one shared vocabulary).
    src_vocab_size: int = 128
    tgt_vocab_size: int = 128
    #: one embedding matrix for source, target and output head (needs a shared vocabulary).
    share_embeddings: bool = True
    #: longest source or target sequence (special tokens included).
    context_length: int = 64
    n_layer: int = 3
    #: decoder layers; None means n_layer.
    n_decoder_layer: int | None = None
    n_head: int = 4
    n_embd: int = 128
    ffn_hidden: int | None = None
    dropout: float = 0.1
    bias: bool = True
    norm: Norm = "layernorm"
    #: the paper used post-norm; pre-norm trains more reliably on small budgets, so it is the default.
    norm_position: NormPosition = "pre"
    norm_eps: float = 1e-5
    activation: Activation = "relu"
    init_std: float = 0.02
    #: label smoothing of the target cross-entropy (the paper used 0.1).
    label_smoothing: float = 0.1
    #: special token ids of the target vocabulary (pad for the source too when vocabularies are shared).
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    src_pad_id: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def decoder_layers(self) -> int:
        return self.n_layer if self.n_decoder_layer is None else self.n_decoder_layer

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise ScratchLLMError(f"invalid seq2seq config: {msg}")

        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            bad("share_embeddings needs src_vocab_size == tgt_vocab_size")
        if not 0.0 <= self.label_smoothing < 1.0:
            bad(f"label_smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.decoder_layers < 1:
            bad("n_decoder_layer must be >= 1")
        for name in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.tgt_vocab_size:
                bad(f"{name} must be a target token id")
        self.block_config()

    def block_config(self) -> GPTConfig:
        """The :class:`GPTConfig` the shared blocks, norms and FFNs are built from."""
        vocab_size = max(self.src_vocab_size, self.tgt_vocab_size)
        return block_config(self, vocab_size=vocab_size, pos_emb="sinusoidal")


class DecoderBlock(nn.Module):
    """Causal self-attention → cross-attention to the memory → FFN, each with residual + norm."""

    def __init__(self, config: GPTConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.dropout = config.dropout
        self.norm1 = make_norm(config)
        self.attn = FastMultiHeadAttention.from_config(config, causal=True, layer_idx=layer_idx)
        self.norm_cross = make_norm(config)
        self.cross_attn = FastMultiHeadAttention.from_config(config, causal=False, layer_idx=layer_idx)
        self.norm2 = make_norm(config)
        self.ffn = make_ffn(config)

    def forward(self, x: Tensor, memory: Tensor, memory_mask: Tensor | None = None) -> Tensor:
        p = self.dropout if self.training else 0.0

        def cross(h: Tensor) -> Tensor:
            return self.cross_attn(h, attn_mask=memory_mask, context=memory)

        x = residual(x, self.attn, self.norm1, pre_norm=self.pre_norm, p=p)
        x = residual(x, cross, self.norm_cross, pre_norm=self.pre_norm, p=p)
        return residual(x, self.ffn, self.norm2, pre_norm=self.pre_norm, p=p)


class Seq2SeqTransformer(nn.Module):
    """Encoder–decoder transformer. Parameter names::

    src_emb (absent when shared), tgt_emb, encoder.{i}.*, encoder_norm, decoder.{i}.(norm1|attn|
    norm_cross|cross_attn|norm2|ffn), decoder_norm, out_head (tied to tgt_emb)
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        gcfg = config.block_config()
        C = config.n_embd
        self.tgt_emb = nn.Embedding(config.tgt_vocab_size, C)
        self.src_emb = None if config.share_embeddings else nn.Embedding(config.src_vocab_size, C)
        self.register_buffer("pos_table", sinusoidal_table(config.context_length, C), persistent=False)
        self.encoder = nn.ModuleList(TransformerBlock(gcfg, i) for i in range(config.n_layer))
        for block in self.encoder:
            block.attn.causal = False
        self.decoder = nn.ModuleList(DecoderBlock(gcfg, i) for i in range(config.decoder_layers))
        pre = config.norm_position == "pre"
        self.encoder_norm = make_norm(gcfg) if pre else nn.Identity()
        self.decoder_norm = make_norm(gcfg) if pre else nn.Identity()
        self.out_head = nn.Linear(C, config.tgt_vocab_size, bias=False)
        self.out_head.weight = self.tgt_emb.weight  # the paper shares this matrix too
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2's initialisation, counting the residual additions of encoder and decoder layers."""
        std = self.config.init_std
        layers = self.config.n_layer + self.config.decoder_layers
        init_transformer_weights(self, std, std / math.sqrt(2 * layers))

    # ------------------------------------------------------------------ pieces
    def _embed(self, emb: nn.Embedding, ids: Tensor) -> Tensor:
        T = ids.shape[1]
        if self.config.context_length < T:
            raise ScratchLLMError(
                f"sequence of {T} tokens exceeds the model's context_length ({self.config.context_length})"
            )
        # Scale up the embeddings so the fixed [-1, 1] position table does not drown them (the paper).
        x = emb(ids) * math.sqrt(self.config.n_embd) + self.pos_table[:T]
        return F.dropout(x, self.config.dropout) if self.training else x

    def encode(self, src_ids: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Source ids ``[B, S]`` (+ 1/0 padding mask) → memory ``[B, S, C]``."""
        x = self._embed(self.src_emb or self.tgt_emb, src_ids)
        attn_mask = None
        if src_mask is not None and not bool(src_mask.all()):
            S = src_ids.shape[1]
            attn_mask = build_attn_mask(S, S, causal=False, key_padding=src_mask, device=x.device)
        for block in self.encoder:
            x = block(x, attn_mask=attn_mask)
        return self.encoder_norm(x)

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Target prefix ids ``[B, T]`` + memory → next-token logits ``[B, T, tgt_vocab]``."""
        x = self._embed(self.tgt_emb, tgt_in)
        # Cross-attention only needs to hide padded source positions: [B, 1, 1, S], True = visible.
        memory_mask = None if src_mask is None else src_mask.bool()[:, None, None, :]
        for block in self.decoder:
            x = block(x, memory, memory_mask)
        return self.out_head(self.decoder_norm(x))

    def forward(self, src_ids: Tensor, tgt_in: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Teacher forcing: logits ``[B, T, tgt_vocab]`` for every target position at once."""
        return self.decode(tgt_in, self.encode(src_ids, src_mask), src_mask)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Label-smoothed cross-entropy; ``-100`` labels (padding) are ignored."""
        return F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(),
            labels.reshape(-1),
            ignore_index=-100,
            label_smoothing=self.config.label_smoothing,
        )

    def aux_loss(self) -> Tensor:
        total = torch.zeros((), device=self.tgt_emb.weight.device)
        for module in self.modules():
            fn = getattr(module, "aux_loss", None)
            if module is not self and callable(fn):
                total = total + fn()
        return total

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= sum(e.weight.numel() for e in (self.tgt_emb, self.src_emb) if e is not None)
        return n

    @torch.no_grad()
    def cross_attention(
        self, src_ids: Tensor, tgt_in: Tensor, src_mask: Tensor | None = None
    ) -> list[Tensor]:
        """Cross-attention weights of every decoder layer, each ``[B, n_head, T, S]`` (for plots)."""
        attns = [block.cross_attn for block in self.decoder]
        for a in attns:
            a.keep_weights = True
        try:
            self(src_ids, tgt_in, src_mask)
            return [a.last_weights for a in attns]
        finally:
            for a in attns:
                a.keep_weights, a.last_weights = False, None


# ----------------------------------------------------------------------------- decoding


@torch.no_grad()
def greedy_decode(
    model: Seq2SeqTransformer, src_ids: Tensor, src_mask: Tensor | None = None, *, max_len: int | None = None
) -> list[list[int]]:
    """Pick the most likely next token until ``<eos>`` for a batch; returns ids without bos/eos."""
    cfg = model.config
    max_len = min(max_len or cfg.context_length, cfg.context_length)
    memory = model.encode(src_ids, src_mask)
    B = src_ids.shape[0]
    ys = torch.full((B, 1), cfg.bos_id, dtype=torch.long, device=src_ids.device)
    done = torch.zeros(B, dtype=torch.bool, device=src_ids.device)
    for _ in range(max_len - 1):
        nxt = model.decode(ys, memory, src_mask)[:, -1].argmax(-1)
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
) -> list[int]:
    """Beam search for ONE source sequence ``[1, S]``; returns the best target ids (no bos/eos).

    Keeps the ``beam`` most likely partial targets; a hypothesis that emits ``<eos>`` is finished.
    Finished hypotheses are ranked by ``log p / length ** length_penalty`` (longer outputs are not
    punished just for having more factors below 1). With ``beam=1`` this is exactly greedy decoding.
    """
    if beam < 1:
        raise ScratchLLMError(f"--beam must be >= 1 (got {beam})")
    cfg = model.config
    max_len = min(max_len or cfg.context_length, cfg.context_length)
    memory = model.encode(src_ids)
    alive = [([cfg.bos_id], 0.0)]  # (tokens, summed log-probability)
    finished: list[tuple[list[int], float]] = []
    for _ in range(max_len - 1):
        ys = torch.tensor([t for t, _ in alive], device=src_ids.device)
        logp = F.log_softmax(model.decode(ys, memory.expand(len(alive), -1, -1))[:, -1].float(), dim=-1)
        scores = torch.tensor([s for _, s in alive], device=logp.device)[:, None] + logp
        top, flat = scores.flatten().topk(min(beam, scores.numel()))
        candidates = []
        for score, idx in zip(top.tolist(), flat.tolist(), strict=True):
            row, tok = divmod(idx, logp.shape[1])
            candidates.append((alive[row][0] + [tok], score))
        alive = []
        for tokens, score in candidates:
            (finished if tokens[-1] == cfg.eos_id else alive).append((tokens, score))
        if len(finished) >= beam or not alive:
            break
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
    from scratchllm.data.seq2seq import Seq2SeqSpecialIds

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
    from scratchllm.data.seq2seq import EOS, Seq2SeqSpecialIds

    sp = Seq2SeqSpecialIds(tokenizer)
    device = model.tgt_emb.weight.device
    src = tokenizer.encode(source) + [sp.eos]
    out = tokenizer.encode(output)
    tgt_in = torch.tensor([[sp.bos, *out]], device=device)
    weights = model.cross_attention(torch.tensor([src], device=device), tgt_in)[-1][0].mean(0)  # [T, S]
    names = [tokenizer.decode([t]) for t in src[:-1]] + [EOS]
    return weights.cpu(), names, [tokenizer.decode([t]) for t in out] + [EOS]


def plot_cross_attention(weights: Tensor, src_tokens: list[str], tgt_tokens: list[str], path: str) -> None:
    """Save the classic alignment heatmap: source tokens across, output tokens down."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scratchllm.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(0.35 * len(src_tokens) + 2, 0.35 * len(tgt_tokens) + 1.5))
    ax.imshow(weights.numpy(), cmap="viridis", aspect="auto")

    def label(t: str) -> str:  # make spaces and control characters visible
        return "␣" if t == " " else repr(t)[1:-1]

    ax.set_xticks(range(len(src_tokens)), [label(t) for t in src_tokens], rotation=90)
    ax.set_yticks(range(len(tgt_tokens)), [label(t) for t in tgt_tokens])
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    ax.set_title("cross-attention (last decoder layer, mean over heads)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
