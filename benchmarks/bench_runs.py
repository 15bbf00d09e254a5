"""Run directories: memory of a checkpoint save, disk of a LoRA run, accuracy of the start-up estimate.

    python -m benchmarks.run --only runs            # quick: a 2-layer GPT-2-wide model
    python -m benchmarks.run --full --only runs     # GPT-2 small (124M)

* **Save memory.** A checkpoint of the model and its AdamW state is streamed tensor by tensor
  (``scratchllm.weights.write_safetensors``). The peer is what this project did before: the
  safetensors library's bytes API (``safetensors.torch.save``), a bytes object per file, then one
  write. The row is the *extra* peak RSS a save needs on top of a process that already holds the
  model and its optimizer state (sampled from ``/proc/self/statm`` every 2 ms in a fresh child).
  The library's own ``save_file`` also streams (its Rust writer); either way what matters is not
  holding a second copy of weights + moments.
* **LoRA disk.** A LoRA fine-tune (r = 8 on qkv/proj/fc, 2 steps) of a GPT-2-shaped base is stored
  on top of its base: the whole run directory (config, tokenizer, weights, the final checkpoint
  with its optimizer state, the adapter, metrics, plot) against the base's weights file. Target
  from the issue: ≤ 5 %.
* **Start-up estimate.** ``scratchllm train`` estimates the peak memory before anything is
  allocated and the run's time from one measured step; the rows compare both with what the run
  then took (the ``estimate`` event of ``metrics.jsonl`` against the last ``train`` event).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import Row

_RSS_SAMPLER = r"""
import threading, time


def current_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


class PeakRSS:
    # Peak resident memory while a block runs, above what the process held when it began.
    def __enter__(self):
        self.before = self.peak = current_rss_mb()
        self.done = False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.done:
            self.peak = max(self.peak, current_rss_mb())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.done = True
        self.thread.join()
        self.peak = max(self.peak, current_rss_mb())
        self.extra = self.peak - self.before
"""

_SAVE_CHILD = (
    _RSS_SAMPLER
    + r"""
import json, sys, tempfile, torch
from pathlib import Path
torch.manual_seed(0)
from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel
n_layer, n_embd, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
model = GPTModel(GPTConfig(n_layer=n_layer, n_embd=n_embd, n_head=4))
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
for p in model.parameters():
    p.grad = torch.zeros_like(p)
opt.step()  # creates the two moment buffers of every parameter
opt.zero_grad(set_to_none=True)
out = Path(tempfile.mkdtemp())
with PeakRSS() as watch:
    if how == "ours":
        from scratchllm.train.checkpoint import save_checkpoint
        save_checkpoint(out, step=1, model=model, optimizer=opt, trainer_state={}, update_latest=False)
    else:  # what scratchllm did before: safetensors' bytes API, then one write per file
        from safetensors.torch import save
        from scratchllm.train.checkpoint import optimizer_tensors
        from scratchllm.weights import weights_tensors
        parts = (("model", weights_tensors(model)), ("optimizer", optimizer_tensors(opt, model)))
        for name, (t, meta) in parts:
            data = save({k: v.contiguous() for k, v in t.items()}, metadata=meta)
            (out / f"{name}.safetensors").write_bytes(data)
            del data
state_mb = sum(p.numel() for p in model.parameters()) * 4 * 3 / 2**20
print(json.dumps({"extra_mb": watch.extra, "before_mb": watch.before, "state_mb": state_mb}))
"""
)


def _child_json(script: str, *args: object) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def save_memory(quick: bool) -> Row:
    n_layer, n_embd = (1, 256) if quick else (12, 768)
    ours = _child_json(_SAVE_CHILD, n_layer, n_embd, "ours")
    peer = _child_json(_SAVE_CHILD, n_layer, n_embd, "library")
    return Row(
        name=f"checkpoint save, extra peak RSS ({n_layer} layers x {n_embd}, GPT-2 vocabulary, + AdamW)",
        ours=round(ours["extra_mb"], 1),
        peer=round(peer["extra_mb"], 1),
        unit="MB",
        peer_name="safetensors.torch.save to bytes (the previous writer)",
        higher_is_better=False,
        target="streamed: far below one copy of the weights + moments",
        extra={"weights_and_moments_mb": round(ours["state_mb"], 1)},
    )


def lora_disk(quick: bool) -> Row:
    import torch

    from scratchllm.data.instruction import get_template
    from scratchllm.finetune.common import resolve_train_config
    from scratchllm.finetune.instruct import finetune_instruct
    from scratchllm.model.config import GPTConfig
    from scratchllm.model.gpt import GPTModel
    from scratchllm.model.lora import LoRAConfig
    from scratchllm.runs import save_run_files
    from scratchllm.tasks.instruct import load_instruction_data
    from scratchllm.tokenizer import CharTokenizer

    n_layer, n_embd = (1, 256) if quick else (12, 768)
    root = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    try:
        records = [{"instruction": f"say {w}", "input": "", "output": w} for w in ("yes", "no", "maybe") * 8]
        (root / "data.json").write_text(json.dumps(records))
        template = get_template(None)
        text = "".join(template.format(r["instruction"], r["input"]) + r["output"] for r in records)
        tok = CharTokenizer.train(text)
        torch.manual_seed(0)
        cfg = GPTConfig(n_layer=n_layer, n_embd=n_embd, n_head=4 if quick else 12, context_length=256)
        save_run_files(root / "base", GPTModel(cfg), arch="gpt", model_config=cfg, tokenizer=tok)
        data = load_instruction_data(root / "data.json", split="0.8,0.1,0.1")
        rc = resolve_train_config(
            overrides=["device=cpu", "batch_size=2", "max_steps=2", "eval_steps=1", "eval_interval=0"],
            lora=True,
        )
        finetune_instruct(
            root / "base",
            data,
            root / "run",
            train_cfg=rc.train,
            epochs=None,
            lora=LoRAConfig(r=8, alpha=16),
            template=template,
            max_new_tokens=2,
            progress=False,
        )
        seen: set[int] = set()
        run_bytes = 0
        for p in (root / "run").rglob("*"):
            if p.is_file() and p.stat().st_ino not in seen:  # hard links are stored once
                seen.add(p.stat().st_ino)
                run_bytes += p.stat().st_size
        base_bytes = (root / "base" / "model.safetensors").stat().st_size
    finally:
        shutil.rmtree(root, ignore_errors=True)
    pct = 100 * run_bytes / base_bytes
    return Row(
        name=f"LoRA run directory size / base weights ({n_layer} layers x {n_embd}, GPT-2 vocabulary, r=8)",
        ours=round(pct, 2),
        peer=100.0,
        unit="% of base",
        peer_name="a full copy of the base",
        higher_is_better=False,
        target="<= 5 %",
        met=pct <= 5.0,
        extra={"run_bytes": run_bytes, "base_bytes": base_bytes},
    )


_ESTIMATE_CHILD = (
    _RSS_SAMPLER
    + r"""
import json, sys, time
from pathlib import Path
from scratchllm.data.corpus import default_corpus
from scratchllm.data.prepare import prepare
from scratchllm.tokenizer import CharTokenizer
from scratchllm.train.estimate import estimate_run
from scratchllm.train.pretrain import pretrain, setup_pretraining
root, steps = Path(sys.argv[1]), int(sys.argv[2])
prepare(CharTokenizer.train(default_corpus()), None, root / "data", progress=False)
overrides = [f"max_steps={steps}", "eval_interval=0", "eval_steps=0"]
with PeakRSS() as watch:  # from before the model exists to the end of training
    setup = setup_pretraining(root / "data", root / "run", overrides=overrides)
    cfg = setup.train_config
    est = estimate_run(setup.model, cfg, batch_size=cfg.batch_size, seq_len=setup.task.context_length)
    t0 = time.perf_counter()
    pretrain(setup, root / "run", progress=False, estimate_time=True)
    took = time.perf_counter() - t0
events = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
e = next(x for x in events if x["event"] == "estimate")
print(json.dumps({"estimated_mb": est.total_bytes / 2**20, "actual_mb": watch.extra,
                  "estimated_s": e["estimated_run_s"], "actual_s": took, "step_s": e["step_seconds"]}))
"""
)


def estimate_accuracy(quick: bool) -> list[Row]:
    steps = 10 if quick else 200
    root = Path(tempfile.mkdtemp(prefix="bench-estimate-"))
    try:
        r = _child_json(_ESTIMATE_CHILD, root, steps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return [
        Row(
            name=f"start-up time estimate, 'small' preset, {steps} steps (char data)",
            ours=round(r["estimated_s"], 1),
            peer=round(r["actual_s"], 1),
            unit="s",
            peer_name="the run's actual time",
            higher_is_better=False,
            target="within 2x either way",
            met=0.5 <= r["estimated_s"] / max(r["actual_s"], 1e-9) <= 2.0,
            extra={"step_seconds": r["step_s"]},
        ),
        Row(
            name="start-up peak-memory estimate, 'small' preset (char data)",
            ours=round(r["estimated_mb"], 1),
            peer=round(r["actual_mb"], 1),
            unit="MB",
            peer_name="peak RSS the run added (model, optimizer, activations, allocator slack)",
            higher_is_better=False,
            target="within 2x either way",
            met=0.5 <= r["estimated_mb"] / max(r["actual_mb"], 1e-9) <= 2.0,
        ),
    ]


def run(quick: bool = True) -> list[Row]:
    return [save_memory(quick), lora_disk(quick), *estimate_accuracy(quick)]
