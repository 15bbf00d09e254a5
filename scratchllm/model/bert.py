"""BERT: the encoder-only transformer, pretrained by filling in blanks (Devlin et al. 2018).

Where GPT reads left to right and predicts the next token, BERT reads the whole sequence at once
(**bidirectional** attention: no causal mask) and is trained to recover masked tokens (MLM) and to
tell whether sentence B really follows sentence A (NSP). It is the same transformer block as GPT —
this module reuses :class:`~scratchllm.model.gpt.TransformerBlock` with its attention switched to
``causal=False`` — plus three things GPT does not have:

* **segment embeddings**: a learned vector for "sentence A" (0) or "sentence B" (1) added to
  every token, so the model knows which side of ``[SEP]`` a token is on;
* an **MLM head**: dense → GELU → LayerNorm → the output matrix tied to the token embedding;
* a **pooler + NSP head**: the ``[CLS]`` token's final vector → dense → tanh (the "pooled" sentence
  vector that classification fine-tuning also uses) → 2 logits (is-next / random).

The defaults follow the original BERT exactly — post-norm LayerNorm (eps 1e-12), exact (erf) GELU,
learned absolute positions, an embedding LayerNorm — so :mod:`scratchllm.convert.hf_bert` can load a
Hugging Face ``BertForPreTraining`` and give the same logits (fill-mask inference lives in
:mod:`scratchllm.generate.fill_mask`). Switch ``norm_position="pre"`` for a
variant that trains more easily without learning-rate warm-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchllm.errors import ScratchLLMError
from scratchllm.model.attention import build_attn_mask
from scratchllm.model.config import Activation, BlockConfig, NormPosition
from scratchllm.model.gpt import TransformerBlock
from scratchllm.model.layers import init_transformer_weights, make_norm, sum_aux_losses


@dataclass
class BertConfig(BlockConfig):
    """The block fields with BERT's defaults (BERT-base: 512 / 12 / 12 / 768, post-norm, erf GELU)
    plus the vocabulary, segments and the pretraining objectives."""

    context_length: int = 512
    dropout: float = 0.1
    norm_position: NormPosition = "post"
    norm_eps: float = 1e-12
    activation: Activation = "gelu_erf"
    vocab_size: int = 30522
    #: number of segment ids ("token types"): 2 for sentence A / sentence B.
    type_vocab_size: int = 2
    # --- pretraining objectives (read by the BERT pretraining task) ---
    #: masked language modelling on/off, and the fraction of tokens chosen for it.
    mlm: bool = True
    mask_prob: float = 0.15
    #: mask whole words (every token of a chosen word) instead of single tokens.
    whole_word_mask: bool = False
    #: next-sentence prediction on/off.
    nsp: bool = True

    def validate(self) -> None:
        super().validate()
        if self.vocab_size < 1:
            raise ScratchLLMError(f"invalid bert config: vocab_size must be >= 1 (got {self.vocab_size})")
        if self.type_vocab_size < 1:
            raise ScratchLLMError("invalid bert config: type_vocab_size must be >= 1")
        if not 0.0 < self.mask_prob < 1.0:
            raise ScratchLLMError(f"invalid bert config: mask_prob must be in (0, 1) (got {self.mask_prob})")
        if not (self.mlm or self.nsp):
            raise ScratchLLMError("invalid bert config: turn on at least one of mlm and nsp")


class BertOutput(NamedTuple):
    mlm_logits: Tensor  # [B, T, vocab]
    nsp_logits: Tensor  # [B, 2]: 0 = B follows A, 1 = B is random
    hidden: Tensor  # [B, T, C]: the encoder's last hidden states


class BertModel(nn.Module):
    """Encoder-only transformer with MLM and NSP heads. Parameter names::

    tok_emb, pos_emb, seg_emb, emb_norm, blocks.{i}.(norm1|attn|norm2|ffn), final_norm (pre-norm
    only), mlm_dense, mlm_norm, mlm_bias (the MLM output matrix is tok_emb.weight), pooler, nsp_head
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        C = config.n_embd
        self.tok_emb = nn.Embedding(config.vocab_size, C)
        self.pos_emb = nn.Embedding(config.context_length, C)
        self.seg_emb = nn.Embedding(config.type_vocab_size, C)
        self.emb_norm = make_norm(config)
        # causal=False: bidirectional, every token sees every (non-padding) token
        self.blocks = nn.ModuleList(TransformerBlock(config, i, causal=False) for i in range(config.n_layer))
        # Post-norm blocks already end in a norm; pre-norm stacks need one at the top.
        self.final_norm = make_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.mlm_dense = nn.Linear(C, C)
        self.mlm_act = nn.GELU() if config.activation == "gelu_erf" else nn.GELU(approximate="tanh")
        self.mlm_norm = make_norm(config)
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.pooler = nn.Linear(C, C)
        self.nsp_head = nn.Linear(C, 2)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """BERT's initialisation: N(0, init_std) for matrices and embeddings, zeros for biases."""
        std = self.config.init_std
        # Pre-norm: scale the residual projections down like GPT-2, to keep the stream's variance flat.
        pre = self.config.norm_position == "pre"
        init_transformer_weights(self, std, std / math.sqrt(2 * self.config.n_layer) if pre else None)

    # ------------------------------------------------------------------ forward
    def encode(
        self, input_ids: Tensor, segment_ids: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Token ids ``[B, T]`` (+ segment ids, + 1/0 padding mask) → hidden states ``[B, T, C]``."""
        B, T = input_ids.shape
        if self.config.context_length < T:
            raise ScratchLLMError(
                f"sequence of {T} tokens exceeds the model's context_length ({self.config.context_length})"
            )
        if segment_ids is None:
            segment_ids = torch.zeros_like(input_ids)
        pos = torch.arange(T, device=input_ids.device)
        x = self.tok_emb(input_ids) + self.pos_emb(pos) + self.seg_emb(segment_ids)
        x = self.emb_norm(x)
        if self.training and self.config.dropout > 0:
            x = F.dropout(x, self.config.dropout)
        attn_mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            attn_mask = build_attn_mask(T, T, causal=False, key_padding=attention_mask, device=x.device)
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask)
        return self.final_norm(x)

    def pooled(self, hidden: Tensor) -> Tensor:
        """The sentence vector: ``tanh(dense(h_[CLS]))`` ``[B, C]`` (for NSP and classification)."""
        return torch.tanh(self.pooler(hidden[:, 0]))

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """Vocabulary logits for every position, through the MLM transform and the tied matrix."""
        h = self.mlm_norm(self.mlm_act(self.mlm_dense(hidden)))
        return F.linear(h, self.tok_emb.weight, self.mlm_bias)

    def forward(
        self, input_ids: Tensor, segment_ids: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> BertOutput:
        hidden = self.encode(input_ids, segment_ids, attention_mask)
        return BertOutput(self.mlm_logits(hidden), self.nsp_head(self.pooled(hidden)), hidden)

    def aux_loss(self) -> Tensor:
        """Auxiliary losses of the last forward (non-zero only with Mixture-of-Experts blocks)."""
        return sum_aux_losses(self)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= sum(e.weight.numel() for e in (self.tok_emb, self.pos_emb, self.seg_emb))
        return n


def bert_losses(
    out: BertOutput, mlm_labels: Tensor | None, nsp_labels: Tensor | None
) -> tuple[Tensor, dict[str, float]]:
    """Pretraining loss = MLM cross-entropy on the chosen positions + NSP cross-entropy.

    Either label tensor may be None (objective off). Returns the loss and float metrics:
    ``mlm_loss``, ``masked_token_accuracy``, ``nsp_loss``, ``nsp_accuracy`` (those that apply).
    """
    total = out.mlm_logits.new_zeros(())
    metrics: dict[str, float] = {}
    if mlm_labels is not None:
        chosen = mlm_labels != -100
        n = int(chosen.sum())
        if n:
            logits = out.mlm_logits[chosen]  # only the chosen positions reach the loss
            mlm = F.cross_entropy(logits.float(), mlm_labels[chosen])
            total = total + mlm
            metrics["mlm_loss"] = mlm.item()
            metrics["masked_token_accuracy"] = (logits.argmax(-1) == mlm_labels[chosen]).float().mean().item()
        metrics["n_masked"] = float(n)
    if nsp_labels is not None and bool((nsp_labels != -100).any()):
        keep = nsp_labels != -100
        nsp = F.cross_entropy(out.nsp_logits[keep].float(), nsp_labels[keep])
        total = total + nsp
        metrics["nsp_loss"] = nsp.item()
        metrics["nsp_accuracy"] = (out.nsp_logits[keep].argmax(-1) == nsp_labels[keep]).float().mean().item()
    return total, metrics
