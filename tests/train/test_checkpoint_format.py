"""Checkpoint format: round trips, tied weights, load_model, clear errors, disk full, no pickle."""

from __future__ import annotations

import ast
import errno
import json
import os
import pickle
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from scratchllm import load, runs
from scratchllm import weights as weights_io
from scratchllm.architectures import build_model
from scratchllm.errors import ScratchLLMError
from scratchllm.model.config import GPTConfig
from scratchllm.tokenizer import CharTokenizer
from scratchllm.train import checkpoint as ckpt
from scratchllm.train.state import (
    capture_rng_state,
    env_fingerprint,
    fingerprint_differences,
    from_jsonable,
    restore_rng_state,
    to_jsonable,
)

PACKAGE = Path(__file__).resolve().parents[2] / "scratchllm"
CFG = GPTConfig(vocab_size=40, context_length=16, n_layer=1, n_head=2, n_embd=16)


def tiny_model(seed: int = 0, cfg: GPTConfig = CFG) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("gpt", cfg)


def trained_pair(steps: int = 3) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randint(0, CFG.vocab_size, (2, 8), generator=g)
        loss = model(x).float().logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def make_run(tmp_path: Path, steps=(1, 2)) -> tuple[Path, torch.nn.Module, torch.optim.Optimizer]:
    run = tmp_path / "run"
    model, opt = trained_pair()
    tok = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz .,")
    runs.save_run_files(run, model, arch="gpt", model_config=CFG, tokenizer=tok, train_config={"lr": 0.01})
    for s in steps:
        ckpt.save_checkpoint(run, step=s, model=model, optimizer=opt, trainer_state={"sampler": {"pos": s}})
    return run, model, opt


# ----------------------------------------------------------------------------- round trips
def test_checkpoint_round_trip_is_exact(tmp_path):
    model, opt = trained_pair()
    g = torch.Generator().manual_seed(7)
    state = {
        "rng": capture_rng_state({"data": g}),
        "sampler": {"epoch": 1, "cursor": [3, 4]},
        "window": [1.5, float("nan")],
        "tensor": torch.arange(5, dtype=torch.int64),
        "bf16": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "array": np.arange(6, dtype=np.uint16).reshape(2, 3),
    }
    path = ckpt.save_checkpoint(tmp_path, step=3, model=model, optimizer=opt, trainer_state=state)
    assert path.name == "step-00000003"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["manifest.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"]
    )

    model2 = tiny_model(seed=99)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    back = ckpt.load_checkpoint(path, model2, opt2)
    assert same_weights(model, model2)
    assert model2.out_head.weight is model2.tok_emb.weight  # still tied after loading
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        for k, v in s1["state"][i].items():
            assert torch.equal(v, s2["state"][i][k]), (i, k)
    assert back["step"] == 3 and back["sampler"] == {"epoch": 1, "cursor": [3, 4]}
    assert back["window"][0] == 1.5 and np.isnan(back["window"][1])
    assert torch.equal(back["tensor"], state["tensor"]) and torch.equal(back["bf16"], state["bf16"])
    assert np.array_equal(back["array"], state["array"]) and back["array"].dtype == np.uint16

    # One more optimizer step from both gives identical weights: the moments really came back.
    x = torch.randint(0, CFG.vocab_size, (2, 8), generator=torch.Generator().manual_seed(5))
    for m, o in ((model, opt), (model2, opt2)):
        m(x).float().logsumexp(-1).mean().backward()
        o.step()
    assert same_weights(model, model2)


def test_tied_weights_are_stored_once(tmp_path):
    model = tiny_model()
    weights_io.save_weights(tmp_path / "w.safetensors", model)
    tensors, meta = weights_io.read_safetensors(tmp_path / "w.safetensors")
    assert "out_head.weight" not in tensors and "tok_emb.weight" in tensors
    assert json.loads(meta["scratchllm_aliases"]) == {"out_head.weight": "tok_emb.weight"}
    untied = tiny_model(cfg=GPTConfig(**{**CFG.__dict__, "tie_weights": False}))
    weights_io.save_weights(tmp_path / "u.safetensors", untied)
    assert "out_head.weight" in weights_io.read_safetensors(tmp_path / "u.safetensors")[0]


def test_rng_capture_restore_covers_every_generator():
    gens = {"data": torch.Generator().manual_seed(1), "dropout": torch.Generator().manual_seed(2)}
    saved = json.loads(json.dumps(capture_rng_state(gens)))  # must survive JSON as-is

    def draw():
        return (
            random.random(),
            float(np.random.rand()),
            float(torch.rand(1)),
            float(torch.rand(1, generator=gens["data"])),
            float(torch.rand(1, generator=gens["dropout"])),
        )

    first = draw()
    restore_rng_state(saved, gens)
    assert draw() == first
    with pytest.raises(ScratchLLMError, match="random generators do not match"):
        restore_rng_state(saved, {"data": gens["data"]})


def test_env_fingerprint_differences():
    a = env_fingerprint(device="cpu", world_size=1)
    b = dict(a, num_threads=a["num_threads"] + 1, world_size=2)
    diffs = fingerprint_differences(a, b)
    assert any("num_threads" in d for d in diffs) and any("world_size" in d for d in diffs)
    assert fingerprint_differences(a, a) == []
    # the OpenMP wait policy is recorded, but it changes speed, not results: no resume warning
    assert a["omp_wait_policy"] in ("default", "passive", "active")
    assert fingerprint_differences(a, dict(a, omp_wait_policy="something else")) == []


def test_jsonable_rejects_objects():
    with pytest.raises(TypeError):
        to_jsonable({"x": object()})
    assert from_jsonable(to_jsonable({"t": (1, 2)})) == {"t": [1, 2]}


# ----------------------------------------------------------------------------- load_model
def test_load_model_from_every_kind_of_path(tmp_path):
    run, model, _ = make_run(tmp_path)
    runs.save_best(run, model)
    cases = {
        run: "run directory",
        run / "checkpoints" / "step-00000002": "checkpoint step 2",
        run / "best.safetensors": "weights file",
        run / "model.safetensors": "weights file",
    }
    for path, source in cases.items():
        loaded = load.load_model(path)
        assert loaded.source.startswith(source), loaded.source
        assert loaded.arch == "gpt" and loaded.config["model"]["n_embd"] == 16
        assert isinstance(loaded.tokenizer, CharTokenizer)
        assert same_weights(model, loaded.model) and not loaded.model.training
        assert loaded.model.out_head.weight is loaded.model.tok_emb.weight
    # A checkpoint copied elsewhere on its own is still loadable (it carries its config).
    alone = tmp_path / "elsewhere" / "step-00000002"
    shutil.copytree(run / "checkpoints" / "step-00000002", alone)
    assert same_weights(model, load.load_model(alone).model)


def test_load_model_hf_dir_delegates_or_says_why(tmp_path, monkeypatch):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 16}))
    fake = lambda path, device: runs.LoadedModel(  # noqa: E731
        None, None, "gpt", {}, f"Hugging Face GPT-2 directory {path}"
    )
    monkeypatch.setattr(load, "load_hf_gpt2", fake)
    assert load.load_model(hf).source.startswith("Hugging Face GPT-2 directory")
    (hf / "model.safetensors").write_bytes(b"")  # naming its weights file means the directory
    assert load.load_model(hf / "model.safetensors").source == f"Hugging Face GPT-2 directory {hf}"


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no_config", "no config.json"),
        ("bad_arch", "unknown architecture 'gpt5'"),
        ("shape", "tensor 'tok_emb.weight' has shape"),
        ("missing_key", "tensor 'final_norm.bias' is missing"),
        ("vocab", "tokenizer/model vocabulary mismatch"),
        ("bad_header", "not a valid safetensors file"),
        ("truncated", "truncated"),
        ("no_weights", "no model.safetensors"),
        ("not_json", "not valid JSON"),
    ],
)
def test_load_model_errors_are_one_clear_line(tmp_path, damage, message):
    run, model, _ = make_run(tmp_path, steps=())
    cfg = json.loads((run / "config.json").read_text())
    weights = run / "model.safetensors"
    if damage == "no_config":
        (run / "config.json").unlink()
    elif damage == "bad_arch":
        (run / "config.json").write_text(json.dumps(dict(cfg, architecture="gpt5")))
    elif damage == "shape":
        (run / "config.json").write_text(json.dumps(dict(cfg, model=dict(cfg["model"], vocab_size=50))))
    elif damage == "missing_key":
        tensors, meta = weights_io.read_safetensors(weights)
        del tensors["final_norm.bias"]
        from safetensors.torch import save_file

        save_file(tensors, str(weights), metadata=meta)
    elif damage == "vocab":
        CharTokenizer.train("".join(chr(0x4E00 + i) for i in range(60))).save(run / "tokenizer.json")
    elif damage == "bad_header":
        data = bytearray(weights.read_bytes())
        data[8] = ord("!")  # the header JSON's opening brace
        weights.write_bytes(bytes(data))
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-7])
    elif damage == "no_weights":
        weights.unlink()
    elif damage == "not_json":
        (run / "config.json").write_text("{not json")
    if damage not in ("no_weights", "no_config"):
        # The run manifest catches every one of these first, naming the file...
        with pytest.raises(
            ScratchLLMError, match="does not match the run manifest|is missing|no model"
        ) as info:
            load.load_model(run)
        assert "\n" not in str(info.value)
    # ...and without it (a run written before manifests) each still gets its own clear message.
    (run / "run_manifest.json").unlink()
    with pytest.raises(ScratchLLMError, match=message) as info:
        load.load_model(run)
    assert "\n" not in str(info.value)


def test_load_model_missing_path(tmp_path):
    with pytest.raises(ScratchLLMError, match="model not found"):
        load.load_model(tmp_path / "nope")


def test_optimizer_mismatch_names_the_parameter(tmp_path):
    model, opt = trained_pair()
    path = ckpt.save_checkpoint(tmp_path, step=1, model=model, optimizer=opt, trainer_state={})
    other_cfg = GPTConfig(**{**CFG.__dict__, "tie_weights": False})
    other = tiny_model(cfg=other_cfg)
    with pytest.raises(ScratchLLMError, match="different set of trainable parameters"):
        ckpt.load_optimizer_from(
            torch.optim.AdamW(other.parameters()),
            *weights_io.read_safetensors(path / "optimizer.safetensors"),
            "optimizer.safetensors",
        )
    with pytest.raises(ScratchLLMError, match="holds AdamW state but this run uses SGD"):
        ckpt.load_checkpoint(path, tiny_model(), torch.optim.SGD(tiny_model().parameters(), lr=0.1))


# ----------------------------------------------------------------------------- retention
def test_keep_prunes_only_after_commit_and_ignores_temp(tmp_path):
    model, opt = trained_pair()
    for s in (10, 20, 30, 40):
        ckpt.save_checkpoint(tmp_path, step=s, model=model, optimizer=opt, trainer_state={}, keep=3)
    assert [s for s, _ in runs.list_checkpoints(tmp_path)] == [20, 30, 40]
    orphan = tmp_path / "checkpoints" / ".tmp-step-00000050-1234"
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"half")
    half_latest = tmp_path / ".tmp-model.safetensors.x1y2"  # killed while updating RUN/model.safetensors
    half_latest.write_bytes(b"half")
    path, skipped = ckpt.find_resumable_checkpoint(tmp_path)
    assert path.name == "step-00000040" and skipped == []
    ckpt.save_checkpoint(tmp_path, step=50, model=model, optimizer=opt, trainer_state={})
    assert not orphan.exists() and not half_latest.exists()  # leftovers of a killed save: cleaned
    assert [s for s, _ in runs.list_checkpoints(tmp_path)] == [40, 50]


def test_resuming_from_older_checkpoint_replaces_the_abandoned_timeline(tmp_path):
    model, opt = trained_pair()
    for s in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step=s, model=model, optimizer=opt, trainer_state={}, keep=5)
    # Pretend step 3 was damaged: resume from 2, then the new run saves step 3 (and 2.5 -> 3 again).
    ckpt.save_checkpoint(tmp_path, step=2, model=model, optimizer=opt, trainer_state={"again": True}, keep=5)
    assert [s for s, _ in runs.list_checkpoints(tmp_path)] == [1, 2]
    assert ckpt.read_trainer_state(tmp_path / "checkpoints" / "step-00000002")["again"] is True


def test_resume_with_nothing_to_resume_is_an_error(tmp_path):
    with pytest.raises(ScratchLLMError, match="nothing to resume"):
        ckpt.resume(tmp_path, tiny_model())


# ----------------------------------------------------------------------------- disk full
@pytest.mark.parametrize("fail_on", ["model.safetensors", "optimizer.safetensors", "manifest.json", "rename"])
def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch, fail_on):
    model, opt = trained_pair()
    ckpt.save_checkpoint(tmp_path, step=1, model=model, optimizer=opt, trainer_state={})
    before = (tmp_path / "model.safetensors").read_bytes()
    real_write, real_rename = ckpt._write_durably, os.rename

    def failing_write(path, data):
        if path.name == fail_on:
            path.write_bytes(b"partial")  # a partial file, as a real ENOSPC leaves
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(path, data)

    def failing_rename(src, dst):
        if fail_on == "rename":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_rename(src, dst)

    monkeypatch.setattr(ckpt, "_write_durably", failing_write)
    monkeypatch.setattr(ckpt.os, "rename", failing_rename)
    with pytest.raises(ScratchLLMError) as info:
        ckpt.save_checkpoint(tmp_path, step=2, model=model, optimizer=opt, trainer_state={})
    msg = str(info.value)
    assert "step-00000002" in msg and "step-00000001 is intact" in msg
    assert ("No space left on device" if fail_on != "rename" else "Input/output error") in msg
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001"]
    path, skipped = ckpt.find_resumable_checkpoint(tmp_path)
    assert path.name == "step-00000001" and skipped == []
    assert (tmp_path / "model.safetensors").read_bytes() == before


def test_disk_full_on_a_real_small_filesystem(tmp_path):
    """A 512 KiB tmpfs: the first checkpoint fits, the second cannot (needs root to mount)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()})")
    try:
        model, opt = trained_pair()
        run = mnt / "run"
        ckpt.save_checkpoint(run, step=1, model=model, optimizer=opt, trainer_state={})
        # Fill the disk, leaving less room than one checkpoint needs.
        need = sum(p.stat().st_size for p in (run / "checkpoints" / "step-00000001").iterdir())
        with open(mnt / "filler", "wb") as f:
            free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
            f.write(b"\0" * max(0, free - need // 2))
        with pytest.raises(ScratchLLMError, match="No space left on device") as info:
            ckpt.save_checkpoint(run, step=2, model=model, optimizer=opt, trainer_state={})
        assert str(run / "checkpoints" / "step-00000002") in str(info.value)
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001"]
        runs.verify_checkpoint(run / "checkpoints" / "step-00000001")
        (mnt / "filler").unlink()
        ckpt.save_checkpoint(run, step=2, model=model, optimizer=opt, trainer_state={})  # room again
        assert [s for s, _ in runs.list_checkpoints(run)] == [1, 2]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ----------------------------------------------------------------------------- nothing is unpickled
def test_package_never_unpickles():
    """No pickle import, no torch.load without weights_only=True, no numpy allow_pickle=True."""
    offenders = []
    for py in PACKAGE.rglob("*.py"):
        tree = ast.parse(py.read_text(encoding="utf-8"), filename=str(py))
        for node in ast.walk(tree):
            # Importing pickle for its exception class is fine; importing its loaders is not.
            pickle_from = isinstance(node, ast.ImportFrom) and (node.module or "") in ("pickle", "_pickle")
            if pickle_from and {a.name for a in node.names} & {"load", "loads", "Unpickler", "*"}:
                offenders.append(f"{py}:{node.lineno} imports a pickle loader")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("cPickle", "dill", "cloudpickle", "joblib") for n in names):
                    offenders.append(f"{py}:{node.lineno} imports a pickle-based module")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                kw = {k.arg: k.value for k in node.keywords}
                owner = ast.unparse(node.func.value)
                if node.func.attr == "load" and owner == "torch":
                    wo = kw.get("weights_only")
                    if not (isinstance(wo, ast.Constant) and wo.value is True):
                        offenders.append(f"{py}:{node.lineno} torch.load without weights_only=True")
                allow = kw.get("allow_pickle")
                if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                    offenders.append(f"{py}:{node.lineno} allow_pickle")
                if node.func.attr in ("load", "loads", "Unpickler") and owner in ("pickle", "_pickle"):
                    offenders.append(f"{py}:{node.lineno} pickle.{node.func.attr}")
    assert offenders == []


class _Payload:
    """Unpickling this creates the marker file: proof that something ran pickle on our data."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize(
    "target",
    ["model.safetensors", "optimizer.safetensors", "trainer_state.json", "manifest.json", "config.json"],
)
@pytest.mark.parametrize("fix_manifest", [False, True])
def test_planted_pickle_payload_never_runs(tmp_path, target, fix_manifest):
    run, _, _ = make_run(tmp_path, steps=(1,))
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Payload(str(marker)))
    step_dir = run / "checkpoints" / "step-00000001"
    (step_dir / target).write_bytes(payload)
    if fix_manifest and target != "manifest.json":
        # The attacker also rewrites the manifest so integrity checks pass: the loaders must still refuse.
        manifest = json.loads((step_dir / "manifest.json").read_text())
        manifest["files"][target] = {"size": len(payload), "sha256": ckpt.hashlib.sha256(payload).hexdigest()}
        (step_dir / "manifest.json").write_text(json.dumps(manifest))
    attempts = {
        "load_checkpoint": lambda: ckpt.load_checkpoint(
            step_dir, tiny_model(), torch.optim.AdamW(tiny_model().parameters())
        ),
        "resume": lambda: ckpt.resume(run, tiny_model(), torch.optim.AdamW(tiny_model().parameters())),
        "load_model(checkpoint)": lambda: load.load_model(step_dir),
    }
    if target in ("model.safetensors", "config.json"):
        (run / target).write_bytes(payload)
        attempts["load_model(run)"] = lambda: load.load_model(run)
    # Which loaders read the planted file (with a fixed manifest, the others rightly succeed).
    readers = {
        "model.safetensors": set(attempts),
        "manifest.json": set(attempts),
        "optimizer.safetensors": {"load_checkpoint", "resume"},
        "trainer_state.json": {"load_checkpoint", "resume"},
        "config.json": {"load_model(checkpoint)", "load_model(run)"},
    }[target]
    for name, attempt in attempts.items():
        if fix_manifest and name not in readers:
            continue
        with pytest.raises(ScratchLLMError):
            attempt()
    assert not marker.exists()


def test_wrapped_models_save_plain_names(tmp_path):
    """A DDP-style wrapper (``.module``) saves and loads under the plain parameter names."""

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    model, opt = trained_pair()
    path = ckpt.save_checkpoint(tmp_path, step=1, model=Wrapper(model), optimizer=opt, trainer_state={})
    tensors, _ = weights_io.read_safetensors(path / "model.safetensors")
    assert "tok_emb.weight" in tensors and not any(k.startswith("module.") for k in tensors)
    fresh = tiny_model(seed=5)
    ckpt.load_checkpoint(path, Wrapper(fresh), torch.optim.AdamW(fresh.parameters(), lr=1e-2))
    assert same_weights(model, fresh)


def test_manifest_must_match_directory_and_cover_every_file(tmp_path):
    run, _, _ = make_run(tmp_path, steps=(1, 2))
    ck = run / "checkpoints"
    # A checkpoint renamed to another step is not trusted.
    shutil.copytree(ck / "step-00000002", ck / "step-00000003")
    with pytest.raises(ScratchLLMError, match="manifest.json is for step 2"):
        runs.verify_checkpoint(ck / "step-00000003")
    shutil.rmtree(ck / "step-00000003")
    # A file the loader reads but the manifest does not cover is refused.
    manifest = json.loads((ck / "step-00000002" / "manifest.json").read_text())
    del manifest["files"]["optimizer.safetensors"]
    (ck / "step-00000002" / "manifest.json").write_text(json.dumps(manifest))
    path, skipped = ckpt.find_resumable_checkpoint(run)
    assert path.name == "step-00000001"
    assert skipped == ["step-00000002: optimizer.safetensors is not listed in manifest.json"]


def test_checkpoint_outside_a_run_uses_only_its_own_files(tmp_path):
    run, model, _ = make_run(tmp_path, steps=(1,))
    alone = tmp_path / "a" / "b" / "step-00000001"
    shutil.copytree(run / "checkpoints" / "step-00000001", alone)
    # An unrelated tokenizer two levels up must not be picked up as this model's tokenizer.
    CharTokenizer.train("xyz").save(tmp_path / "a" / "tokenizer.json")
    loaded = load.load_model(alone)
    assert loaded.tokenizer is None and same_weights(model, loaded.model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_and_weights_round_trip(tmp_path):
    torch.cuda.init()
    gens = {"sampling": torch.Generator(device="cuda").manual_seed(4)}
    saved = json.loads(json.dumps(capture_rng_state(gens)))
    assert saved["cuda"], "CUDA RNG state must be captured once CUDA is initialised"
    first = (torch.rand(3, device="cuda"), torch.rand(3, device="cuda", generator=gens["sampling"]))
    restore_rng_state(saved, gens)
    again = (torch.rand(3, device="cuda"), torch.rand(3, device="cuda", generator=gens["sampling"]))
    assert all(torch.equal(a, b) for a, b in zip(first, again))

    model = tiny_model().cuda()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long, device="cuda")).sum().backward()
    opt.step()
    runs.save_run_files(tmp_path, None, arch="gpt", model_config=CFG)
    path = ckpt.save_checkpoint(tmp_path, step=1, model=model, optimizer=opt, trainer_state={})
    loaded = load.load_model(path, device="cuda")
    assert next(loaded.model.parameters()).is_cuda and same_weights(model, loaded.model)
    fresh = tiny_model(seed=3).cuda()
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    ckpt.load_checkpoint(path, fresh, fresh_opt)
    assert all(v.is_cuda for s in fresh_opt.state.values() for k, v in s.items() if k != "step")
