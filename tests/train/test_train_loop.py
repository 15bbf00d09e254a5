"""The training loop: exact resume, non-finite/spike skipping, signals, metrics and plots."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from scratchllm import runs
from scratchllm.data.batches import LMBatches
from scratchllm.data.shards import Shards
from scratchllm.device import unwrap
from scratchllm.errors import ScratchLLMError
from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel
from scratchllm.tasks.lm import LanguageModelingTask
from scratchllm.train import checkpoint
from scratchllm.train import loop as loop_module
from scratchllm.train.config import TrainConfig
from scratchllm.train.loop import train
from scratchllm.train.metrics import read_metrics
from scratchllm.train.optim import build_optimizer
from scratchllm.weights import read_safetensors

VOCAB = 23
N_STEPS = 10


def make_shards(tmp_path: Path) -> Shards:
    rng = np.random.default_rng(0)
    # A learnable stream: a repeating pattern with some noise.
    base = np.tile(np.arange(VOCAB, dtype=np.uint16), 200)
    noise = rng.integers(0, VOCAB, size=base.size).astype(np.uint16)
    tokens = np.where(rng.random(base.size) < 0.2, noise, base)
    return Shards(path=tmp_path, train=tokens[:4000], val=tokens[4000:], meta={"vocab_size": VOCAB})


def make_model(seed: int = 0, dropout: float = 0.1) -> GPTModel:
    torch.manual_seed(seed)
    # dropout on by default: the dropout RNG must be restored for an exact resume
    cfg = GPTConfig(vocab_size=VOCAB, context_length=16, n_layer=1, n_head=2, n_embd=16, dropout=dropout)
    return GPTModel(cfg)


def make_cfg(**kw) -> TrainConfig:
    base = dict(
        max_steps=N_STEPS,
        batch_size=4,
        lr=1e-2,
        warmup_steps=2,
        eval_interval=5,
        eval_steps=2,
        save_interval=0,
        log_interval=1,
        sample_interval=0,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


class Flaky:
    """Wraps a task: snapshots the weights at every loss call and corrupts chosen calls."""

    def __init__(self, inner, bad=(), *, factor=float("nan"), on_call=None):
        self.inner, self.bad, self.factor, self.on_call = inner, set(bad), factor, on_call
        self.calls = 0
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def train_batches(self, **kw):
        return self.inner.train_batches(**kw)

    def loss(self, model, batch):
        i = self.calls
        self.calls += 1
        self.snapshots.append({k: v.detach().clone() for k, v in unwrap(model).state_dict().items()})
        if self.on_call is not None:
            self.on_call(i)
        loss, extra = self.inner.loss(model, batch)
        return (loss * self.factor if i in self.bad else loss), extra

    def evaluate(self, model, *, max_batches):
        return self.inner.evaluate(model, max_batches=max_batches)

    def sample(self, model):
        return None


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Shards:
    return make_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def straight(shards, tmp_path_factory):
    """One uninterrupted run of N_STEPS steps: the reference every resume must match."""
    run = tmp_path_factory.mktemp("straight") / "run"
    model = make_model()
    task = LanguageModelingTask(shards, 16, 4)
    result = train(model, task, make_cfg(), run, progress=False)
    return result, model.state_dict(), run


def resume_run(shards, run: Path, k: int, *, cfg=None, **kw):
    cfg = cfg or make_cfg()
    first = train(make_model(), LanguageModelingTask(shards, 16, 4), cfg, run, progress=False, stop_at=k)
    assert first.interrupted == "stop_at" and first.step == k
    model = make_model(seed=123)  # different initial weights: everything must come from the checkpoint
    second = train(model, LanguageModelingTask(shards, 16, 4), cfg, run, resume=True, progress=False, **kw)
    return first, second, model


@pytest.mark.parametrize("k", [1, N_STEPS // 2, N_STEPS - 1])
def test_resume_is_bit_exact(shards, straight, tmp_path, k):
    ref, ref_weights, _ = straight
    first, second, model = resume_run(shards, tmp_path / "run", k)
    assert second.resumed_from == k and second.step == N_STEPS
    assert first.history + second.history == ref.history  # identical floats, not approximately
    assert same_weights(model.state_dict(), ref_weights)
    # the metrics file reads as one continuous run
    steps = [e["step"] for e in read_metrics(tmp_path / "run" / "metrics.jsonl") if e["event"] == "train"]
    assert steps == list(range(1, N_STEPS + 1))


def test_resume_diverges_without_rng_restore(shards, straight, tmp_path, monkeypatch):
    """Proves the test above can fail: skipping the RNG restore changes the dropout masks."""
    monkeypatch.setattr(loop_module, "restore_rng_state", lambda *a, **k: None)
    ref, ref_weights, _ = straight
    first, second, model = resume_run(shards, tmp_path / "run", N_STEPS // 2)
    assert first.history + second.history != ref.history
    assert not same_weights(model.state_dict(), ref_weights)


def test_resume_diverges_without_data_cursor(shards, straight, tmp_path, monkeypatch):
    monkeypatch.setattr(LMBatches, "load_state_dict", lambda self, state, **kw: None)
    ref, ref_weights, _ = straight
    first, second, model = resume_run(shards, tmp_path / "run", N_STEPS // 2)
    assert first.history + second.history != ref.history
    assert not same_weights(model.state_dict(), ref_weights)


def test_run_files_metrics_and_plot(straight):
    result, _, run = straight
    for name in ("config.json", "model.safetensors", "best.safetensors", "metrics.jsonl", "loss.png"):
        assert (run / name).is_file(), name
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = read_metrics(run / "metrics.jsonl")
    train_ev = [e for e in events if e["event"] == "train"]
    eval_ev = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in train_ev] == list(range(1, N_STEPS + 1))
    for key in ("loss", "lr", "tokens_per_s", "elapsed", "peak_rss_mb", "grad_norm"):
        assert all(key in e for e in train_ev), key
    assert [e["step"] for e in eval_ev] == [5, 10]
    assert all(e["perplexity"] == pytest.approx(np.exp(e["val_loss"])) for e in eval_ev)
    assert result.best_val_loss == min(e["val_loss"] for e in eval_ev)
    assert result.tokens_seen == N_STEPS * 4 * 16
    assert result.history[-1] < result.history[0]  # it learns
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["architecture"] == "gpt" and cfg["train"]["max_steps"] == N_STEPS
    assert cfg["model"]["dropout"] == 0.1
    ckpt, _ = checkpoint.find_resumable_checkpoint(run)
    assert ckpt is not None and ckpt.name == f"step-{N_STEPS:08d}"


def test_non_finite_step_is_skipped_and_weights_unchanged(shards, tmp_path):
    task = Flaky(LanguageModelingTask(shards, 16, 4), bad={3})
    result = train(make_model(), task, make_cfg(max_steps=6, eval_steps=0), tmp_path / "run", progress=False)
    snaps = task.snapshots  # snaps[i] = weights before step i+1
    assert same_weights(snaps[4], snaps[3])  # step 4 (call 3) was skipped: bit-identical weights
    assert not same_weights(snaps[3], snaps[2]) and not same_weights(snaps[5], snaps[4])
    assert result.skipped_steps == 1 and result.step == 6
    skips = [e for e in read_metrics(tmp_path / "run" / "metrics.jsonl") if e["event"] == "skip"]
    assert [(e["step"], e["reason"]) for e in skips] == [(4, "non-finite")]


def test_inf_loss_also_skipped(shards, tmp_path):
    task = Flaky(LanguageModelingTask(shards, 16, 4), bad={1}, factor=float("inf"))
    result = train(make_model(), task, make_cfg(max_steps=3, eval_steps=0), tmp_path / "run", progress=False)
    assert result.skipped_steps == 1 and same_weights(task.snapshots[2], task.snapshots[1])


def test_consecutive_non_finite_steps_abort_with_exit_code_3(shards, tmp_path):
    run = tmp_path / "run"
    task = Flaky(LanguageModelingTask(shards, 16, 4), bad=set(range(4, 100)))
    cfg = make_cfg(max_steps=20, eval_steps=0, save_interval=2, max_bad_steps=3)
    with pytest.raises(ScratchLLMError) as exc:
        train(make_model(), task, cfg, run, progress=False)
    assert exc.value.exit_code == 3
    msg = str(exc.value)
    assert "step 7" in msg and "steps 5-7" in msg and "step-00000006" in msg
    # the last checkpoint holds the last good weights (those after step 4; 5 and 6 were skipped)
    ckpt, _ = checkpoint.find_resumable_checkpoint(run)
    assert ckpt.name == "step-00000006"
    probe = make_model(seed=5)
    checkpoint.load_checkpoint(ckpt, probe)
    assert same_weights(probe.state_dict(), task.snapshots[4])
    assert [e["reason"] for e in read_metrics(run / "metrics.jsonl") if e["event"] == "stop"] == [
        "non-finite"
    ]


def test_loss_spike_is_skipped(shards, tmp_path):
    task = Flaky(LanguageModelingTask(shards, 16, 4), bad={14}, factor=50.0)
    cfg = make_cfg(max_steps=16, eval_steps=0, lr=1e-3, spike_zscore=4.0, spike_window=10)
    result = train(make_model(), task, cfg, tmp_path / "run", progress=False)
    assert result.skipped_steps == 1
    assert same_weights(task.snapshots[15], task.snapshots[14])
    skips = [e for e in read_metrics(tmp_path / "run" / "metrics.jsonl") if e["event"] == "skip"]
    assert len(skips) == 1 and skips[0]["step"] == 15 and "spike" in skips[0]["reason"]


def test_sigterm_saves_and_resume_matches_straight_run(shards, straight, tmp_path):
    ref, ref_weights, _ = straight
    run = tmp_path / "run"

    def send(i):
        if i == 2:
            signal.raise_signal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    task = Flaky(LanguageModelingTask(shards, 16, 4), on_call=send)
    first = train(make_model(), task, make_cfg(), run, progress=False)
    assert signal.getsignal(signal.SIGTERM) == before  # handlers are restored
    assert first.interrupted == "SIGTERM" and first.step == 3
    assert checkpoint.find_resumable_checkpoint(run)[0].name == "step-00000003"
    model = make_model(seed=9)
    second = train(model, LanguageModelingTask(shards, 16, 4), make_cfg(), run, resume=True, progress=False)
    assert first.history + second.history == ref.history
    assert same_weights(model.state_dict(), ref_weights)


def test_gradient_accumulation_matches_a_big_batch(shards, tmp_path):
    """2 micro-batches of 4 == 1 batch of 8 drawn from the same windows (one step, fp32 tolerance)."""

    class Fixed:
        def __init__(self, batches):
            self.batches = batches

        def train_batches(self, **kw):
            outer = self

            class Src:
                i = 0

                def next_batch(self):
                    b = outer.batches[self.i % len(outer.batches)]
                    self.i += 1
                    return b

                def state_dict(self):
                    return {"i": self.i}

                def load_state_dict(self, s):
                    self.i = s["i"]

            return Src()

        loss = LanguageModelingTask.loss

        def evaluate(self, model, *, max_batches):
            return {}

        def sample(self, model):
            return None

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (8, 17), generator=g)
    big = {"input_ids": x[:, :-1], "targets": x[:, 1:]}
    halves = [{k: v[:4] for k, v in big.items()}, {k: v[4:] for k, v in big.items()}]
    cfg = dict(max_steps=1, eval_steps=0, warmup_steps=0)
    a, b = make_model(dropout=0.0), make_model(dropout=0.0)  # no dropout: both see the same function
    train(a, Fixed([big]), make_cfg(**cfg, batch_size=8), tmp_path / "a", progress=False)
    train(b, Fixed(halves), make_cfg(**cfg, grad_accum_steps=2), tmp_path / "b", progress=False)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


def test_populated_dir_needs_resume_or_force(shards, straight, tmp_path):
    run = tmp_path / "run"
    train(make_model(), LanguageModelingTask(shards, 16, 4), make_cfg(max_steps=2), run, progress=False)
    before = (run / "model.safetensors").read_bytes()
    with pytest.raises(ScratchLLMError, match="--resume .*--force"):
        train(make_model(), LanguageModelingTask(shards, 16, 4), make_cfg(max_steps=2), run, progress=False)
    assert (run / "model.safetensors").read_bytes() == before
    cfg = make_cfg(max_steps=1, eval_steps=0)
    train(make_model(), LanguageModelingTask(shards, 16, 4), cfg, run, progress=False, force=True)
    assert [p.name for _, p in runs.list_checkpoints(run)] == ["step-00000001"]
    # --resume with nothing saved yet (a requeued job's first launch) starts at step 0 and says so
    said: list[str] = []
    out = train(
        make_model(),
        LanguageModelingTask(shards, 16, 4),
        cfg,
        tmp_path / "none",
        resume=True,
        echo=said.append,
    )
    assert out.step == 1 and out.resumed_from == 0 and any("nothing to resume" in m for m in said)


def test_resume_with_other_thread_count_warns(shards, tmp_path):
    run = tmp_path / "run"
    cfg = make_cfg(max_steps=2, eval_steps=0)
    train(make_model(), LanguageModelingTask(shards, 16, 4), cfg, run, progress=False, stop_at=1)
    threads = torch.get_num_threads()
    messages: list[str] = []
    try:
        torch.set_num_threads(threads + 1)
        train(make_model(), LanguageModelingTask(shards, 16, 4), cfg, run, resume=True, echo=messages.append)
    finally:
        torch.set_num_threads(threads)
    assert any("not be bit-exact" in m and "num_threads" in m for m in messages)


# ------------------------------------------------------------------ Muon (optimizer="muon")
MUON = dict(optimizer="muon", muon_lr=0.03, lr_schedule="wsd", decay_frac=0.5)


@pytest.fixture(scope="module")
def straight_muon(shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("straight-muon") / "run"
    model = make_model()
    result = train(model, LanguageModelingTask(shards, 16, 4), make_cfg(**MUON), run, progress=False)
    return result, model.state_dict(), run


@pytest.mark.parametrize("k", [1, N_STEPS // 2])
def test_muon_resume_is_bit_exact(shards, straight_muon, tmp_path, k):
    ref, ref_weights, _ = straight_muon
    first, second, model = resume_run(shards, tmp_path / "run", k, cfg=make_cfg(**MUON))
    assert first.history + second.history == ref.history
    assert same_weights(model.state_dict(), ref_weights)


def test_muon_checkpoint_holds_both_optimizers_and_refuses_the_other_kind(shards, straight, straight_muon):
    _, _, run = straight_muon
    ckpt = checkpoint.find_resumable_checkpoint(run)[0]
    tensors, meta = read_safetensors(ckpt / runs.OPTIMIZER_FILE, "optimizer state")
    info = json.loads(meta["scratchllm_optimizer"])
    assert info["optimizer"] == "MuonAdamW"
    by_name = dict(enumerate(info["param_names"]))
    muon = {by_name[int(k.split(".")[1])] for k in tensors if k.endswith(".momentum_buffer")}
    adam = {by_name[int(k.split(".")[1])] for k in tensors if k.endswith(".exp_avg")}
    assert muon == {"blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight"} | {
        "blocks.0.ffn.fc.weight",
        "blocks.0.ffn.proj.weight",
    }
    assert "tok_emb.weight" in adam and "blocks.0.norm1.weight" in adam and not muon & adam
    # an AdamW run cannot be resumed as a Muon run (and the other way round): one clear line
    _, _, adamw_run = straight
    with pytest.raises(ScratchLLMError, match="holds AdamW state but this run uses MuonAdamW"):
        checkpoint.resume(adamw_run, make_model(), build_optimizer(make_model(), make_cfg(**MUON), "cpu"))


def test_muon_differs_from_adamw_and_learns(straight, straight_muon):
    ref, _, _ = straight
    muon, _, _ = straight_muon
    assert muon.history != ref.history and muon.history[-1] < muon.history[0]
