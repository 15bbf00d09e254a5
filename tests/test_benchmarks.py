"""The benchmark suite must keep running: ``python -m benchmarks.run --quick`` end to end.

This checks that every benchmark script still works against the current library (and writes its
results), never how fast anything is: timings on a shared CI machine mean nothing in a unit test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ["tokenizer", "train", "generate", "serve", "memory", "quality", "runs", "data", "speedrun"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_benchmarks_run_and_write_results(tmp_path: Path, shared_data: Path) -> None:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    for name in BENCHMARKS:
        payload = json.loads((tmp_path / f"{name}-quick.json").read_text())
        assert payload["rows"], f"{name}: no rows"
        for row in payload["rows"]:
            assert row["ours"] > 0 and row["peer"] > 0, row
    summary = (tmp_path / "summary-quick.md").read_text()
    assert "| benchmark |" in summary
    curves = json.loads((tmp_path / "quality-curves-quick.json").read_text())
    assert curves["preset"] and curves["textbook"]


def test_results_dir_and_table_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.common import RESULTS_ENV, Row, format_table, time_interleaved, write_results

    monkeypatch.setenv(RESULTS_ENV, str(tmp_path))
    calls: list[str] = []
    t = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeat=3, warmup=1)
    assert calls == ["a", "b"] * 4  # warm-up round, then turns
    assert len(t["a"].runs) == 3 and t["a"].min <= t["a"].median
    row = Row(name="x", ours=2.0, peer=4.0, unit="s", peer_name="p", higher_is_better=False)
    assert row.ratio == pytest.approx(2.0)
    assert "| x |" in format_table([row])
    path = write_results("unit", [row])
    assert path.parent == tmp_path
    assert json.loads(path.read_text())["rows"][0]["ratio"] == pytest.approx(2.0)


def test_llamacpp_build_flags_follow_the_cpu(tmp_path: Path) -> None:
    """The llama.cpp peer is built for exactly the x86 extensions the CPU reports, AMX never."""
    from benchmarks import llamacpp

    def on(args: list[str]) -> set[str]:
        return {a[2:].split("=")[0] for a in args if a.endswith("=ON")}

    avx2 = on(llamacpp.cmake_args({"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"}))
    assert {"GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2"} <= avx2
    assert not any("AVX512" in o or "AMX" in o for o in avx2)
    intel = {"avx2", "fma", "f16c", "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw", "avx512_vnni"}
    args = llamacpp.cmake_args(intel | {"amx_tile", "amx_int8"})
    assert {"GGML_AVX512", "GGML_AVX512_VNNI"} <= on(args) and "GGML_AVX512_BF16" not in on(args)
    assert "-DGGML_NATIVE=OFF" in args and "-DGGML_AMX_TILE=OFF" in args and "-DGGML_AMX_INT8=OFF" in args
    assert "GGML_AVX512" not in on(llamacpp.cmake_args({"avx2", "avx512f"}))  # AVX-512 needs all five
    assert "make bench-llamacpp" in (llamacpp.check(tmp_path / "no-venv") or "")


def test_greedy_agreement_helper() -> None:
    from benchmarks.bench_generate import _agreement

    assert _agreement([1, 2, 3, 4], [1, 2, 9, 4]) == 0.75
    assert _agreement([], []) == 0.0


def test_nanogpt_peer_computes_the_same_function_as_our_gpt() -> None:
    """benchmarks/nanogpt_peer.py restates nanoGPT; our_config + to_our_state_dict must reproduce it."""
    import torch

    from benchmarks.nanogpt_peer import Recipe, build_model, our_config, to_our_state_dict
    from scratchllm.model.gpt import GPTModel

    r = Recipe(n_layer=2, n_head=2, n_embd=16, block_size=8)
    torch.manual_seed(0)
    peer = build_model(11, r).eval()
    ours = GPTModel(our_config(11, r)).eval()
    missing, unexpected = ours.load_state_dict(to_our_state_dict(peer), strict=False)
    assert not unexpected and all(k == "out_head.weight" for k in missing)  # the tied head
    x = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(2))
    logits, loss = peer(x, y)
    assert torch.allclose(ours(x), logits, atol=1e-5)
    from scratchllm.model.gpt import lm_loss

    assert torch.allclose(lm_loss(ours(x), y), loss, atol=1e-6)
