"""llama.cpp as an optional peer of the generation benchmark (``make bench-llamacpp``).

llama.cpp is the engine people run language models with on CPUs, so it is the peer that matters
for decoding speed. It is not a dependency of scratchllm: ``make bench-llamacpp`` builds the
``llama-cpp-python`` bindings from their PyPI source distribution into their own virtual
environment (``benchmarks/.venv-llamacpp``, git-ignored), and the benchmark talks to them through a
small worker process (:mod:`benchmarks.llamacpp_worker`) so that both engines are timed taking
turns in one run.

Three steps, each a subcommand of ``python -m benchmarks.llamacpp``:

``cmake-args``
    The ``CMAKE_ARGS`` for the build. A "native" build (``-march=native``) is not used: on some
    virtual machines the compiler sees AMX tile instructions that the hypervisor then refuses at
    run time (an illegal-instruction crash). Instead ``GGML_NATIVE=OFF`` and each x86 extension
    (SSE4.2, AVX, AVX2, BMI2, FMA, F16C, AVX-VNNI, AVX-512 F/VBMI/VNNI/BF16) is switched on exactly
    when ``/proc/cpuinfo`` lists it; AMX is always off.
``convert HF_DIR OUT_DIR``
    Writes ``OUT_DIR/model-f32.gguf`` and ``OUT_DIR/model-q8_0.gguf`` from a Hugging Face GPT-2
    directory, with the converter shipped in llama.cpp's own source tree
    (``convert_hf_to_gguf.py``, found in the unpacked source distribution) and its ``gguf``
    package (``gguf-py`` beside it). The converter needs torch, numpy and transformers, so it runs
    with the benchmark's Python, not the llama.cpp one.
``check``
    Says whether the peer is ready (the venv imports ``llama_cpp``, the source tree is there).

The benchmark (:mod:`benchmarks.bench_generate`) uses :class:`LlamaCppPeer` when the venv exists
and skips the peer, saying why, when it does not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: Where ``make bench-llamacpp`` puts the bindings' venv and the unpacked source distribution.
VENV = Path(os.environ.get("SCRATCHLLM_LLAMACPP_VENV", HERE / ".venv-llamacpp"))
WORKER = HERE / "llamacpp_worker.py"

#: /proc/cpuinfo flag -> ggml CMake option. A flag that is absent turns its option OFF.
ISA_OPTIONS: dict[str, tuple[str, ...]] = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx2",),
    "GGML_BMI2": ("bmi2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    # ggml's AVX512 option compiles with -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw.
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512f", "avx512vbmi"),
    "GGML_AVX512_VNNI": ("avx512f", "avx512_vnni"),
    "GGML_AVX512_BF16": ("avx512f", "avx512_bf16"),
}
#: Never on: a VM may advertise AMX to the compiler and still fault on the first tile instruction.
ALWAYS_OFF = ("GGML_NATIVE", "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")


def cmake_args(flags: set[str] | None = None) -> list[str]:
    """``-DGGML_...=ON/OFF`` for a portable build that uses every x86 extension this CPU has."""
    if flags is None:
        from scratchllm.model.quantize import cpu_flags

        flags = cpu_flags()
    args = [f"-D{opt}=OFF" for opt in ALWAYS_OFF]
    for opt, needs in ISA_OPTIONS.items():
        args.append(f"-D{opt}={'ON' if all(f in flags for f in needs) else 'OFF'}")
    # Only the text library is needed (no example programs, tests, servers or multimodal library).
    args += [
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAVA_BUILD=OFF",
    ]
    return args


# ---------------------------------------------------------------------------------------------
# The source tree (for the converter) and the conversion
# ---------------------------------------------------------------------------------------------
def source_tree(venv: Path = VENV) -> Path | None:
    """The vendored llama.cpp tree of the unpacked ``llama-cpp-python`` sdist, if present."""
    for sdist in sorted((venv / "src").glob("llama_cpp_python-*")):
        tree = sdist / "vendor" / "llama.cpp"
        if (tree / "convert_hf_to_gguf.py").is_file():
            return tree
    return None


def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def convert(
    hf_dir: Path, out_dir: Path, *, venv: Path = VENV, python: str = sys.executable
) -> dict[str, Path]:
    """Convert a Hugging Face GPT-2 directory to GGUF f32 and q8_0; return ``{"f32": path, ...}``.

    Files that already exist are reused (the model is random but seeded, so it is the same model).
    """
    tree = source_tree(venv)
    if tree is None:
        raise RuntimeError(f"no llama.cpp source tree under {venv}/src; run `make bench-llamacpp`")
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tree / "gguf-py"), os.environ.get("PYTHONPATH", "")]),
    }
    paths = {}
    for outtype in ("f32", "q8_0"):
        path = out_dir / f"model-{outtype}.gguf"
        if not path.is_file():
            tmp = path.with_suffix(".gguf.tmp")
            cmd = [python, str(tree / "convert_hf_to_gguf.py"), str(hf_dir), "--outtype", outtype]
            r = subprocess.run([*cmd, "--outfile", str(tmp)], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"convert_hf_to_gguf.py --outtype {outtype} failed:\n{r.stderr[-3000:]}")
            os.replace(tmp, path)
        paths[outtype] = path
    return paths


def write_hf_gpt2_dir(hf_model: Any, out_dir: Path, vocab_dir: Path) -> Path:
    """Save ``hf_model`` (``GPT2LMHeadModel``) plus the GPT-2 tokenizer files the converter reads.

    The converter identifies the tokenizer's pre-tokenizer by hashing how it splits a test string,
    so it must be GPT-2's real vocabulary: ``encoder.json``/``vocab.bpe`` from ``vocab_dir`` become
    the ``vocab.json``/``merges.txt`` that Hugging Face's tokenizer loader expects.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "vocab.json").write_bytes((vocab_dir / "encoder.json").read_bytes())
    (out_dir / "merges.txt").write_bytes((vocab_dir / "vocab.bpe").read_bytes())
    cfg = {"model_max_length": 1024, "tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    return out_dir


# ---------------------------------------------------------------------------------------------
# The peer: a worker process in the llama.cpp venv
# ---------------------------------------------------------------------------------------------
class LlamaCppPeer:
    """Talk to :mod:`benchmarks.llamacpp_worker` (one JSON line per request and per answer).

    ``load(name, gguf_path)`` loads a model once; ``decode(name, prompt, n)`` runs a greedy
    decode of ``n`` tokens after ``prompt`` and returns the new token ids and the worker's own
    time for it (so pipe overhead is not charged to llama.cpp).
    """

    def __init__(self, venv: Path = VENV, threads: int = 2) -> None:
        self.proc = subprocess.Popen(
            [str(venv_python(venv)), str(WORKER), "--threads", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.info = self._ask({"op": "info"})

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"llama.cpp worker exited (code {self.proc.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"llama.cpp worker: {answer['error']}")
        return answer

    def load(self, name: str, path: Path, n_ctx: int = 256) -> dict[str, Any]:
        return self._ask({"op": "load", "name": name, "path": str(path), "n_ctx": n_ctx})

    def decode(self, name: str, prompt: list[int], n: int) -> tuple[list[int], float]:
        a = self._ask({"op": "decode", "name": name, "prompt": prompt, "n": n})
        return a["tokens"], a["seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(RuntimeError, BrokenPipeError, OSError):
                self._ask({"op": "quit"})
            self.proc.wait(timeout=30)

    def __enter__(self) -> LlamaCppPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check(venv: Path = VENV) -> str | None:
    """None when the peer is ready, else why not (one line)."""
    py = venv_python(venv)
    if not py.exists():
        return f"no llama.cpp venv at {venv} (run `make bench-llamacpp`)"
    if source_tree(venv) is None:
        return f"no llama.cpp source tree under {venv}/src (run `make bench-llamacpp`)"
    r = subprocess.run([str(py), "-c", "import llama_cpp"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"llama_cpp does not import in {venv}: {r.stderr.strip().splitlines()[-1:]}"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="llama.cpp peer helpers for the generation benchmark")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("cmake-args", help="print CMAKE_ARGS for a portable build using this CPU's extensions")
    c = sub.add_parser("convert", help="HF GPT-2 directory -> GGUF f32 and q8_0")
    c.add_argument("hf_dir", type=Path)
    c.add_argument("out_dir", type=Path)
    sub.add_parser("check", help="is the peer ready?")
    args = p.parse_args(argv)
    if args.cmd == "cmake-args":
        print(" ".join(cmake_args()))
    elif args.cmd == "convert":
        for k, v in convert(args.hf_dir, args.out_dir).items():
            print(f"{k}: {v}")
    else:
        why = check()
        print(why or "ready")
        return 1 if why else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
