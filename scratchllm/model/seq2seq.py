"""The encoder–decoder transformer of "Attention Is All You Need" (Vaswani et al. 2017).

Built for *transduction*: read a whole source sequence, then write a target sequence.

* The **encoder** is BERT-like: token embeddings + a fixed sinusoidal position table, then blocks
  with *bidirectional* self-attention (the shared :class:`~scratchllm.model.gpt.TransformerBlock`
  with ``causal=False``). Its output, one vector per source token, is the "memory".
* The **decoder** is GPT-like — causal self-attention over the target written so far — with one
  extra sub-layer per block: **cross-attention**, whose queries come from the decoder and whose
  keys/values come from the memory. That is where the model "looks at" the source; the weights
  make the classic source × target alignment heatmap (:meth:`Seq2SeqTransformer.cross_attention`).

Everything else is shared with the GPT: attention (:class:`~scratchllm.model.attention.Attention`
with its ``context`` input for cross-attention), norms, FFNs, positions. Decoding (greedy, beam
search) lives in :mod:`scratchllm.generate.seq2seq`, beside the GPT's sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchllm.errors import ScratchLLMError
from scratchllm.model.attention import Attention, build_attn_mask
from scratchllm.model.config import Activation, BlockConfig, NormPosition
from scratchllm.model.gpt import TransformerBlock, make_ffn
from scratchllm.model.layers import init_transformer_weights, make_norm, sinusoidal_table, sum_aux_losses


@dataclass
class Seq2SeqConfig(BlockConfig):
    """The block fields (with the encoder-decoder's defaults) plus vocabularies and special ids."""

    # Block defaults for a small model; n_layer is the number of encoder layers.
    context_length: int = 64  # longest source or target sequence (special tokens included)
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1
    #: the paper used post-norm; pre-norm trains more reliably on small budgets, so it is the default.
    norm_position: NormPosition = "pre"
    activation: Activation = "relu"
    #: source and target vocabulary sizes (equal, with share_embeddings, for one shared vocabulary).
    src_vocab_size: int = 128
    tgt_vocab_size: int = 128
    #: one embedding matrix for source, target and output head (needs a shared vocabulary).
    share_embeddings: bool = True
    #: decoder layers; None means n_layer.
    n_decoder_layer: int | None = None
    #: label smoothing of the target cross-entropy (the paper used 0.1).
    label_smoothing: float = 0.1
    #: special token ids of the target vocabulary (pad for the source too when vocabularies are shared).
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    src_pad_id: int | None = None

    @property
    def decoder_layers(self) -> int:
        return self.n_layer if self.n_decoder_layer is None else self.n_decoder_layer

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise ScratchLLMError(f"invalid seq2seq config: {msg}")

        super().validate()
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            bad("share_embeddings needs src_vocab_size == tgt_vocab_size")
        if not 0.0 <= self.label_smoothing < 1.0:
            bad(f"label_smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.decoder_layers < 1:
            bad("n_decoder_layer must be >= 1")
        for name in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.tgt_vocab_size:
                bad(f"{name} must be a target token id")


class DecoderBlock(nn.Module):
    """Causal self-attention → cross-attention to the memory → FFN, each with residual + norm."""

    def __init__(self, config: BlockConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.dropout = config.dropout
        self.norm1 = make_norm(config)
        self.attn = Attention.from_config(config, causal=True, layer_idx=layer_idx)
        self.norm_cross = make_norm(config)
        self.cross_attn = Attention.from_config(config, causal=False, layer_idx=layer_idx)
        self.norm2 = make_norm(config)
        self.ffn = make_ffn(config)

    def forward(self, x: Tensor, memory: Tensor, memory_mask: Tensor | None = None) -> Tensor:
        p = self.dropout if self.training else 0.0

        def attn(h: Tensor) -> Tensor:
            return F.dropout(self.attn(h), p)

        def cross(h: Tensor) -> Tensor:  # queries from the decoder, keys/values from the memory
            return F.dropout(self.cross_attn(h, attn_mask=memory_mask, context=memory), p)

        def ffn(h: Tensor) -> Tensor:
            return F.dropout(self.ffn(h), p)

        if self.pre_norm:
            x = x + attn(self.norm1(x))
            x = x + cross(self.norm_cross(x))
            x = x + ffn(self.norm2(x))
        else:  # post-norm, as in the paper
            x = self.norm1(x + attn(x))
            x = self.norm_cross(x + cross(x))
            x = self.norm2(x + ffn(x))
        return x


class Seq2SeqTransformer(nn.Module):
    """Encoder–decoder transformer. Parameter names::

    src_emb (absent when shared), tgt_emb, encoder.{i}.*, encoder_norm, decoder.{i}.(norm1|attn|
    norm_cross|cross_attn|norm2|ffn), decoder_norm, out_head (tied to tgt_emb)
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        C = config.n_embd
        self.tgt_emb = nn.Embedding(config.tgt_vocab_size, C)
        self.src_emb = None if config.share_embeddings else nn.Embedding(config.src_vocab_size, C)
        self.register_buffer("pos_table", sinusoidal_table(config.context_length, C), persistent=False)
        self.encoder = nn.ModuleList(TransformerBlock(config, i, causal=False) for i in range(config.n_layer))
        self.decoder = nn.ModuleList(DecoderBlock(config, i) for i in range(config.decoder_layers))
        pre = config.norm_position == "pre"
        self.encoder_norm = make_norm(config) if pre else nn.Identity()
        self.decoder_norm = make_norm(config) if pre else nn.Identity()
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
        return sum_aux_losses(self)

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
