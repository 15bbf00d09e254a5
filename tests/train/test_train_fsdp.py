"""FSDP2 (``strategy="fsdp"``) on CPU with 2 gloo processes: the same numbers as one process and as
DDP, sharded safetensors checkpoints, bit-exact resume, consolidation, re-sharding 1 -> 2 -> 1."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from scratchllm import weights
from scratchllm.errors import ScratchLLMError
from scratchllm.runs import (
    MANIFEST,
    SHARDING_FILE,
    checkpoint_tensors,
    consolidate_checkpoint,
    is_sharded_checkpoint,
    load_run,
    verify_checkpoint,
)
from scratchllm.tasks.lm import LanguageModelingTask
from scratchllm.train.loop import train
from scratchllm.train.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train_ddp import run_worker  # noqa: E402
from test_train_loop import make_cfg, make_model, make_shards, same_weights  # noqa: E402

WORKER = Path(__file__).resolve().parent / "train_fsdp_worker.py"
STEP6 = "checkpoints/step-00000006"


def one_thread(fn):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    # "grown": a one-process run (2 steps) that the worker resumes on 2 ranks under FSDP.
    one_thread(
        lambda: train(
            make_model(dropout=0.0),
            LanguageModelingTask(make_shards(out), 16, 2),
            make_cfg(max_steps=2, batch_size=2, eval_steps=0, save_interval=2),
            out / "grown",
            progress=False,
        )
    )
    return run_worker(WORKER, out, timeout=300)


def load(path: Path) -> dict[str, torch.Tensor]:
    return weights.read_safetensors(path)[0]


def test_fsdp_step_equals_single_process_with_the_global_batch(fsdp_runs, tmp_path):
    ref = make_model(dropout=0.0)
    one_thread(
        lambda: train(
            ref,
            LanguageModelingTask(make_shards(tmp_path), 16, 4),
            make_cfg(max_steps=1, batch_size=4, eval_steps=0),
            tmp_path / "single",
            progress=False,
        )
    )
    got = make_model(seed=7, dropout=0.0)
    weights.load_weights(fsdp_runs / "equiv" / "model.safetensors", got)
    assert not same_weights(got.state_dict(), make_model(dropout=0.0).state_dict())  # it did train
    for (name, p), q in zip(ref.state_dict().items(), got.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    events = [e for e in read_metrics(fsdp_runs / "equiv" / "metrics.jsonl") if e["event"] == "train"]
    assert [e["step"] for e in events] == [1] and events[0]["tokens_seen"] == 2 * 2 * 16  # rank 0 only


def test_gradient_accumulation_under_fsdp_equals_ddp(fsdp_runs):
    a, b = (
        load(fsdp_runs / "accum_fsdp" / "model.safetensors"),
        load(fsdp_runs / "accum_ddp" / "model.safetensors"),
    )
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_nan_on_one_rank_skips_the_step_on_every_rank(fsdp_runs):
    model = make_model(seed=7, dropout=0.0)
    weights.load_weights(fsdp_runs / "nan" / "model.safetensors", model)
    assert same_weights(model.state_dict(), make_model(dropout=0.0).state_dict())
    skips = [e for e in read_metrics(fsdp_runs / "nan" / "metrics.jsonl") if e["event"] == "skip"]
    assert [(e["step"], e["reason"]) for e in skips] == [(1, "non-finite")]


def test_each_rank_writes_its_own_shard_and_rank_0_commits_one_manifest(fsdp_runs):
    ckpt = fsdp_runs / "full" / STEP6
    assert is_sharded_checkpoint(ckpt)
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == sorted(
        [
            "config.json",
            MANIFEST,
            SHARDING_FILE,
            "trainer_state.json",
            "model-shard-00000-of-00002.safetensors",
            "model-shard-00001-of-00002.safetensors",
            "optimizer-shard-00000-of-00002.safetensors",
            "optimizer-shard-00001-of-00002.safetensors",
        ]
    )
    manifest = verify_checkpoint(ckpt)
    assert set(manifest["files"]) == set(names) - {MANIFEST}
    doc = json.loads((ckpt / SHARDING_FILE).read_text())
    assert doc["world_size"] == 2 and doc["strategy"] == "fsdp"
    parts = doc["model"]["tensors"]["tok_emb.weight"]["parts"]  # 23 rows: 12 + 11, torch.chunk's rule
    assert [(p["offset"], p["rows"]) for p in parts] == [(0, 12), (12, 11)]
    # each shard really holds only its rows (nothing was gathered on one rank)
    shard1 = load(ckpt / "model-shard-00001-of-00002.safetensors")
    assert shard1["tok_emb.weight"].shape == (11, 16)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["environment"]["strategy"] == "fsdp"
    assert len(state["rng"]) == 2 and len(state["data"]) == 2
    # older checkpoints were pruned (keep=1 for the final one), and no temp litter is left
    assert [p.name for p in (fsdp_runs / "full" / "checkpoints").iterdir()] == ["step-00000006"]


def test_a_damaged_shard_fails_verification(fsdp_runs, tmp_path):
    ckpt = tmp_path / "step-00000006"
    shutil.copytree(fsdp_runs / "full" / STEP6, ckpt)
    shard = ckpt / "optimizer-shard-00001-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ScratchLLMError, match="optimizer-shard-00001-of-00002.safetensors sha256 mismatch"):
        verify_checkpoint(ckpt)
    shard.unlink()
    with pytest.raises(ScratchLLMError, match="optimizer-shard-00001"):
        verify_checkpoint(ckpt)


def test_paused_and_resumed_fsdp_run_is_bit_exact(fsdp_runs):
    full, paused = fsdp_runs / "full", fsdp_runs / "paused"
    assert same_weights(load(full / "model.safetensors"), load(paused / "model.safetensors"))
    a, b = checkpoint_tensors(full / STEP6, "optimizer"), checkpoint_tensors(paused / STEP6, "optimizer")
    assert a.names() == b.names() and len(a.names()) > 0
    assert all(torch.equal(a.read(n), b.read(n)) for n in a.names())
    assert a.metadata == b.metadata
    losses = [
        [(e["step"], e["loss"]) for e in read_metrics(run / "metrics.jsonl") if e["event"] == "train"]
        for run in (full, paused)
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    evals = [
        [e for e in read_metrics(run / "metrics.jsonl") if e["event"] == "eval"] for run in (full, paused)
    ]
    assert [e["val_loss"] for e in evals[0]] == [e["val_loss"] for e in evals[1]]
    # best.safetensors (saved without gathering: shards streamed into one file) matches too
    assert same_weights(load(full / "best.safetensors"), load(paused / "best.safetensors"))


def test_sharded_checkpoint_consolidates_to_the_live_weights(fsdp_runs, tmp_path):
    live = load(fsdp_runs / "live-full.safetensors")  # gathered with DTensor.full_tensor() in the worker
    published = load(fsdp_runs / "full" / "model.safetensors")
    assert live.keys() <= published.keys() and all(torch.equal(live[k], published[k]) for k in live)
    info = consolidate_checkpoint(fsdp_runs / "full", tmp_path / "one")
    assert info["sharded"] and info["shards"] == 2 and info["step"] == 6
    assert same_weights(load(tmp_path / "one" / "model.safetensors"), published)
    # every loader takes the sharded checkpoint directly too
    loaded = load_run(fsdp_runs / "full" / STEP6)
    state = loaded.model.state_dict()
    assert all(torch.equal(state[k], live[k]) for k in live)
    assert torch.equal(state["out_head.weight"], live["tok_emb.weight"])  # still tied


def test_activation_checkpointing_changes_nothing_but_memory(fsdp_runs):
    # dropout is on: the recomputation replays the same masks
    a, b = load(fsdp_runs / "full" / "model.safetensors"), load(fsdp_runs / "ckpt_on" / "model.safetensors")
    assert same_weights(a, b)


def test_one_process_run_resumes_on_two_under_fsdp(fsdp_runs):
    run = fsdp_runs / "grown"
    assert is_sharded_checkpoint(run / "checkpoints" / "step-00000004")
    assert not is_sharded_checkpoint(run / "checkpoints" / "step-00000002")
    steps = [e["step"] for e in read_metrics(run / "metrics.jsonl") if e["event"] == "train"]
    assert steps == [1, 2, 3, 4]


def test_fsdp_run_resumes_on_one_process_with_the_flag_and_warns(fsdp_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fsdp_runs / "full", run)
    shards = make_shards(tmp_path)
    long = dict(batch_size=2, eval_interval=2, eval_steps=2, save_interval=2, sample_interval=3)

    def resume(**kw):
        return one_thread(
            lambda: train(
                make_model(seed=3),
                LanguageModelingTask(shards, 16, 2),
                make_cfg(max_steps=8, strategy="fsdp", **long),
                run,
                resume=True,
                progress=False,
                **kw,
            )
        )

    with pytest.raises(ScratchLLMError, match="allow-world-size-change"):
        resume()
    messages: list[str] = []
    result = resume(allow_world_size_change=True, echo=messages.append)
    assert result.resumed_from == 6 and result.step == 8
    assert any("world_size changed from 2 to 1" in m for m in messages)
    assert any("strategy changed from 'fsdp' to 'single'" in m for m in messages)
    # the resumed weights were the sharded checkpoint's, re-assembled in one process
    assert not is_sharded_checkpoint(run / "checkpoints" / "step-00000008")


def test_force_over_an_fsdp_run_replaces_it_once_every_shard_is_committed(fsdp_runs):
    run = fsdp_runs / "forced"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]
    verify_checkpoint(run / "checkpoints" / "step-00000002")
    assert not [p for p in fsdp_runs.iterdir() if p.name.startswith(".forced.tmp-")]
    steps = [e["step"] for e in read_metrics(run / "metrics.jsonl") if e["event"] == "train"]
    assert steps == [1, 2]
    published = load(run / "model.safetensors")
    model = make_model(seed=9)
    weights.load_weights(run / "model.safetensors", model)
    assert not same_weights(model.state_dict(), make_model(seed=4).state_dict())
    assert published.keys() == load(fsdp_runs / "full" / "model.safetensors").keys()


def test_convert_consolidate_cli(fsdp_runs, tmp_path, capsys):
    from scratchllm.cli.main import main

    out = tmp_path / "one"
    assert main(["convert", "--consolidate", str(fsdp_runs / "full"), "--out", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sharded"] and info["step"] == 6 and "model.safetensors" in info["files"]
    assert same_weights(load(out / "model.safetensors"), load(fsdp_runs / "full" / "model.safetensors"))
    assert load_run(out).model.config.n_embd == 16
    # a populated --out is refused, and so is an --out inside the checkpoint
    assert main(["convert", "--consolidate", str(fsdp_runs / "full"), "--out", str(out)]) == 2
    assert "already contains files" in capsys.readouterr().err
    inside = fsdp_runs / "full" / "checkpoints" / "x"
    assert main(["convert", "--consolidate", str(fsdp_runs / "full"), "--out", str(inside)]) == 2
    assert "overlaps" in capsys.readouterr().err and not inside.exists()
    assert main(["convert", "--consolidate", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_inspect_prints_per_process_memory_for_fsdp(capsys):
    from scratchllm.cli.main import main

    argv = ["inspect", "--preset", "gpt2-xl", "--world-size", "8", "--device", "cuda", "--json"]
    assert main([*argv, "--strategy", "fsdp"]) == 0
    fsdp = json.loads(capsys.readouterr().out)["training_memory"]
    assert main([*argv, "--strategy", "ddp"]) == 0
    ddp = json.loads(capsys.readouterr().out)["training_memory"]
    params = 1_557_611_200
    assert fsdp["bytes"]["weights"] == -(-params // 8) * 4 and ddp["bytes"]["weights"] == params * 4
    assert fsdp["bytes"]["optimizer"] == 2 * fsdp["bytes"]["weights"]
    assert fsdp["bytes"]["gathered"] < ddp["bytes"]["ddp_buckets"] / 4
    ckpt = fsdp["bytes_activation_checkpointing"]
    assert (
        ckpt["activations"] < fsdp["bytes"]["activations"] / 4 and ckpt["weights"] == fsdp["bytes"]["weights"]
    )
    assert main(["inspect", "--preset", "gpt2-xl", "--strategy", "fsdp", "--world-size", "8"]) == 0
    text = capsys.readouterr().out
    assert (
        "training memory per process (fsdp, 8 process(es), cpu" in text and "activation checkpointing" in text
    )
    assert main(["inspect", "--preset", "tiny", "--world-size", "0"]) == 2
    assert "--world-size must be >= 1" in capsys.readouterr().err
