"""Hugging Face BERT -> scratchllm BERT: the config and the weight names.

Our :class:`~scratchllm.model.bert.BertModel` with its default switches computes what Hugging
Face's ``BertForPreTraining`` computes, so loading its weights is bookkeeping: separate
``query``/``key``/``value`` matrices become our fused ``qkv``, and the names change. The tests load
a random ``BertForPreTraining`` this way and compare logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor

from scratchllm.errors import ScratchLLMError
from scratchllm.model.bert import BertConfig


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
