"""The run directory as users meet it: one trainer at a time, --force keeps the old run until the
new one has saved something, --resume works from a job's first launch, files are integrity-checked
on load, fine-tunes of a part of a model are stored on top of their base."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from scratchllm import runs
from scratchllm.data.shards import Shards
from scratchllm.errors import ScratchLLMError, ScratchLLMWarning
from scratchllm.load import load_model
from scratchllm.model.config import GPTConfig
from scratchllm.model.gpt import GPTModel
from scratchllm.tasks.lm import LanguageModelingTask
from scratchllm.tokenizer import CharTokenizer
from scratchllm.train.config import TrainConfig
from scratchllm.train.loop import train

VOCAB = 23


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    tokens = np.tile(np.arange(VOCAB, dtype=np.uint16), 200)
    noise = rng.integers(0, VOCAB, tokens.size)
    tokens = np.where(rng.random(tokens.size) < 0.2, noise, tokens).astype(np.uint16)
    return Shards(path=tmp_path, train=tokens[:4000], val=tokens[4000:], meta={"vocab_size": VOCAB})


def model(seed: int = 0, n_layer: int = 1) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(GPTConfig(vocab_size=VOCAB, context_length=16, n_layer=n_layer, n_head=2, n_embd=16))


def cfg(**kw) -> TrainConfig:
    base = dict(max_steps=3, batch_size=4, lr=1e-2, warmup_steps=1, eval_interval=0, eval_steps=1)
    base.update(save_interval=0, log_interval=1, sample_interval=0, device="cpu")
    return TrainConfig(**{**base, **kw})


def task(shards):
    return LanguageModelingTask(shards, 16, 4)


# ----------------------------------------------------------------------------- one trainer at a time
def test_a_second_trainer_on_the_same_run_is_refused_naming_the_pid(shards, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    held = runs.RunLock(run).acquire()  # another trainer (here: this process, another descriptor)
    try:
        pid = os.getpid()
        with pytest.raises(ScratchLLMError, match=rf"in use by another training process \(PID {pid}\)"):
            train(model(), task(shards), cfg(), run, progress=False)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing else was written
    finally:
        held.release()
    train(model(), task(shards), cfg(), run, progress=False)  # free again


def test_a_killed_trainer_leaves_no_stale_lock(shards, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    code = (
        "import os, sys; from scratchllm.runs import RunLock; "
        f"RunLock({str(run)!r}).acquire(); os.kill(os.getpid(), 9)"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    assert (run / ".lock").read_text().strip().isdigit()  # its PID is still in the file...
    train(model(), task(shards), cfg(), run, progress=False)  # ...but the kernel released the lock


# ----------------------------------------------------------------------------- --force
class Exploding:
    """A task whose loss raises at a chosen call: a retrain that dies before its first checkpoint."""

    def __init__(self, inner, at: int):
        self.inner, self.at, self.calls = inner, at, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def loss(self, m, batch):
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("boom")
        return self.inner.loss(m, batch)


def test_force_keeps_the_old_run_until_the_new_one_saves(shards, tmp_path):
    run = tmp_path / "run"
    train(model(), task(shards), cfg(), run, progress=False)
    (run / "notes.txt").write_text("mine")  # not a run file: it must survive any restart
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    said: list[str] = []
    with pytest.raises(RuntimeError, match="boom"):
        doomed = Exploding(task(shards), at=2)
        train(model(1), doomed, cfg(), run, progress=False, force=True, echo=said.append)
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before  # the old run is exactly as it was
    assert any("previous run" in m and "kept" in m for m in said)
    assert not list(tmp_path.glob(".run.tmp-*"))  # no staging litter

    train(model(1), task(shards), cfg(max_steps=2), run, progress=False, force=True)
    assert (run / "notes.txt").read_text() == "mine"
    assert [p.name for _, p in runs.list_checkpoints(run)] == ["step-00000002"]
    assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == 2
    assert not list(tmp_path.glob(".run.tmp-*"))


def test_a_killed_force_restart_is_cleaned_up_and_the_old_run_kept(shards, tmp_path):
    run = tmp_path / "run"
    train(model(), task(shards), cfg(), run, progress=False)
    weights = (run / "model.safetensors").read_bytes()
    litter = tmp_path / f".run.tmp-new-{12345678}"
    litter.mkdir()
    (litter / "metrics.jsonl").write_text("{}\n")  # what a SIGKILLed restart leaves
    train(model(), task(shards), cfg(), run, progress=False, resume=True)  # any later start tidies up
    assert not litter.exists() and (run / "model.safetensors").read_bytes() == weights


# ----------------------------------------------------------------------------- --resume from step 0
def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_at_zero(shards, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        train(model(), Exploding(task(shards), at=2), cfg(), run, progress=False)
    assert (run / "config.json").is_file() and not runs.list_checkpoints(run)
    said: list[str] = []
    out = train(model(), task(shards), cfg(), run, progress=False, resume=True, echo=said.append)
    assert out.step == 3 and any("starting at step 0" in m for m in said)
    ref = train(model(), task(shards), cfg(), tmp_path / "ref", progress=False)
    assert out.history == ref.history  # the same run as a clean start


def test_resume_with_only_damaged_checkpoints_is_still_an_error(shards, tmp_path):
    run = tmp_path / "run"
    train(model(), task(shards), cfg(), run, progress=False)
    (run / "checkpoints" / "step-00000003" / "manifest.json").write_text("{}")
    with pytest.raises(ScratchLLMError, match="every checkpoint .* is damaged"):
        train(model(), task(shards), cfg(max_steps=5), run, progress=False, resume=True)


def test_resume_with_another_max_steps_warns_about_the_lr_jump(shards, tmp_path):
    run = tmp_path / "run"
    train(model(), task(shards), cfg(max_steps=4), run, progress=False, stop_at=2)
    said: list[str] = []
    train(model(), task(shards), cfg(max_steps=8), run, progress=False, resume=True, echo=said.append)
    assert any("max_steps 4 -> 8" in m and "the lr goes from" in m for m in said), said


# ----------------------------------------------------------------------------- integrity on load
def make_saved_run(tmp_path):
    tok = CharTokenizer.train("abcdefghijklmnopqrstuvw")
    m = GPTModel(GPTConfig(vocab_size=tok.vocab_size, context_length=8, n_layer=1, n_head=2, n_embd=8))
    run = tmp_path / "run"
    runs.save_run_files(run, m, arch="gpt", model_config=m.config, tokenizer=tok)
    return run, m, tok


def test_flipped_bits_in_the_run_weights_are_caught(tmp_path):
    run, _, _ = make_saved_run(tmp_path)
    load_model(run)
    data = bytearray((run / "model.safetensors").read_bytes())
    for i in range(len(data) - 4000, len(data), 4):  # 1,000 words of the data section
        data[i] ^= 0x01
    (run / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ScratchLLMError, match="model.safetensors does not match the run manifest"):
        load_model(run)


def test_a_swapped_tokenizer_of_the_same_size_is_caught(tmp_path):
    run, _, tok = make_saved_run(tmp_path)
    other = CharTokenizer.train("ABCDEFGHIJKLMNOPQRSTUVW")
    assert other.vocab_size == tok.vocab_size
    other.save(run / "tokenizer.json")
    with pytest.raises(ScratchLLMError, match="tokenizer.json does not match the run manifest"):
        load_model(run)


def test_non_finite_weights_are_a_warning(tmp_path):
    tok = CharTokenizer.train("abc")
    m = GPTModel(GPTConfig(vocab_size=tok.vocab_size, context_length=8, n_layer=1, n_head=2, n_embd=8))
    with torch.no_grad():
        m.blocks[0].attn.qkv.weight[0, 0] = float("nan")
    runs.save_run_files(tmp_path / "run", m, arch="gpt", model_config=m.config, tokenizer=tok)
    with pytest.warns(ScratchLLMWarning, match="non-finite weights .*blocks.0.attn.qkv.weight"):
        load_model(tmp_path / "run")


def test_manifest_accepts_a_file_replaced_between_record_and_rename(tmp_path):
    """A crash after the manifest lists a new file but before the rename leaves the old file: fine."""
    run, m, _ = make_saved_run(tmp_path)
    runs.record_run_file(run, "model.safetensors", "0" * 64)  # the new hash is listed, file not yet renamed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(run)


# ----------------------------------------------------------------------------- streaming writes
def test_streamed_safetensors_are_what_the_library_reads(tmp_path):
    import io

    from safetensors.torch import load

    from scratchllm.weights import write_safetensors

    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.arange(7, dtype=torch.int64),
        "c": torch.randn(4).to(torch.bfloat16),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "strided": torch.randn(6, 4).t(),  # not contiguous
    }
    buf = io.BytesIO()
    size, sha = write_safetensors(buf, tensors, {"k": "v"})
    data = buf.getvalue()
    back = load(data)
    assert size == len(data) and all(torch.equal(back[k], v) for k, v in tensors.items())
    import hashlib

    assert sha == hashlib.sha256(data).hexdigest()


def test_checkpoint_weights_are_hard_linked_into_the_run(shards, tmp_path):
    run = tmp_path / "run"
    train(model(), task(shards), cfg(), run, progress=False)
    latest = run / "model.safetensors"
    ckpt = run / "checkpoints" / "step-00000003" / "model.safetensors"
    assert latest.stat().st_ino == ckpt.stat().st_ino  # stored once on disk
    runs.verify_run_file(run, "model.safetensors")
    shutil.rmtree(run / "checkpoints")
    load_model(run)  # the run's copy outlives the checkpoint it came from
