"""Hugging Face GPT-2 ⇄ scratchllm GPT: configs, weight names, files.

scratchllm's :class:`~scratchllm.model.gpt.GPTModel` with its default switches *is* GPT-2, so a
conversion is pure bookkeeping. There are three kinds of difference, and this module handles them
in that order:

1. **Config names.** ``transformers`` calls the context length ``n_positions``, the LayerNorm
   epsilon ``layer_norm_epsilon``, and the GELU flavour ``gelu_new`` (the tanh approximation,
   which is what our ``activation="gelu"`` computes).
2. **Parameter names.** ``transformer.h.3.attn.c_attn.weight`` is our
   ``blocks.3.attn.qkv.weight``; the full table is :data:`BLOCK_PARAMS` / :data:`TOP_PARAMS`.
   The ``transformer.`` prefix is there in files written by ``save_pretrained`` and absent in
   OpenAI's original upload, so both spellings are accepted.
3. **Layout.** GPT-2 was written in TensorFlow, where a dense layer stores its weight as
   ``[in, out]``. ``transformers`` kept that layout in its ``Conv1D`` module, while ``nn.Linear``
   stores ``[out, in]``. So ``c_attn``, ``attn.c_proj``, ``mlp.c_fc`` and ``mlp.c_proj`` must be
   transposed. Three of them are rectangular and a forgotten transpose fails loudly with a shape
   error — but ``attn.c_proj`` is square (``[C, C]``), loads without complaint, and produces a
   model that is quietly wrong. Only comparing logits against ``transformers`` catches that,
   which is why the tests do exactly that.

Two more details: GPT-2 ties the output head to the token embedding (``lm_head.weight`` is either
absent from the file or a copy of ``wte.weight``), and old checkpoints also store each layer's
causal-mask buffers (``attn.bias``, ``attn.masked_bias``), which are not weights and are skipped.

The public entry points are :func:`load_hf_gpt2` (a Hugging Face directory → a ready model and
tokenizer; :func:`scratchllm.load.load_model` calls it) and :func:`export_hf_gpt2`
(our model and tokenizer → a directory ``GPT2LMHeadModel.from_pretrained`` reads).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.io import atomic_write_bytes, atomic_write_json, ensure_empty_dir, read_json
from scratchllm.model.config import GPTConfig

if TYPE_CHECKING:
    from torch import Tensor, nn

    from scratchllm.tokenizer.base import Tokenizer

#: What :func:`load_hf_gpt2` reports as the kind of input it found.
SOURCE = "Hugging Face GPT-2 directory"

# --------------------------------------------------------------------------------------------
# 1. Config: Hugging Face's GPT2Config fields <-> GPTConfig
# --------------------------------------------------------------------------------------------

#: The defaults of ``transformers.GPT2Config``. A config.json may leave any of these out, and
#: ``transformers`` then uses these values, so we must too.
HF_GPT2_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_new",
    "resid_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}

#: ``transformers`` activation names that compute GPT-2's tanh-approximated GELU, which is what
#: our ``activation="gelu"`` is. (``"gelu"`` there means the exact erf form: a different function.)
TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def hf_config_to_gpt(hf_config: Mapping[str, Any], *, keep_dropout: bool = False) -> GPTConfig:
    """Translate a Hugging Face GPT-2 ``config.json`` (as a dict) into a :class:`GPTConfig`.

    Dropout is set to 0 unless ``keep_dropout`` is true: an imported model is usually used for
    inference, and a fine-tune sets its own. With ``keep_dropout`` the config's ``resid_pdrop``
    is used (GPT-2 uses the same value, 0.1, for all three of its dropout rates, and our model has
    one rate).
    """
    model_type = hf_config.get("model_type")
    if model_type != "gpt2":
        raise ScratchLLMError(
            f"config.json says model_type {model_type!r}; scratchllm imports only GPT-2 checkpoints "
            "(model_type 'gpt2')"
        )
    c = {**HF_GPT2_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None}}
    activation = c["activation_function"]
    if activation not in TANH_GELU_NAMES:
        raise ScratchLLMError(
            f"config.json uses activation_function {activation!r}; scratchllm's GPT computes GPT-2's "
            f"tanh GELU, which transformers calls one of {', '.join(TANH_GELU_NAMES)}"
        )
    unsupported = {
        "add_cross_attention": (True, "cross-attention layers (an encoder-decoder GPT-2)"),
        "scale_attn_weights": (False, "unscaled attention scores"),
        "scale_attn_by_inverse_layer_idx": (True, "attention scores scaled by 1/layer index"),
    }
    for key, (bad_value, what) in unsupported.items():
        if bool(c[key]) == bad_value:
            raise ScratchLLMError(
                f"config.json sets {key}={c[key]} ({what}); scratchllm's GPT has no such option"
            )
    # A few old configs spell the context length n_ctx only.
    context_length = hf_config.get("n_positions", hf_config.get("n_ctx", c["n_positions"]))
    return GPTConfig(
        vocab_size=int(c["vocab_size"]),
        context_length=int(context_length),
        n_layer=int(c["n_layer"]),
        n_head=int(c["n_head"]),
        n_embd=int(c["n_embd"]),
        ffn_hidden=None if c["n_inner"] is None else int(c["n_inner"]),
        dropout=float(c["resid_pdrop"]) if keep_dropout else 0.0,
        bias=True,
        qkv_bias=True,
        tie_weights=bool(c["tie_word_embeddings"]),
        pos_emb="learned",
        norm="layernorm",
        norm_position="pre",
        norm_eps=float(c["layer_norm_epsilon"]),
        activation="gelu",
    )


def export_blockers(cfg: GPTConfig) -> list[str]:
    """The switches of ``cfg`` that GPT-2 has no equivalent for (empty: exportable).

    Missing biases are *not* a blocker: a layer without a bias is the same function as one whose
    bias is zero, so those are exported as zeros (the book's ``qkv_bias=False`` models included).
    Neither are ``zero_init_proj`` (only the starting point differs) nor an untied head.
    """
    reasons = []
    if cfg.pos_emb != "learned":
        reasons.append(f"pos_emb={cfg.pos_emb!r} (GPT-2 has learned absolute position embeddings)")
    if cfg.norm != "layernorm":
        reasons.append(f"norm={cfg.norm!r} (GPT-2 uses LayerNorm)")
    if cfg.norm_position != "pre":
        reasons.append(f"norm_position={cfg.norm_position!r} (GPT-2 normalises before each sub-layer)")
    if cfg.activation != "gelu":
        reasons.append(f"activation={cfg.activation!r} (GPT-2's feed-forward uses GELU)")
    if cfg.kv_heads != cfg.n_head:
        reasons.append(f"n_kv_head={cfg.n_kv_head} (GPT-2 has no grouped-query attention)")
    if cfg.n_experts:
        reasons.append(f"n_experts={cfg.n_experts} (GPT-2 has no Mixture-of-Experts layers)")
    if cfg.qk_norm:
        reasons.append("qk_norm=True (GPT-2 does not normalise queries and keys)")
    if cfg.logit_softcap:
        reasons.append(f"logit_softcap={cfg.logit_softcap} (GPT-2's logits are not capped)")
    return reasons


def check_exportable(cfg: GPTConfig) -> None:
    """Raise a clear error naming each switch that keeps ``cfg`` from being a GPT-2."""
    reasons = export_blockers(cfg)
    if reasons:
        raise ScratchLLMError(
            "cannot export to the Hugging Face GPT-2 format: this model uses " + "; ".join(reasons) + ". "
            "Only GPT-2-compatible models (the default switches) can be exported"
        )


def gpt_to_hf_config(
    cfg: GPTConfig, *, bos_token_id: int | None = 50256, eos_token_id: int | None = 50256
) -> dict[str, Any]:
    """The ``config.json`` that makes ``GPT2LMHeadModel`` build the same network as ``cfg``."""
    check_exportable(cfg)
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_ctx": cfg.context_length,  # the legacy spelling, for old readers
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None if cfg.hidden_dim == 4 * cfg.n_embd else cfg.hidden_dim,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": cfg.init_std,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_weights,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "use_cache": True,
    }


# --------------------------------------------------------------------------------------------
# 2. Weights: the name table and the Conv1D transposes
# --------------------------------------------------------------------------------------------

# (our name, Hugging Face name without "transformer.", stored transposed?, which bias switch)
# "{i}" is the block index. The bias switch says which config flag decides whether our model has
# that tensor at all: "bias" (cfg.bias), "qkv_bias" (cfg.use_qkv_bias), or None (always there).
TOP_PARAMS: list[tuple[str, str, bool, str | None]] = [
    ("tok_emb.weight", "wte.weight", False, None),
    ("pos_emb.weight", "wpe.weight", False, None),
    ("final_norm.weight", "ln_f.weight", False, None),
    ("final_norm.bias", "ln_f.bias", False, "bias"),
]
BLOCK_PARAMS: list[tuple[str, str, bool, str | None]] = [
    ("blocks.{i}.norm1.weight", "h.{i}.ln_1.weight", False, None),
    ("blocks.{i}.norm1.bias", "h.{i}.ln_1.bias", False, "bias"),
    ("blocks.{i}.attn.qkv.weight", "h.{i}.attn.c_attn.weight", True, None),
    ("blocks.{i}.attn.qkv.bias", "h.{i}.attn.c_attn.bias", False, "qkv_bias"),
    ("blocks.{i}.attn.proj.weight", "h.{i}.attn.c_proj.weight", True, None),  # square: the trap
    ("blocks.{i}.attn.proj.bias", "h.{i}.attn.c_proj.bias", False, "bias"),
    ("blocks.{i}.norm2.weight", "h.{i}.ln_2.weight", False, None),
    ("blocks.{i}.norm2.bias", "h.{i}.ln_2.bias", False, "bias"),
    ("blocks.{i}.ffn.fc.weight", "h.{i}.mlp.c_fc.weight", True, None),
    ("blocks.{i}.ffn.fc.bias", "h.{i}.mlp.c_fc.bias", False, "bias"),
    ("blocks.{i}.ffn.proj.weight", "h.{i}.mlp.c_proj.weight", True, None),
    ("blocks.{i}.ffn.proj.bias", "h.{i}.mlp.c_proj.bias", False, "bias"),
]
HF_PREFIX = "transformer."
HF_HEAD = "lm_head.weight"
OUR_HEAD = "out_head.weight"
# The per-layer causal-mask buffers that older GPT-2 files carry (not weights).
_HF_MASK_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


def _our_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor in the table, in our (nn.Linear, ``[out, in]``) layout."""
    C, H, V = cfg.n_embd, cfg.hidden_dim, cfg.vocab_size
    qkv = (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "tok_emb.weight": (V, C),
        "pos_emb.weight": (cfg.context_length, C),
        "final_norm.weight": (C,),
        "final_norm.bias": (C,),
    }
    per_block = {
        "norm1.weight": (C,),
        "norm1.bias": (C,),
        "attn.qkv.weight": (qkv, C),
        "attn.qkv.bias": (qkv,),
        "attn.proj.weight": (C, C),
        "attn.proj.bias": (C,),
        "norm2.weight": (C,),
        "norm2.bias": (C,),
        "ffn.fc.weight": (H, C),
        "ffn.fc.bias": (H,),
        "ffn.proj.weight": (C, H),
        "ffn.proj.bias": (C,),
    }
    for i in range(cfg.n_layer):
        shapes.update({f"blocks.{i}.{name}": shape for name, shape in per_block.items()})
    return shapes


def param_table(cfg: GPTConfig) -> list[tuple[str, str, bool, tuple[int, ...], bool]]:
    """Every mapped tensor of a model with config ``cfg``, expanded over its blocks.

    Rows are ``(our name, HF name, transposed?, our shape, present in our model?)``; the output
    head is handled separately because of weight tying.
    """
    has = {None: True, "bias": cfg.bias, "qkv_bias": cfg.use_qkv_bias}
    shapes = _our_shapes(cfg)
    rows = [(ours, hf, t, shapes[ours], has[switch]) for ours, hf, t, switch in TOP_PARAMS]
    for i in range(cfg.n_layer):
        for ours, hf, t, switch in BLOCK_PARAMS:
            name = ours.format(i=i)
            rows.append((name, hf.format(i=i), t, shapes[name], has[switch]))
    return rows


def _listing(names: list[str], limit: int = 6) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def hf_state_dict_to_ours(sd: Mapping[str, Tensor], cfg: GPTConfig) -> dict[str, Tensor]:
    """Rename and transpose a Hugging Face GPT-2 state dict into our parameter names.

    Accepts names with or without the ``transformer.`` prefix, skips the causal-mask buffers, and
    checks every tensor: a missing, unexpected or wrongly shaped tensor is a
    :class:`ScratchLLMError` naming it. The result has ``out_head.weight`` (the very same tensor as
    ``tok_emb.weight`` when tied) and can go straight into ``GPTModel.load_state_dict``.
    """
    hf: dict[str, Tensor] = {}
    for key, tensor in sd.items():
        name = key[len(HF_PREFIX) :] if key.startswith(HF_PREFIX) else key
        if not _HF_MASK_BUFFER.match(name):
            hf[name] = tensor
    head = hf.pop(HF_HEAD, None)

    rows = param_table(cfg)
    missing = [hf_name for _, hf_name, _, _, present in rows if present and hf_name not in hf]
    if missing:
        raise ScratchLLMError(
            f"the Hugging Face weights lack {len(missing)} tensor(s) the config needs: {_listing(missing)} "
            "(is the download complete, and does config.json belong to these weights?)"
        )
    known = {hf_name for _, hf_name, _, _, _ in rows}
    unexpected = sorted(k for k in hf if k not in known)
    if unexpected:
        raise ScratchLLMError(
            f"the Hugging Face weights have {len(unexpected)} tensor(s) a GPT-2 with this config does not: "
            f"{_listing(unexpected)} (does config.json belong to these weights?)"
        )

    ours: dict[str, Tensor] = {}
    for our_name, hf_name, transposed, shape, present in rows:
        if hf_name not in hf:  # an optional bias our model does not have either
            continue
        tensor = hf[hf_name]
        hf_shape = shape[::-1] if transposed else shape
        if tuple(tensor.shape) != hf_shape:
            raise ScratchLLMError(
                f"Hugging Face tensor {hf_name} has shape {list(tensor.shape)} but config.json implies "
                f"{list(hf_shape)} (for our {our_name}); the config and the weights do not match"
            )
        if not present:
            # Our model has no bias here: only an all-zero bias can be dropped without changing it.
            if torch.count_nonzero(tensor):
                raise ScratchLLMError(
                    f"Hugging Face tensor {hf_name} is a non-zero bias but the target config has none "
                    "(set bias/qkv_bias to true)"
                )
            continue
        ours[our_name] = tensor.t().contiguous() if transposed else tensor

    vocab_shape = _our_shapes(cfg)["tok_emb.weight"]
    if head is not None and tuple(head.shape) != vocab_shape:
        raise ScratchLLMError(
            f"Hugging Face tensor {HF_HEAD} has shape {list(head.shape)} but config.json implies "
            f"{list(vocab_shape)}"
        )
    if cfg.tie_weights:
        if head is not None and not torch.equal(head, hf["wte.weight"]):
            raise ScratchLLMError(
                f"config.json says tie_word_embeddings=true but {HF_HEAD} differs from wte.weight; "
                "set tie_word_embeddings to false in config.json if the head is really separate"
            )
        ours[OUR_HEAD] = ours["tok_emb.weight"]
    else:
        if head is None:
            raise ScratchLLMError(
                f"config.json says tie_word_embeddings=false but the weights have no {HF_HEAD}"
            )
        ours[OUR_HEAD] = head
    return ours


def ours_to_hf_state_dict(sd: Mapping[str, Tensor], cfg: GPTConfig) -> dict[str, Tensor]:
    """The inverse of :func:`hf_state_dict_to_ours`: our parameters → ``save_pretrained``'s layout.

    Names get the ``transformer.`` prefix, Conv1D weights are transposed back to ``[in, out]``,
    biases our model does not have are written as zeros (GPT-2 always has them), and a tied head is
    left out (``transformers`` re-ties ``lm_head`` to ``wte`` on load). Every tensor is a fresh
    contiguous one, so the dict can be handed to ``safetensors`` as is.
    """
    check_exportable(cfg)
    rest = dict(sd)
    rows = param_table(cfg)
    missing = [ours for ours, _, _, _, present in rows if present and ours not in rest]
    if missing:
        raise ScratchLLMError(f"the model state lacks {len(missing)} tensor(s): {_listing(missing)}")
    reference = rest["tok_emb.weight"]
    hf: dict[str, Tensor] = {}
    for our_name, hf_name, transposed, shape, present in rows:
        if present:
            tensor = rest.pop(our_name).detach()
            if tuple(tensor.shape) != shape:
                raise ScratchLLMError(
                    f"model tensor {our_name} has shape {list(tensor.shape)} "
                    f"but its config implies {list(shape)}"
                )
        else:
            tensor = torch.zeros(shape, dtype=reference.dtype, device=reference.device)
        hf[HF_PREFIX + hf_name] = (tensor.t() if transposed else tensor).contiguous().clone()

    head = rest.pop(OUR_HEAD, None)
    if not cfg.tie_weights:
        if head is None:
            raise ScratchLLMError(f"the model state lacks {OUR_HEAD} (tie_weights is false)")
        hf[HF_HEAD] = head.detach().contiguous().clone()
    if rest:
        raise ScratchLLMError(
            f"the model has {len(rest)} tensor(s) GPT-2 has no place for: {_listing(sorted(rest))} "
            "(merge LoRA adapters first with 'scratchllm lora merge')"
        )
    return hf


# --------------------------------------------------------------------------------------------
# 3. Files: reading a Hugging Face directory
# --------------------------------------------------------------------------------------------

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from scratchllm.weights import read_safetensors

    tensors, _ = read_safetensors(path)  # validates the header first: clear errors for bad files
    return tensors


def _read_torch_bin(path: Path) -> dict[str, Tensor]:
    import pickle

    try:
        # weights_only=True: a pickle may only rebuild tensors and plain containers, never run
        # code, so a malicious pytorch_model.bin cannot do anything on load.
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ScratchLLMError(f"could not read {path} safely: {first_line}") from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ScratchLLMError(f"{path} does not hold a state dict of tensors")
    return data


def _read_sharded(index_path: Path, read_one: Any) -> dict[str, Tensor]:
    index = read_json(index_path, "weights index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise ScratchLLMError(f"{index_path} has no 'weight_map'; is it a Hugging Face weights index?")
    tensors: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise ScratchLLMError(f"weight shard {shard_path} listed in {index_path.name} is missing")
        tensors.update(read_one(shard_path))
    return tensors


def read_hf_weights(hf_dir: str | Path) -> dict[str, Tensor]:
    """All tensors of a Hugging Face model directory, by their names in the files (on the CPU).

    Looks for, in order: ``model.safetensors``, a sharded ``model.safetensors.index.json``,
    ``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``), or its sharded index.
    """
    d = Path(hf_dir)
    if (d / "model.safetensors").is_file():
        return _read_safetensors(d / "model.safetensors")
    if (d / "model.safetensors.index.json").is_file():
        return _read_sharded(d / "model.safetensors.index.json", _read_safetensors)
    if (d / "pytorch_model.bin").is_file():
        return _read_torch_bin(d / "pytorch_model.bin")
    if (d / "pytorch_model.bin.index.json").is_file():
        return _read_sharded(d / "pytorch_model.bin.index.json", _read_torch_bin)
    raise ScratchLLMError(
        f"no weights in {d}: expected one of {', '.join(WEIGHT_FILES)} "
        "(e.g. 'hf download gpt2 --local-dir DIR' fetches model.safetensors)"
    )


def load_hf_gpt2(path: str | Path, device: str | torch.device = "cpu", *, keep_dropout: bool = False) -> Any:
    """Load a Hugging Face GPT-2 directory as a scratchllm ``GPTModel`` plus its tokenizer.

    The directory needs ``config.json``, the weights (see :func:`read_hf_weights`) and the
    tokenizer files (``vocab.json`` + ``merges.txt``, or ``tokenizer.json``). Returns the
    checkpoint module's ``LoadedModel``: the model in eval mode, the tokenizer, ``arch="gpt"``,
    ``config`` as the ``config.json`` document a run directory would have, and ``source``.
    """
    from scratchllm.model.gpt import GPTModel
    from scratchllm.runs import LoadedModel, check_vocab, run_config
    from scratchllm.tokenizer.gpt2 import load_gpt2_dir
    from scratchllm.weights import load_weights_into

    d = Path(path)
    if not d.is_dir():
        raise ScratchLLMError(f"Hugging Face model directory not found: {d}")
    hf_config = read_json(d / "config.json", "Hugging Face config")
    if not isinstance(hf_config, dict):
        raise ScratchLLMError(f"{d / 'config.json'} is not a JSON object")
    cfg = hf_config_to_gpt(hf_config, keep_dropout=keep_dropout)
    tokenizer = load_gpt2_dir(d)
    check_vocab(tokenizer, cfg, f"Hugging Face model in {d}")
    state = hf_state_dict_to_ours(read_hf_weights(d), cfg)
    model = GPTModel(cfg)
    load_weights_into(model, state, {}, f"converted weights of {d}")
    model.to(device).eval()
    doc = run_config(arch="gpt", model_config=cfg, extra={"converted_from": converted_from(d)})
    return LoadedModel(model=model, tokenizer=tokenizer, arch="gpt", config=doc, source=f"{SOURCE} {d}")


def converted_from(hf_dir: str | Path) -> dict[str, str]:
    """The provenance note stored in a converted run's ``config.json``."""
    return {"format": "huggingface-gpt2", "path": str(Path(hf_dir).resolve())}


# --------------------------------------------------------------------------------------------
# 4. Files: writing a Hugging Face directory
# --------------------------------------------------------------------------------------------


def _model_params(model: nn.Module) -> dict[str, Tensor]:
    """The model's parameters by name (tied ones under each name), without buffers, on the CPU."""
    buffers = {name for name, _ in model.named_buffers()}
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in buffers}


def check_gpt2_tokenizer(tokenizer: Tokenizer | None) -> None:
    """Raise unless ``tokenizer`` can be written as GPT-2 files that ``transformers`` reads the same.

    ``GPT2TokenizerFast`` always pre-splits text with GPT-2's regex, so a byte-level BPE trained
    with another pattern (e.g. GPT-4's) would be silently re-tokenised differently there.
    """
    from scratchllm.tokenizer.bpe import GPT2_PATTERN, BPETokenizer

    if tokenizer is None:
        raise ScratchLLMError("the model has no tokenizer; the Hugging Face GPT-2 format needs one")
    if not isinstance(tokenizer, BPETokenizer):
        raise ScratchLLMError(
            f"the model uses a {tokenizer.kind} tokenizer; the Hugging Face GPT-2 format needs a byte-level "
            "BPE tokenizer (train one with 'scratchllm tokenizer train --kind bpe' or use GPT-2's)"
        )
    if tokenizer.pattern != GPT2_PATTERN:
        raise ScratchLLMError(
            "the model's BPE tokenizer splits text with a non-GPT-2 pattern, which transformers' GPT-2 "
            "tokenizer cannot reproduce; only tokenizers trained with the 'gpt2' pattern can be exported"
        )


def export_hf_gpt2(
    model: nn.Module, tokenizer: Tokenizer, out_dir: str | Path, *, force: bool = False
) -> list[Path]:
    """Write ``model`` and ``tokenizer`` as a Hugging Face GPT-2 directory; return the files written.

    The directory holds ``config.json`` (``GPT2LMHeadModel``), ``model.safetensors`` in
    ``save_pretrained``'s layout, ``generation_config.json``, and the tokenizer as ``vocab.json`` +
    ``merges.txt`` + ``tokenizer_config.json``, so that ``GPT2LMHeadModel.from_pretrained(dir)``
    and ``AutoTokenizer.from_pretrained(dir)`` load it. An existing non-empty directory is refused
    unless ``force``. Weights keep their dtype.
    """
    from safetensors.torch import save as safetensors_bytes

    from scratchllm.runs import check_vocab
    from scratchllm.tokenizer.gpt2 import save_hf_vocab_merges

    cfg = getattr(model, "config", None)
    if not isinstance(cfg, GPTConfig):
        raise ScratchLLMError(f"only GPT models can be exported to GPT-2, not {type(model).__name__}")
    # Every check before the output directory is touched.
    check_exportable(cfg)
    check_gpt2_tokenizer(tokenizer)
    check_vocab(tokenizer, cfg)
    hf_state = ours_to_hf_state_dict(_model_params(model), cfg)
    out = ensure_empty_dir(out_dir, force=force, what="Hugging Face output directory")

    # Small files first, the big weights file last: a directory with model.safetensors is complete.
    written = [Path(p) for p in save_hf_vocab_merges(tokenizer, out) or []]
    eot = tokenizer.special_tokens.get("<|endoftext|>")
    tok_config: dict[str, Any] = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": cfg.context_length}
    if eot is not None:
        tok_config.update(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok_config["add_prefix_space"] = False
    files: dict[str, Any] = {
        "tokenizer_config.json": tok_config,
        "config.json": gpt_to_hf_config(cfg, bos_token_id=eot, eos_token_id=eot),
        "generation_config.json": {"bos_token_id": eot, "eos_token_id": eot},
    }
    for name, obj in files.items():
        atomic_write_json(out / name, obj)
        written.append(out / name)
    atomic_write_bytes(out / "model.safetensors", safetensors_bytes(hf_state, metadata={"format": "pt"}))
    written.append(out / "model.safetensors")
    return sorted(set(written))
