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
learned absolute positions, an embedding LayerNorm — so :func:`from_hf_bert_state_dict` can load a
Hugging Face ``BertForPreTraining`` and give the same logits. Switch ``norm_position="pre"`` for a
variant that trains more easily without learning-rate warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchllm.errors import ScratchLLMError
from scratchllm.model.attention import build_attn_mask
from scratchllm.model.config import Activation, GPTConfig, Norm, NormPosition
from scratchllm.model.gpt import TransformerBlock
from scratchllm.model.layers import block_config, init_transformer_weights, make_norm


@dataclass
class BertConfig:
    # --- size (BERT-base is 30522 / 512 / 12 / 12 / 768) ---
    vocab_size: int = 30522
    context_length: int = 512
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    #: FFN hidden width; None means 4 * n_embd.
    ffn_hidden: int | None = None
    #: number of segment ids ("token types"): 2 for sentence A / sentence B.
    type_vocab_size: int = 2
    dropout: float = 0.1
    bias: bool = True
    # --- architecture switches (shared with the GPT blocks) ---
    norm: Norm = "layernorm"
    norm_position: NormPosition = "post"
    norm_eps: float = 1e-12
    activation: Activation = "gelu_erf"
    init_std: float = 0.02
    # --- pretraining objectives (read by the BERT pretraining task) ---
    #: masked language modelling on/off, and the fraction of tokens chosen for it.
    mlm: bool = True
    mask_prob: float = 0.15
    #: next-sentence prediction on/off.
    nsp: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.type_vocab_size < 1:
            raise ScratchLLMError("invalid bert config: type_vocab_size must be >= 1")
        if not 0.0 < self.mask_prob < 1.0:
            raise ScratchLLMError(f"invalid bert config: mask_prob must be in (0, 1) (got {self.mask_prob})")
        if not (self.mlm or self.nsp):
            raise ScratchLLMError("invalid bert config: turn on at least one of mlm and nsp")
        self.block_config()  # checks sizes, heads, dropout

    def block_config(self) -> GPTConfig:
        """The :class:`GPTConfig` the shared transformer blocks are built from."""
        return block_config(self, vocab_size=self.vocab_size, pos_emb="learned")


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
        gcfg = config.block_config()
        C = config.n_embd
        self.tok_emb = nn.Embedding(config.vocab_size, C)
        self.pos_emb = nn.Embedding(config.context_length, C)
        self.seg_emb = nn.Embedding(config.type_vocab_size, C)
        self.emb_norm = make_norm(gcfg)
        self.blocks = nn.ModuleList(TransformerBlock(gcfg, i) for i in range(config.n_layer))
        for block in self.blocks:
            block.attn.causal = False  # bidirectional: every token sees every (non-padding) token
        # Post-norm blocks already end in a norm; pre-norm stacks need one at the top.
        self.final_norm = make_norm(gcfg) if config.norm_position == "pre" else nn.Identity()
        self.mlm_dense = nn.Linear(C, C)
        self.mlm_act = nn.GELU() if config.activation == "gelu_erf" else nn.GELU(approximate="tanh")
        self.mlm_norm = make_norm(gcfg)
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
        """No auxiliary losses (the shared training code may ask every model for them)."""
        return torch.zeros((), device=self.tok_emb.weight.device)

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


# ----------------------------------------------------------------------------- Hugging Face import


def from_hf_bert_state_dict(sd: Mapping[str, Tensor], config: BertConfig) -> dict[str, Tensor]:
    """Map a Hugging Face ``BertForPreTraining`` state dict onto this module's parameter names.

    Hugging Face keeps separate ``query``/``key``/``value`` Linears; ours is one fused ``qkv``
    (rows: all queries, then keys, then values), so the three are concatenated. Keys may carry the
    ``bert.`` prefix (``BertForPreTraining``) or not (a bare ``BertModel``, which has no heads).
    """

    def get(key: str) -> Tensor:
        for k in (f"bert.{key}", key):
            if k in sd:
                return sd[k]
        raise ScratchLLMError(f"Hugging Face BERT state dict lacks {key!r}")

    out: dict[str, Tensor] = {
        "tok_emb.weight": get("embeddings.word_embeddings.weight"),
        "pos_emb.weight": get("embeddings.position_embeddings.weight"),
        "seg_emb.weight": get("embeddings.token_type_embeddings.weight"),
        "emb_norm.weight": get("embeddings.LayerNorm.weight"),
        "emb_norm.bias": get("embeddings.LayerNorm.bias"),
        "pooler.weight": get("pooler.dense.weight"),
        "pooler.bias": get("pooler.dense.bias"),
    }
    for i in range(config.n_layer):
        p = f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [get(f"{p}attention.self.{n}.{kind}") for n in ("query", "key", "value")]
            )
            out[f"blocks.{i}.attn.proj.{kind}"] = get(f"{p}attention.output.dense.{kind}")
            out[f"blocks.{i}.norm1.{kind}"] = get(f"{p}attention.output.LayerNorm.{kind}")
            out[f"blocks.{i}.ffn.fc.{kind}"] = get(f"{p}intermediate.dense.{kind}")
            out[f"blocks.{i}.ffn.proj.{kind}"] = get(f"{p}output.dense.{kind}")
            out[f"blocks.{i}.norm2.{kind}"] = get(f"{p}output.LayerNorm.{kind}")
    heads = {
        "mlm_dense.weight": "cls.predictions.transform.dense.weight",
        "mlm_dense.bias": "cls.predictions.transform.dense.bias",
        "mlm_norm.weight": "cls.predictions.transform.LayerNorm.weight",
        "mlm_norm.bias": "cls.predictions.transform.LayerNorm.bias",
        "mlm_bias": "cls.predictions.bias",
        "nsp_head.weight": "cls.seq_relationship.weight",
        "nsp_head.bias": "cls.seq_relationship.bias",
    }
    for ours, theirs in heads.items():
        if theirs in sd:
            out[ours] = sd[theirs]
    return out


def bert_config_from_hf(hf_config: object) -> BertConfig:
    """A :class:`BertConfig` equivalent to a Hugging Face ``BertConfig`` (absolute positions only)."""
    act = getattr(hf_config, "hidden_act", "gelu")
    acts: dict[str, Literal["gelu", "gelu_erf", "relu"]] = {
        "gelu": "gelu_erf",
        "gelu_new": "gelu",
        "relu": "relu",
    }
    if act not in acts:
        raise ScratchLLMError(f"unsupported Hugging Face BERT activation {act!r}")
    return BertConfig(
        vocab_size=hf_config.vocab_size,
        context_length=hf_config.max_position_embeddings,
        n_layer=hf_config.num_hidden_layers,
        n_head=hf_config.num_attention_heads,
        n_embd=hf_config.hidden_size,
        ffn_hidden=hf_config.intermediate_size,
        type_vocab_size=hf_config.type_vocab_size,
        dropout=hf_config.hidden_dropout_prob,
        norm_eps=hf_config.layer_norm_eps,
        activation=acts[act],
        norm_position="post",
    )


# ----------------------------------------------------------------------------- inference: fill-mask


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
    from scratchllm.data.mlm import BertSpecialIds

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
