"""Show a model's size: parameters, memory, FLOPs per token and the layer table.

Works on a saved model (--model) or on a config alone (--preset / --config / --set), in which
case nothing is allocated: the model is built on PyTorch's "meta" device, so even GPT-2 XL
(1.5B parameters) is inspected instantly.

examples:
  scratchllm inspect --preset gpt2
  scratchllm inspect --preset gpt2 --set n_layer=6 --set pos_emb=rope --json
  scratchllm inspect --model runs/demo
  scratchllm inspect --list-presets
  scratchllm inspect --model runs/demo --attention-plot attn.png --text "The function returns"
  scratchllm inspect --model runs/demo --embedding-plot emb.png
  scratchllm inspect --model runs/demo --text "The king" --tokens        # tokens, ids, BPE merge replay
  scratchllm inspect --model runs/demo --text "The king" --logit-lens    # each layer's guess, each position
  scratchllm inspect --model runs/demo --text "The king" --next-token --temperature 0.7 --top-k 5
  scratchllm inspect --preset gpt2-xl --strategy fsdp --world-size 8 --device cuda

The numbers are the ones the playground (scratchllm serve, at /) shows: both call scratchllm.inspect.

--strategy / --world-size add the training memory *per process* (weights, gradients, AdamW state,
what FSDP gathers or DDP's buckets, activations with and without activation checkpointing) for
micro-batches of the config's batch_size x context_length, so you know before launching whether a
run fits. --device cuda counts bf16 compute (autocast / FSDP's mixed precision).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from scratchllm.cli.common import add_config_args, add_json_arg, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="a run directory, a checkpoint, or a Hugging Face GPT-2 directory")
    add_config_args(p)
    p.add_argument("--list-presets", action="store_true", help="list the named presets and exit")
    mem = p.add_argument_group("training memory per process")
    mem.add_argument(
        "--strategy", choices=("ddp", "fsdp"), default=None, help="how the processes share the work"
    )
    mem.add_argument("--world-size", type=int, default=None, metavar="K", help="number of processes")
    mem.add_argument(
        "--device", default="cpu", help="cpu (fp32) or cuda (bf16 compute) for the training estimate"
    )
    pics = p.add_argument_group("pictures (need --model)")
    pics.add_argument("--attention-plot", metavar="PNG", help="write every head's attention map for --text")
    pics.add_argument("--text", help="the text whose attention is drawn")
    pics.add_argument("--layer", type=int, default=None, help="which layer to draw (default: the last)")
    pics.add_argument("--embedding-plot", metavar="PNG", help="write a 2-D PCA map of the token embeddings")
    pics.add_argument("--force", action="store_true", help="overwrite an existing picture")
    look = p.add_argument_group("inside the model on --text (need --model; what the playground shows)")
    look.add_argument(
        "--tokens", action="store_true", help="the tokens of --text, with ids (BPE: the merges)"
    )
    look.add_argument(
        "--logit-lens", action="store_true", help="each layer's top prediction at each position"
    )
    look.add_argument("--next-token", action="store_true", help="the sampling pipeline for the next token")
    look.add_argument(
        "--temperature", type=float, default=1.0, help="for --next-token (default 1; 0 = greedy)"
    )
    look.add_argument("--top-k", type=int, default=None, help="for --next-token")
    look.add_argument("--top-p", type=float, default=None, help="for --next-token")
    look.add_argument("--seed", type=int, default=0, help="for --next-token: the draw's seed")
    add_json_arg(p)


# --------------------------------------------------------------------------- the numbers
def _human(n: float, unit: str = "") -> str:
    for suffix, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}" if unit else f"{n / div:.2f}{suffix}"
    return f"{n:.0f}{unit}"


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.1f} MiB" if n_bytes < 2**30 else f"{n_bytes / 2**30:,.2f} GiB"


def layer_table(model: Any) -> list[dict[str, Any]]:
    """One row per parameter; identical rows of blocks 0..L-1 are folded into ``blocks.*.name``."""
    rows: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        m = re.match(r"^(.*?blocks)\.(\d+)\.(.*)$", name)
        key = f"{m.group(1)}.*.{m.group(3)}" if m else name
        row = rows.get(key)
        if row is None or row["shape"] != list(p.shape):
            key = name if row is not None else key
            rows[key] = {"name": key, "shape": list(p.shape), "params": p.numel(), "count": 1}
        else:
            row["count"] += 1
            row["params"] += p.numel()
    return list(rows.values())


def tied_parameters(model: Any) -> list[list[str]]:
    """Groups of parameter names that share one tensor (e.g. tok_emb.weight + out_head.weight)."""
    seen: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        seen.setdefault(id(p), []).append(name)
    return [names for names in seen.values() if len(names) > 1]


def summarize(model: Any, arch: str, config: Any) -> dict[str, Any]:
    """Everything ``inspect`` reports, as a JSON-able dict."""
    import dataclasses

    total = sum(p.numel() for p in model.parameters())
    tied = tied_parameters(model)
    tied_extra = sum(
        dict(model.named_parameters(remove_duplicate=False))[g[0]].numel() * (len(g) - 1) for g in tied
    )
    if hasattr(model, "num_params"):
        non_embedding = model.num_params(exclude_embeddings=True)
    else:
        non_embedding = total - sum(
            m.weight.numel() for m in model.modules() if type(m).__name__ == "Embedding"
        )
    info: dict[str, Any] = {
        "architecture": arch,
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config,
        "params": total,
        "params_if_untied": total + tied_extra,
        "params_non_embedding": non_embedding,
        "tied": tied,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "memory_bytes": {
            "fp32": total * 4,
            "bf16": total * 2,
            # weights + gradients + AdamW's two moment buffers, all fp32; activations not included
            "train_adamw_fp32": total * 16,
        },
    }
    if hasattr(model, "estimate_flops_per_token"):
        info["flops_per_token"] = {
            "forward": model.estimate_flops_per_token(training=False),
            "train": model.estimate_flops_per_token(training=True),
            "at_seq_len": config.context_length,
        }
    if hasattr(config, "kv_heads") and hasattr(config, "n_layer"):
        # K and V, per layer, per key/value head: what one more token of context costs at inference.
        info["kv_cache_bytes_per_token_fp32"] = 2 * config.n_layer * config.kv_heads * config.head_dim * 4
    info["layers"] = layer_table(model)
    return info


def _print_report(info: dict[str, Any], source: str) -> None:
    w = sys.stdout.write
    cfg = info["config"]
    w(f"{source}  (architecture: {info['architecture']})\n")
    if isinstance(cfg, dict):
        keys = [
            k
            for k in ("n_layer", "n_head", "n_kv_head", "n_embd", "context_length", "vocab_size")
            if k in cfg
        ]
        keys += [
            k
            for k in ("pos_emb", "norm", "norm_position", "activation", "n_experts", "tie_weights")
            if k in cfg
        ]
        w("  " + "  ".join(f"{k}={cfg[k]}" for k in keys) + "\n")
    w("\nparameters\n")
    w(f"  total                 {info['params']:>16,}  ({_human(info['params'])})\n")
    if info["tied"]:
        shared = "; ".join(" = ".join(g) for g in info["tied"])
        w(f"  if untied             {info['params_if_untied']:>16,}  (shared: {shared})\n")
    w(f"  non-embedding         {info['params_non_embedding']:>16,}\n")
    if info["trainable_params"] != info["params"]:
        w(f"  trainable             {info['trainable_params']:>16,}\n")
    mem = info["memory_bytes"]
    w("\nmemory (weights)\n")
    w(f"  fp32                  {_mib(mem['fp32']):>16}\n")
    w(f"  bf16                  {_mib(mem['bf16']):>16}\n")
    train = _mib(mem["train_adamw_fp32"])
    w(f"  training, AdamW fp32  {train:>16}  (weights+grads+2 moments; no activations)\n")
    if "kv_cache_bytes_per_token_fp32" in info:
        w(f"  KV cache per token    {info['kv_cache_bytes_per_token_fp32'] / 1024:>12,.1f} KiB  (fp32)\n")
    if "flops_per_token" in info:
        f = info["flops_per_token"]
        w(f"\nFLOPs per token (sequence length {f['at_seq_len']})\n")
        w(f"  forward               {_human(f['forward'], 'FLOP'):>16}\n")
        w(f"  training (fwd+bwd)    {_human(f['train'], 'FLOP'):>16}\n")
    w("\nlayers\n")
    rows = info["layers"]
    width = max(len(r["name"]) + (len(f" x{r['count']}") if r["count"] > 1 else 0) for r in rows)
    w(f"  {'name'.ljust(width)}  {'shape':<16} {'params':>14}\n")
    for r in rows:
        name = r["name"] + (f" x{r['count']}" if r["count"] > 1 else "")
        shape = "x".join(map(str, r["shape"]))
        w(f"  {name.ljust(width)}  {shape:<16} {r['params']:>14,}\n")


def training_memory(model: Any, train_cfg: Any, world_size: int, device: str) -> dict[str, Any]:
    """Per-process training memory (bytes) of ``model`` under ``train_cfg.strategy`` on ``world_size``
    processes, without and with activation checkpointing (:func:`scratchllm.train.estimate.estimate_run`)."""
    import dataclasses

    from scratchllm.train.estimate import estimate_run

    seq_len = getattr(model.config, "context_length", None) or getattr(model.config, "max_len", 1)
    out: dict[str, Any] = {
        "strategy": train_cfg.strategy if world_size > 1 else "single",
        "world_size": world_size,
        "device": device,
        "batch_size": train_cfg.batch_size,
        "seq_len": seq_len,
    }
    for key, ckpt in (("bytes", False), ("bytes_activation_checkpointing", True)):
        est = estimate_run(
            model,
            dataclasses.replace(train_cfg, activation_checkpointing=ckpt),
            batch_size=train_cfg.batch_size,
            seq_len=seq_len,
            device=device,
            world_size=world_size,
            processes_sharing_memory=1,
            available_bytes=None,
        )
        out[key] = est.parts()
    return out


def _print_training_memory(mem: dict[str, Any]) -> None:
    w = sys.stdout.write
    who = f"{mem['strategy']}, {mem['world_size']} process(es), {mem['device']}"
    w(f"\ntraining memory per process ({who}; micro-batch {mem['batch_size']} x {mem['seq_len']})\n")
    plain, ckpt = mem["bytes"], mem["bytes_activation_checkpointing"]
    w(f"  {'':22}{'':>16}  {'activation checkpointing':>24}\n")
    for name in plain:
        other = _mib(ckpt[name]) if ckpt[name] != plain[name] else ""
        w(f"  {name:<22}{_mib(plain[name]):>16}  {other:>24}\n")


def _list_presets(as_json: bool) -> int:
    from scratchllm.model.config import PRESETS

    if as_json:
        print_json(
            {
                k: {"description": v["description"], **{s: v[s] for s in ("model", "train") if s in v}}
                for k, v in PRESETS.items()
            }
        )
        return 0
    width = max(map(len, PRESETS))
    for name, spec in PRESETS.items():
        print(f"{name.ljust(width)}  {spec['description']}")
    return 0


def _pictures(args: argparse.Namespace, model: Any, tokenizer: Any) -> list[dict[str, Any]]:
    from scratchllm.visualize import plot_attention, plot_embeddings

    done = []
    if args.attention_plot:
        done.append(plot_attention(model, tokenizer, args.text, args.attention_plot, layer=args.layer))
    if args.embedding_plot:
        done.append(plot_embeddings(model, tokenizer, args.embedding_plot))
    if not args.json:
        for pic in done:
            print(f"wrote {pic['path']}", file=sys.stderr)
    return done


def _show(piece: str) -> str:
    return piece.replace(" ", "␣").replace("\n", "\\n").replace("\t", "\\t") or "∅"


def _looks(args: argparse.Namespace, loaded: Any) -> dict[str, Any]:
    """--tokens / --logit-lens / --next-token: scratchllm.inspect's numbers, printed unless --json."""
    from scratchllm import inspect as ins

    model, tok = loaded.model, loaded.tokenizer
    out: dict[str, Any] = {}
    w = sys.stdout.write
    if args.tokens:
        d = out["tokens"] = ins.tokenize(tok, args.text)
        if not args.json:
            w(f"{len(d['tokens'])} tokens ({d['kind']} tokenizer, vocabulary {d['vocab_size']:,})\n")
            w("  " + " ".join(f"{_show(t['text'])}:{t['id']}" for t in d["tokens"]) + "\n")
            for word in d["merges"] or []:
                w("  " + "  ->  ".join(" ".join(_show(p) for p in parts) for parts in word["steps"]) + "\n")
    if args.logit_lens:
        d = out["logit_lens"] = ins.logit_lens(model, tok, args.text)
        if not args.json:
            w("\nlogit lens: the top next-token guess after each layer (0 = the embedding)\n")
            w("  " + "layer".ljust(6) + " ".join(_show(t)[:4].ljust(4) for t in d["tokens"]) + "\n")
            for row in d["layers"]:
                w(
                    f"  {row['layer']:<6}"
                    + " ".join(_show(c[0]["text"])[:4].ljust(4) for c in row["top"])
                    + "\n"
                )
    if args.next_token:
        logits = ins.next_token_logits(model, tok, args.text)
        d = out["next_token"] = ins.sampling_pipeline(
            logits,
            tok,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            show=10,
        )
        if not args.json:
            names = [s["name"] for s in d["stages"]]
            w("\nnext token: " + " -> ".join(names) + "\n")
            w("  " + "token".ljust(10) + "".join(n[:14].rjust(15) for n in names) + "\n")
            for i, c in enumerate(d["candidates"]):
                w(
                    "  "
                    + _show(c["text"])[:10].ljust(10)
                    + "".join(f"{s['p'][i]:15.2%}" for s in d["stages"])
                    + "\n"
                )
            w("  " + "kept".ljust(10) + "".join(f"{s['kept']:15,}" for s in d["stages"]) + "\n")
            w(f"  sampled (seed {d['seed']}): {_show(d['sampled']['text'])} (p = {d['sampled']['p']:.2%})\n")
    return out


def run(args: argparse.Namespace) -> int:
    from scratchllm.errors import ScratchLLMError

    if args.list_presets:
        return _list_presets(args.json)
    looks = args.tokens or args.logit_lens or args.next_token
    if looks and not (args.model and args.text):
        raise ScratchLLMError("--tokens, --logit-lens and --next-token need --model RUN and --text TEXT")
    if (args.attention_plot or args.embedding_plot) and not args.model:
        raise ScratchLLMError("--attention-plot and --embedding-plot need a trained model: pass --model RUN")
    if args.attention_plot and not args.text:
        raise ScratchLLMError("--attention-plot needs --text: the text whose attention to draw")
    for pic in (args.attention_plot, args.embedding_plot):
        if pic and Path(pic).exists() and not args.force:
            raise ScratchLLMError(f"{pic} already exists; choose another path or pass --force")
    if args.model and (args.preset or args.config or args.overrides):
        raise ScratchLLMError("give either --model or a config (--preset/--config/--set), not both")

    if args.world_size is not None and args.world_size < 1:
        raise ScratchLLMError(f"--world-size must be >= 1 (got {args.world_size})")
    import torch

    train_cfg = None
    if args.model:
        from scratchllm.load import load_model

        loaded = load_model(args.model, device="cpu")
        if looks:
            found = _looks(args, loaded)
            if args.json:
                print_json(found)
            return 0
        model, arch, config, source = loaded.model, loaded.arch, loaded.model.config, loaded.source
    else:
        from scratchllm.architectures import get_architecture
        from scratchllm.config import resolve_configs
        from scratchllm.model.config import get_preset
        from scratchllm.train.config import TrainConfig

        # Train keys (from a preset, a shared TOML file or --set) are accepted and simply unused.
        preset = get_preset(args.preset) if args.preset else None
        arch = (preset or {}).get("arch", "gpt")
        record = get_architecture(arch)
        sections = {"model": record.config(), "train": TrainConfig()}
        preset_sections = {k: v for k, v in (preset or {}).items() if k in sections}
        resolved = resolve_configs(
            sections, preset=preset_sections or None, config_file=args.config, overrides=args.overrides
        )
        config, train_cfg = resolved["model"], resolved["train"]
        with torch.device("meta"):  # shapes only: no memory is allocated, nothing is initialised
            model = record.model(config)
        source = f"preset {args.preset}" if args.preset else "config"
    info = summarize(model, arch, config)
    info["source"] = source
    if args.strategy or args.world_size:
        import dataclasses

        from scratchllm.train.config import TrainConfig

        train_cfg = train_cfg or TrainConfig()
        if args.strategy:
            train_cfg = dataclasses.replace(train_cfg, strategy=args.strategy)
        info["training_memory"] = training_memory(model, train_cfg, args.world_size or 1, args.device)
    if args.attention_plot or args.embedding_plot:
        info["pictures"] = _pictures(args, model, loaded.tokenizer if args.model else None)
    if args.json:
        print_json(info)
    else:
        _print_report(info, source)
        if "training_memory" in info:
            _print_training_memory(info["training_memory"])
    return 0
