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

**Incremental decoding.** :meth:`Seq2SeqTransformer.decode` recomputes the whole target prefix at
every step. :meth:`~Seq2SeqTransformer.start_decoding` + :meth:`~Seq2SeqTransformer.decode_step`
feed one new token per step instead, with two :class:`~scratchllm.model.kv_cache.KVCache` objects
(a :class:`DecoderState`): the decoder's self-attention keys/values, appended step by step as in
the GPT, and the cross-attention keys/values of the memory, computed once per source sequence
because the memory never changes while the target is written.
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
from scratchllm.model.kv_cache import KVCache
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

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None,
        memory_mask: Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        memory_kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """``x`` ``[B, T, C]`` → ``[B, T, C]``. Incremental decoding passes the self-attention
        ``kv_cache`` and the memory's precomputed cross-attention keys/values ``memory_kv``
        instead of ``memory``."""
        p = self.dropout if self.training else 0.0

        def attn(h: Tensor) -> Tensor:
            return F.dropout(self.attn(h, kv_cache=kv_cache), p)

        def cross(h: Tensor) -> Tensor:  # queries from the decoder, keys/values from the memory
            return F.dropout(
                self.cross_attn(h, attn_mask=memory_mask, context=memory, context_kv=memory_kv), p
            )

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


@dataclass
class DecoderState:
    """What incremental decoding keeps between steps (see :meth:`Seq2SeqTransformer.start_decoding`).

    ``self_attn`` grows by one position per decoded token (one slot per decoder layer);
    ``cross_attn`` holds every decoder layer's keys/values of the memory, fixed; ``memory_mask``
    ``[B, 1, 1, S]`` hides padded source positions (None when there are none).
    """

    self_attn: KVCache
    cross_attn: KVCache
    memory_mask: Tensor | None = None

    def reorder(self, rows: Tensor | list[int]) -> None:
        """Row ``i`` continues old row ``rows[i]`` (beam search; see :meth:`KVCache.reorder`)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.self_attn.k.device)
        self.self_attn.reorder(rows)
        self.cross_attn.reorder(rows)
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, rows)


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
    def _embed(self, emb: nn.Embedding, ids: Tensor, start: int = 0) -> Tensor:
        """Embeddings of ``ids`` at positions ``start .. start + T - 1``."""
        end = start + ids.shape[1]
        if self.config.context_length < end:
            raise ScratchLLMError(
                f"sequence of {end} tokens exceeds the model's context_length ({self.config.context_length})"
            )
        # Scale up the embeddings so the fixed [-1, 1] position table does not drown them (the paper).
        x = emb(ids) * math.sqrt(self.config.n_embd) + self.pos_table[start:end]
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
        memory_mask = self._memory_mask(src_mask)
        for block in self.decoder:
            x = block(x, memory, memory_mask)
        return self.out_head(self.decoder_norm(x))

    @staticmethod
    def _memory_mask(src_mask: Tensor | None) -> Tensor | None:
        # Cross-attention only needs to hide padded source positions: [B, 1, 1, S], True = visible.
        return None if src_mask is None else src_mask.bool()[:, None, None, :]

    def start_decoding(
        self, memory: Tensor, src_mask: Tensor | None = None, *, max_len: int | None = None
    ) -> DecoderState:
        """Prepare incremental decoding of ``memory`` ``[B, S, C]`` (from :meth:`encode`).

        Computes every decoder layer's cross-attention keys/values of the memory once, and an
        empty self-attention cache for up to ``max_len`` target tokens (default: context length).
        """
        cfg = self.config
        keys, values = zip(*(block.cross_attn.context_kv(memory) for block in self.decoder), strict=True)
        first = self.decoder[0].attn
        self_attn = KVCache(
            len(self.decoder),
            memory.shape[0],
            min(max_len or cfg.context_length, cfg.context_length),
            first.n_kv_head,
            first.head_dim,
            dtype=memory.dtype,
            device=memory.device,
        )
        return DecoderState(self_attn, KVCache.of_fixed(keys, values), self._memory_mask(src_mask))

    def decode_step(self, tgt_ids: Tensor, state: DecoderState) -> Tensor:
        """Feed the next target tokens ``[B, T]`` (usually ``T = 1``) → their logits ``[B, T, vocab]``.

        The tokens are placed after the ``state.self_attn.length`` already decoded ones; the
        logits equal those :meth:`decode` gives for the same positions of the whole prefix.
        """
        cache = state.self_attn
        start, T = cache.length, tgt_ids.shape[1]
        cache.check_room(T)
        x = self._embed(self.tgt_emb, tgt_ids, start)
        for i, block in enumerate(self.decoder):
            x = block(x, None, state.memory_mask, kv_cache=cache, memory_kv=state.cross_attn.layer_kv(i))
        cache.advance(T)
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
