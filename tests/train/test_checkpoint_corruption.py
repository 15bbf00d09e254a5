"""Integrity-checked resume: damage the newest checkpoint every way we can think of.

Each time, resume must fall back to the previous valid checkpoint and say which file failed and
why; when every checkpoint is damaged it must stop with an error listing each failure — never
start from scratch silently.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from scratchllm import runs
from scratchllm.architectures import build_model
from scratchllm.errors import ScratchLLMError
from scratchllm.model.config import GPTConfig
from scratchllm.train import checkpoint as ckpt

CFG = GPTConfig(vocab_size=32, context_length=8, n_layer=1, n_head=2, n_embd=16)
FILES = ["model.safetensors", "optimizer.safetensors", "trainer_state.json", "config.json"]


def _model(seed):
    torch.manual_seed(seed)
    return build_model("gpt", CFG)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A run with checkpoints at steps 1 and 2 whose weights differ (so we can tell them apart)."""
    run = tmp_path_factory.mktemp("pristine") / "run"
    m1 = _model(1)
    runs.save_run_files(run, m1, arch="gpt", model_config=CFG)
    for step in (1, 2):
        m = _model(step)
        opt = torch.optim.AdamW(m.parameters())
        ckpt.save_checkpoint(run, step=step, model=m, optimizer=opt, trainer_state={"marker": step})
    return run


@pytest.fixture
def run(pristine, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(pristine, dst)
    return dst


def _damage(path, how):
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10  # one bit, in the middle (tensor data for the weight files)
        path.write_bytes(bytes(data))
    elif how == "delete":
        path.unlink()
    elif how == "append":
        with open(path, "ab") as f:
            f.write(b"\0")


EXPECTED = {
    "truncate": "bytes, the manifest says",
    "flip": "sha256 mismatch",
    "delete": "is missing",
    "append": "bytes, the manifest says",
}


def _resume(run):
    m = _model(0)
    state, path, skipped = ckpt.resume(run, m, torch.optim.AdamW(m.parameters()))
    return m, state, path, skipped


@pytest.mark.parametrize("how", sorted(EXPECTED))
@pytest.mark.parametrize("fname", FILES)
def test_damaged_file_falls_back_to_previous(run, fname, how):
    _damage(run / "checkpoints" / "step-00000002" / fname, how)
    m, state, path, skipped = _resume(run)
    assert path.name == "step-00000001" and state["marker"] == 1 and state["step"] == 1
    assert len(skipped) == 1 and skipped[0].startswith(f"step-00000002: {fname}")
    assert EXPECTED[how] in skipped[0]
    ref = _model(1).state_dict()
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in ref.items())


@pytest.mark.parametrize("how", ["delete", "garbage", "empty"])
def test_damaged_manifest_falls_back(run, how):
    manifest = run / "checkpoints" / "step-00000002" / "manifest.json"
    if how == "delete":
        manifest.unlink()
    elif how == "garbage":
        manifest.write_text('{"files": ')
    else:
        manifest.write_text("{}")
    _, state, path, skipped = _resume(run)
    assert path.name == "step-00000001"
    assert "manifest.json" in skipped[0]


def test_orphan_temp_dir_and_stray_files_are_ignored(run):
    orphan = run / "checkpoints" / ".tmp-step-00000003-999"
    shutil.copytree(run / "checkpoints" / "step-00000002", orphan)  # complete, yet never committed
    (run / "checkpoints" / "step-garbage").mkdir()
    (run / "checkpoints" / "notes.txt").write_text("hi")
    _, state, path, skipped = _resume(run)
    assert path.name == "step-00000002" and skipped == []


def test_newest_step_dir_without_anything_falls_back(run):
    (run / "checkpoints" / "step-00000009").mkdir()
    _, _, path, skipped = _resume(run)
    assert path.name == "step-00000002"
    assert skipped == [
        "step-00000009: manifest.json is missing (the save did not finish or the file was deleted)"
    ]


def test_all_corrupt_is_a_clear_error(run):
    _damage(run / "checkpoints" / "step-00000002" / "model.safetensors", "flip")
    _damage(run / "checkpoints" / "step-00000001" / "trainer_state.json", "truncate")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(ScratchLLMError) as info:
        _resume(run)
    msg = str(info.value)
    assert msg.startswith("cannot resume: every checkpoint")
    assert "step-00000002: model.safetensors sha256 mismatch" in msg
    assert "step-00000001: trainer_state.json has" in msg
    assert "\n" not in msg
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}  # nothing touched


def test_manifest_that_lies_about_a_pickle_is_still_refused(run):
    """Even with a matching manifest, content is parsed strictly (see also the pickle tests)."""
    step = run / "checkpoints" / "step-00000002"
    (step / "trainer_state.json").write_text("[1, 2, 3]")
    manifest = json.loads((step / "manifest.json").read_text())
    manifest["files"]["trainer_state.json"] = {
        "size": os.path.getsize(step / "trainer_state.json"),
        "sha256": ckpt.hashlib.sha256(b"[1, 2, 3]").hexdigest(),
    }
    (step / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ScratchLLMError, match="trainer_state.json has no step"):
        _resume(run)
