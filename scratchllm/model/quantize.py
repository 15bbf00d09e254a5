"""Faster CPU generation: int8 weights, and the matrix-vector kernels that decoding runs.

Why: generating one token multiplies one activation vector by *every* weight matrix once. That is
not limited by arithmetic but by how fast the weights stream from memory — GPT-2 small's 124M
fp32 weights are ~0.5 GB per token. Stored as int8 they are ~0.125 GB: up to 4x fewer bytes to read.

How: each output row (channel) ``w`` of a Linear layer gets its own scale ``s = max|w| / 127`` and
is stored as ``round(w / s)`` in int8 (symmetric, per-output-channel). The matmul computes
``(x @ q.T) * s``, which equals ``x @ (q * s).T``: the scale is applied to the *outputs*, so the
weights are never expanded back to float in memory. Only the weights are rounded ("weight-only"
quantization); activations stay fp32 (except with the ``cpp-q8`` kernel below).

An fp32 model decodes faster too: :func:`prepare_fp32_decoding` (what ``scratchllm generate`` runs
without ``--int8``) swaps its Linear layers' one-token product for scratchllm's fp32 kernel, which
reads the unchanged weights at close to the memory bandwidth (see :class:`DecodingLinear`).

Kernels — one :class:`Int8Linear` module, four ways to run its one-token product. Three compute
the same numbers (the product with the dequantized weights ``q * s``, up to summation order), so
choosing among them never changes what the model says; ``cpp-q8`` and ``int8pack`` also round the
activations (to int8 in runs of 16, or to bf16), at a perplexity cost that is tested to stay
under 1 %:

* ``"cpp"``: scratchllm's own matrix-vector kernel (``int8_kernel.cpp`` beside this file), built
  at first use for this CPU's instruction set (AVX2+FMA or AVX-512; plain C++ elsewhere) and
  cached. It stores the weights in a cache-line-friendly packed order so they stream from memory
  in one pass (four runs per thread, see the C++ file). Needs a C++ compiler (and ninja) once.
* ``"cpp-q8"``: the same packed weights, with each activation row rounded to int8 in runs of 16
  values (one scale per run, as llama.cpp's ``q8_0`` does per 32): the inner loop is then an
  integer dot product (AVX2 ``maddubs``), ~4x fewer instructions per weight than widening int8 to
  fp32. It wins where the widening, not memory, is the limit (one thread: 1.3x ``cpp`` here).
* ``"int8pack"``: PyTorch's ``aten._weight_int8pack_mm`` (weight-only int8 x bf16 activations;
  with fp32 activations it takes a slow path on the CPUs we measured). No compiler needed; also
  the kernel on CUDA.
* ``"fp32"``: the rounded weights expanded back to fp32, multiplied the way an fp32 model decodes
  (scratchllm's fp32 matrix-vector kernel where it builds, see :class:`DecodingLinear`). Not a
  memory saving: it is there so that ``--int8`` can never be *slower* than fp32 on a machine
  where no int8 kernel wins.

``kernel="auto"`` (the default) picks by measurement: each available kernel runs a decode-like
pass over matrices of the model's own shapes, taking turns, and the fastest median wins. The
choice is cached per (CPU, torch version, threads, shapes) in ``$SCRATCHLLM_CACHE_DIR``
(default ``~/.cache/scratchllm``), so the measurement (~1 s) happens once per machine;
``SCRATCHLLM_INT8_KERNEL=cpp|int8pack|fp32`` overrides it.

Prompts and evaluation batches (more than :data:`SMALL_M` rows at once) are compute-bound, not
memory-bound: there the weights are dequantized on the fly and multiplied with PyTorch's matmul.

Quantized models are for inference only (no gradients through int8 weights, not saved).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchllm.errors import ScratchLLMError
from scratchllm.model.layers import FeedForward, LayerNorm, RMSNorm

#: Every kernel name, in the order "auto" prefers them on a tie.
KERNELS = ("cpp", "cpp-q8", "int8pack", "fp32")
#: The kernels that are scratchllm's own C++ (they share the packed weights and the build).
CPP_KERNELS = ("cpp", "cpp-q8")
#: Up to this many activation rows per call the matrix-vector kernels run; above it, dequant + matmul.
SMALL_M = 16
#: The C++ kernel packs rows 4 at a time and inputs 16 at a time (see int8_kernel.cpp).
_ROWS, _STEP = 4, 16
#: Size cap (int8 bytes) of the synthetic decode pass that "auto" times: above the last-level
#: cache of the CPUs we know, so it streams from memory the way a real decoding step does.
_MEASURE_BYTES = 48 * 2**20


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """fp weight ``[N, K]`` -> (int8 ``[N, K]``, fp32 scales ``[N]``), symmetric per output row."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scales


def pack_weight(q: Tensor) -> Tensor:
    """int8 ``[N, K]`` -> the C++ kernel's layout ``[ceil(N/4), 4 * K16]`` (``K16`` = K rounded up to 16).

    Rows go in blocks of 4; inside a block, for every 16 inputs, the 16 weights of row 0, then of
    rows 1, 2, 3: one 64-byte cache line per step of the kernel's inner loop. Missing rows and
    inputs are zero.
    """
    n, k = q.shape
    n4, k16 = -(-n // _ROWS) * _ROWS, -(-k // _STEP) * _STEP
    padded = torch.zeros(n4, k16, dtype=torch.int8, device=q.device)
    padded[:n, :k] = q
    blocks = padded.view(n4 // _ROWS, _ROWS, k16 // _STEP, _STEP).permute(0, 2, 1, 3)
    return blocks.contiguous().view(n4 // _ROWS, _ROWS * k16)


def unpack_weight(packed: Tensor, n: int, k: int) -> Tensor:
    """The inverse of :func:`pack_weight`: int8 ``[n, k]``."""
    blocks, width = packed.shape
    k16 = width // _ROWS
    rows = packed.view(blocks, k16 // _STEP, _ROWS, _STEP).permute(0, 2, 1, 3).reshape(blocks * _ROWS, k16)
    return rows[:n, :k]


# ---------------------------------------------------------------------------------------------
# The C++ kernel: built once per (source, flags, torch version), loaded once per process
# ---------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where scratchllm caches machine-specific things (``$SCRATCHLLM_CACHE_DIR`` or ~/.cache/scratchllm)."""
    env = os.environ.get("SCRATCHLLM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "scratchllm"


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The instruction-set flags of the first CPU in ``/proc/cpuinfo`` (an empty set elsewhere)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def kernel_isa_flags(flags: set[str] | None = None) -> list[str]:
    """Compiler flags for the C++ kernel: the widest vector ISA this CPU reports, named one by one.

    Never ``-march=native``: on some virtual machines the compiler would see extensions (AMX)
    that the hypervisor refuses at run time.
    """
    flags = cpu_flags() if flags is None else flags
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        return ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma"]
    if {"avx2", "fma"} <= flags:
        return ["-mavx2", "-mfma"]
    return []


def kernel_cflags() -> list[str]:
    """Every compiler flag of the C++ kernel: optimisation, OpenMP and this CPU's ISA.

    ``-fopenmp`` matters more than it looks: ``at::parallel_for`` is a header-only template whose
    threads come from an ``#pragma omp parallel`` compiled *into the extension*; without the flag
    the pragma is ignored and the kernel runs on one thread whatever ``torch.set_num_threads``
    says. The extension then links ``libgomp.so.1``, which resolves to the copy torch has
    already loaded (same soname), so it shares torch's thread pool and thread count.
    """
    return ["-O3", "-fopenmp", *kernel_isa_flags()]


def _kernel_source() -> Path:
    return Path(__file__).with_name("int8_kernel.cpp")


def cpp_kernel_build_dir() -> Path:
    """The build directory of the C++ kernel for this source, these flags and this torch."""
    flags = kernel_cflags()
    tag = hashlib.sha256(
        _kernel_source().read_bytes() + " ".join(flags).encode() + torch.__version__.encode()
    ).hexdigest()[:16]
    return cache_dir() / "int8-kernel" / tag


def cpp_kernel_is_built() -> bool:
    """True if the C++ kernel for this machine is already compiled (loading it is then instant)."""
    return (cpp_kernel_build_dir() / "scratchllm_int8.so").is_file()


@functools.cache
def _load_cpp_kernel() -> str | None:
    """Build (first time) and load the C++ kernel; return None on success, else why it failed."""
    if hasattr(torch.ops, "scratchllm_int8") and hasattr(torch.ops.scratchllm_int8, "linear_packed"):
        return None
    build_dir = cpp_kernel_build_dir()
    library = build_dir / "scratchllm_int8.so"
    try:
        if library.is_file():
            torch.ops.load_library(str(library))
            return None
        from torch.utils.cpp_extension import load

        build_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load(
                name="scratchllm_int8",
                sources=[str(_kernel_source())],
                extra_cflags=kernel_cflags(),
                extra_ldflags=["-fopenmp"],
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=False,
            )
        return None
    except Exception as err:  # no compiler, no ninja, a compile error: fall back to another kernel
        lines = str(err).strip().splitlines() or [type(err).__name__]
        return f"{type(err).__name__}: {lines[-1][:300]}"


@functools.cache
def _cpp_linear():  # the op's overload, looked up once (``torch.ops`` lookups cost microseconds)
    return torch.ops.scratchllm_int8.linear_packed.default


@functools.cache
def _cpp_linear_q8():
    return torch.ops.scratchllm_int8.linear_packed_q8.default


@functools.cache
def _cpp_rows_f32():
    return torch.ops.scratchllm_int8.linear_rows_f32.default


def quantize_activations(x: Tensor, run: int = _STEP) -> tuple[Tensor, Tensor]:
    """fp32 ``[..., K]`` (K a multiple of ``run``) -> (int8 values, fp32 scales ``[..., K/run]``).

    What the ``cpp-q8`` kernel does to each activation row before its integer dot products: every
    run of 16 consecutive values gets the scale ``d = max|x| / 127`` and is stored as
    ``round(x / d)``. Written out here in PyTorch so tests (and learners) can check the kernel
    against it; the kernel does the same in C++.
    """
    runs = x.float().reshape(*x.shape[:-1], -1, run)
    amax = runs.abs().amax(dim=-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    q = torch.round(runs * inv).to(torch.int8).reshape(x.shape)
    return q, (amax / 127.0).squeeze(-1)


def cpp_kernel_error() -> str | None:
    """None if the C++ kernel is usable here (building it if needed), else the reason it is not."""
    return _load_cpp_kernel()


def available_kernels(device: torch.device | str = "cpu") -> list[str]:
    """The kernels that can run on ``device`` here (building the C++ kernel on first call)."""
    if torch.device(device).type != "cpu":
        return ["int8pack", "fp32"]
    return [k for k in KERNELS if k not in CPP_KERNELS or cpp_kernel_error() is None]


# ---------------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------------
class Int8Linear(nn.Module):
    """A drop-in ``nn.Linear`` replacement holding int8 weights and per-row scales (inference only).

    ``kernel`` is one of :data:`KERNELS` (see the module docstring); the weights are kept in the
    form that kernel reads: ``packed`` (cpp), ``weight_int8`` (int8pack) or the dequantized
    ``weight`` (fp32).
    """

    def __init__(self, linear: nn.Linear, kernel: str = "int8pack") -> None:
        q, scales = quantize_weight(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        super().__init__()
        self._setup(q, scales, bias, kernel)

    @classmethod
    def from_int8(
        cls, q: Tensor, scales: Tensor, bias: Tensor | None = None, kernel: str = "int8pack"
    ) -> Int8Linear:
        """A layer from an already quantized int8 ``[out, in]`` weight and its fp32 scales ``[out]``."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._setup(q, scales.float(), None if bias is None else bias.float(), kernel)
        return layer

    def _setup(self, q: Tensor, scales: Tensor, bias: Tensor | None, kernel: str) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"unknown int8 kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
        if kernel in CPP_KERNELS and (why := cpp_kernel_error()) is not None:
            raise ScratchLLMError(
                f"the {kernel} int8 kernel is unavailable here ({why}); use kernel 'int8pack'"
            )
        self.out_features, self.in_features = q.shape
        self.kernel = kernel
        #: inputs rounded up to a multiple of 16: both int8 kernels want it (``_weight_int8pack_mm``
        #: returns wrong numbers for several rows when K is not a multiple of 8, in torch 2.13)
        self.k16 = -(-self.in_features // _STEP) * _STEP
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)
        if kernel in CPP_KERNELS:
            self.register_buffer("packed", pack_weight(q))
        elif kernel == "int8pack":
            self.register_buffer("weight_int8", F.pad(q, (0, self.k16 - self.in_features)).contiguous())
            self.register_buffer(
                "scales_bf16", scales.to(torch.bfloat16)
            )  # the kernel wants activation dtype
        else:  # fp32 of the *rounded* weights: same numbers as the int8 kernels, decoded the way
            # an fp32 model is (row-major for scratchllm's kernel, column-major for PyTorch's)
            weight = q.float() * scales[:, None]
            self.rows_kernel = cpp_kernel_error() is None
            self.register_buffer("weight", weight if self.rows_kernel else weight.t().contiguous().t())

    def int8_weight(self) -> Tensor | None:
        """The int8 ``[out, in]`` matrix (None for the fp32 kernel, which keeps only floats)."""
        if self.kernel in CPP_KERNELS:
            return unpack_weight(self.packed, self.out_features, self.in_features)
        return self.weight_int8[:, : self.in_features] if self.kernel == "int8pack" else None

    def dequantized(self) -> Tensor:
        """The fp32 ``[out, in]`` weight this layer multiplies by (``q * s``)."""
        if self.kernel == "fp32":
            return self.weight
        return self.int8_weight().float() * self.scales[:, None]

    def forward(self, x: Tensor) -> Tensor:
        # Decoding calls this ~50 times per token with one row: every Python step here counts
        # (it is written to skip conversions that would be no-ops).
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != torch.float32:
            x2 = x2.float()
        if self.kernel == "fp32":
            if self.rows_kernel and x2.shape[0] <= SMALL_M:
                y = _cpp_rows_f32()(x2.contiguous(), self.weight, self.bias)
            else:
                y = F.linear(x2, self.weight, self.bias)
        elif x2.shape[0] > SMALL_M:  # many rows (a prompt, an eval batch): compute-bound, use matmul
            y = F.linear(x2, self.dequantized(), self.bias)
        else:
            if self.k16 != self.in_features:
                x2 = F.pad(x2, (0, self.k16 - self.in_features))
            if self.kernel in CPP_KERNELS:
                op = _cpp_linear() if self.kernel == "cpp" else _cpp_linear_q8()
                y = op(x2.contiguous(), self.packed, self.scales, self.bias, self.out_features)
            else:
                y = torch.ops.aten._weight_int8pack_mm(
                    x2.to(torch.bfloat16), self.weight_int8, self.scales_bf16
                )
                y = y.float() if self.bias is None else y.float() + self.bias
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"


# ---------------------------------------------------------------------------------------------
# Choosing a kernel by measurement
# ---------------------------------------------------------------------------------------------
@dataclass
class KernelChoice:
    """What "auto" picked, and why: median seconds of the timed decode pass per kernel."""

    kernel: str
    seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    #: kernels that could not be used here, with the reason
    unavailable: dict[str, str] = field(default_factory=dict)


def _machine_key(shapes: list[tuple[int, int]]) -> str:
    flags = " ".join(sorted(cpu_flags()))
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # The kernel build's tag (source, flags, torch): a changed kernel is measured afresh.
    raw = json.dumps(
        [model, flags, torch.__version__, torch.get_num_threads(), shapes, cpp_kernel_build_dir().name]
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _measure_shapes(shapes: list[tuple[int, int]], cap: int = _MEASURE_BYTES) -> list[tuple[int, int]]:
    """The model's ``(out, in)`` shapes in order, every s-th one so the pass stays under ``cap``
    weights."""
    total = sum(n * k for n, k in shapes)
    stride = max(1, -(-total // cap))
    return shapes[::stride]


def take_turns(passes: dict[str, Callable[[], object]], repeat: int = 5) -> dict[str, float]:
    """Median seconds of each pass, run in turns (a, b, c, a, b, c, ...) after one warm-up round,
    so a burst of background load hits every candidate alike."""
    runs: dict[str, list[float]] = {k: [] for k in passes}
    with torch.inference_mode():
        for r in range(repeat + 1):
            for name, one_pass in passes.items():
                t0 = time.perf_counter()
                one_pass()
                if r:  # the first round is the warm-up
                    runs[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in runs.items()}


def measure_kernels(
    shapes: list[tuple[int, int]], kernels: list[str], *, repeat: int = 5
) -> dict[str, float]:
    """Median seconds of one decode-like pass (one activation row through every matrix) per kernel.

    The matrices have the given ``(out, in)`` shapes and random weights; the kernels take turns
    (see :func:`take_turns`).
    """
    gen = torch.Generator().manual_seed(0)
    layers: dict[str, list[Int8Linear]] = {k: [] for k in kernels}
    for n, k in shapes:
        q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
        scales, bias = torch.full((n,), 0.02 / 127), torch.zeros(n)
        for name in kernels:
            layers[name].append(Int8Linear.from_int8(q, scales, bias, name))
    inputs = {k: torch.randn(1, k) for _, k in shapes}
    return take_turns({name: functools.partial(_one_pass, layers[name], inputs) for name in kernels}, repeat)


def _one_pass(layers: list[nn.Module], inputs: dict[int, Tensor]) -> None:
    for layer in layers:
        layer(inputs[layer.in_features])


def choose_kernel(
    shapes: list[tuple[int, int]],
    device: torch.device | str = "cpu",
    *,
    cache_path: Path | None = None,
    use_cache: bool = True,
) -> KernelChoice:
    """Pick the fastest kernel for a model whose Linear layers have these ``(out, in)`` shapes.

    Off the CPU: ``int8pack``. On the CPU: ``$SCRATCHLLM_INT8_KERNEL`` if set, else a cached
    earlier measurement for this machine, else :func:`measure_kernels` over the available kernels
    (the result is cached in ``cache_path``, default ``cache_dir() / "int8-kernels.json"``).
    """
    if forced := _forced_choice("SCRATCHLLM_INT8_KERNEL", KERNELS):
        return forced
    if torch.device(device).type != "cpu":
        return KernelChoice("int8pack")
    unavailable = {}
    if (why := cpp_kernel_error()) is not None:
        unavailable.update(dict.fromkeys(CPP_KERNELS, why))
    kernels = available_kernels("cpu")
    return _cached_choice(
        _machine_key(shapes),
        kernels,
        lambda: measure_kernels(_measure_shapes(shapes), kernels),
        KERNELS,
        len(shapes),
        cache_path or cache_dir() / "int8-kernels.json",
        use_cache,
        unavailable,
    )


def _forced_choice(variable: str, names: tuple[str, ...]) -> KernelChoice | None:
    """The choice an environment variable forces (None if unset); a one-line error if it names
    nothing known."""
    forced = os.environ.get(variable)
    if not forced:
        return None
    if forced not in names:
        raise ScratchLLMError(f"{variable}={forced!r} is not one of {', '.join(names)}")
    return KernelChoice(forced)


def _cached_choice(
    key: str,
    candidates: list[str],
    measure: Callable[[], dict[str, float]],
    preference: tuple[str, ...],
    n_shapes: int,
    cache_path: Path,
    use_cache: bool,
    unavailable: dict[str, str],
) -> KernelChoice:
    """The cached winner for ``key`` if it is still a candidate, else measure, pick the lowest
    median (ties: the earlier one in ``preference``) and cache it (atomically; a read-only home
    directory just means no cache)."""
    cache: dict = {}
    if use_cache:
        try:
            cache = json.loads(cache_path.read_text())
            hit = cache.get(key)
            if hit and hit.get("kernel") in candidates:
                return KernelChoice(hit["kernel"], hit.get("seconds", {}), cached=True)
        except (OSError, ValueError, AttributeError):
            cache = {}
    seconds = measure()
    best = min(candidates, key=lambda k: (seconds[k], preference.index(k)))
    choice = KernelChoice(best, {k: round(v, 6) for k, v in seconds.items()}, False, unavailable)
    if use_cache:
        from scratchllm.io import atomic_write_json

        record = {k: v for k, v in asdict(choice).items() if k in ("kernel", "seconds")}
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        cache[key] = {**record, "shapes": n_shapes, "when": when}
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(cache_path, cache)
        except (OSError, ScratchLLMError):
            pass
    return choice


def quantize_int8(model: nn.Module, kernel: str | None = "auto", *, fuse_blocks: bool = True) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (in place) by :class:`Int8Linear`; return the model.

    ``kernel``: one of :data:`KERNELS`, or ``"auto"``/None to pick by measurement (see
    :func:`choose_kernel`). The choice is in each layer's ``kernel`` and in :func:`kernel_in_use`.
    ``fuse_blocks``: with a C++ kernel, also decode one token through each transformer block in
    one C++ call where the block allows it (:func:`use_fused_decoding`).

    The output head is quantized too: it is the largest matrix of a small GPT. The token embedding
    stays in float (it is a table lookup, one row per token, so its size costs no bandwidth).
    """
    model.eval()
    targets = [
        (module, name, child)
        for module in list(model.modules())
        for name, child in list(module.named_children())
        if isinstance(child, nn.Linear)
    ]
    if not targets:
        return model
    if kernel in (None, "auto"):
        device = targets[0][2].weight.device
        kernel = choose_kernel([(c.out_features, c.in_features) for _, _, c in targets], device).kernel
    for module, name, child in targets:
        setattr(module, name, Int8Linear(child, kernel))
    if fuse_blocks and kernel in CPP_KERNELS:
        use_fused_decoding(model)
    return model


# ----------------------------------------------------------------------------- fused blocks
@functools.cache
def _cpp_decode_block():
    return torch.ops.scratchllm_int8.decode_block.default


#: activation name (``GPTConfig.activation``) -> the C++ block's code for it
_FUSED_ACTIVATIONS = {"gelu": 0, "gelu_erf": 1, "relu": 2, "relu2": 3, "swiglu": 4}


def fused_decoding_obstacle(block: nn.Module) -> str | None:
    """Why ``block`` (a :class:`~scratchllm.model.gpt.TransformerBlock`) cannot decode through the
    fused C++ block, or None when it can: pre-norm, LayerNorm/RMSNorm, a dense FFN with one of
    :data:`_FUSED_ACTIVATIONS`, no QK-norm, and all four products on one of the C++ int8 kernels
    with no padding of the inputs. (RoPE, ALiBi, padding and batches are checked per call.)"""
    if not getattr(block, "pre_norm", False):
        return "not a pre-norm block"
    norms = (block.norm1, block.norm2)
    if not all(type(n) in (LayerNorm, RMSNorm) for n in norms) or type(norms[0]) is not type(norms[1]):
        return "its norms are not both LayerNorm or both RMSNorm"
    if norms[0].eps != norms[1].eps:
        return "its two norms have different eps"
    ffn = getattr(block, "ffn", None)
    if type(ffn) is not FeedForward or ffn.activation not in _FUSED_ACTIVATIONS:
        return "its feed-forward layer is not a dense FFN with GELU, ReLU, ReLU² or SwiGLU"
    attn = block.attn
    if attn.q_norm is not None or not attn.causal:
        return "its attention uses QK-norm or is not causal"
    linears = (attn.qkv, attn.proj, ffn.fc, ffn.proj)
    if not all(isinstance(m, Int8Linear) and m.kernel in CPP_KERNELS for m in linears):
        return "its products are not all on a C++ int8 kernel"
    if len({m.kernel for m in linears}) != 1 or any(m.k16 != m.in_features for m in linears):
        return "its products use different kernels or inputs that need padding"
    return None


def _detached(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()


class FusedDecodeBlock:
    """One token through one transformer block in one C++ call (``decode_block`` in
    ``int8_kernel.cpp``): the block's tensors gathered once, the KV-cache slot written in place.

    Decoding a token of GPT-2 small ran ~35 small PyTorch operators per block around the four
    weight products — each a trip through Python and the dispatcher, ~5-7 ms per token in all,
    as much as the products took once they were fast. The fused block does that arithmetic in
    C++ (norms, the cache write, attention of one query over the cache, activation, residuals).
    The module path stays for everything else; the results agree up to the order of the sums.
    """

    def __init__(self, block: nn.Module) -> None:
        attn, ffn = block.attn, block.ffn
        self.layer = attn.layer_idx
        self.n_head = attn.n_head
        norm1, norm2 = block.norm1, block.norm2
        q8 = attn.qkv.kernel == "cpp-q8"
        rms = isinstance(norm1, RMSNorm)  # (no bias; LayerNorm's is optional)

        def product(m: Int8Linear) -> tuple[Tensor, Tensor, Tensor | None]:
            return m.packed, m.scales, m.bias

        self.before = (
            norm1.weight.detach(),
            _detached(getattr(norm1, "bias", None)),
            *product(attn.qkv),
            *product(attn.proj),
            norm2.weight.detach(),
            _detached(getattr(norm2, "bias", None)),
            *product(ffn.fc),
            *product(ffn.proj),
        )
        self.after = (self.n_head, float(norm1.eps), rms, _FUSED_ACTIVATIONS[ffn.activation], q8)

    def __call__(self, x: Tensor, kv_cache: Any) -> Tensor:
        # the whole cache and this block's layer: the kernel finds the slice (batch of one)
        return _cpp_decode_block()(
            x, *self.before, kv_cache.k, kv_cache.v, self.layer, kv_cache.length, *self.after
        )


def use_fused_decoding(model: nn.Module) -> int:
    """Give every transformer block of ``model`` that can take it (:func:`fused_decoding_obstacle`)
    a :class:`FusedDecodeBlock` for one-token decoding steps (in place); returns how many got one.

    The block uses it only for one row, one new token, a whole-batch (not per-row) KV cache, no
    mask, no RoPE, gradients off; every other call takes the module path as before. For a model
    that only generates: the fused block holds the weights it was built from, so quantize, move
    and convert the model first.
    """
    if cpp_kernel_error() is not None:
        return 0
    from scratchllm.model.gpt import TransformerBlock

    n = 0
    for block in model.modules():
        if isinstance(block, TransformerBlock) and fused_decoding_obstacle(block) is None:
            block.decode_step = FusedDecodeBlock(block)
            n += 1
    return n


def fused_blocks(model: nn.Module) -> int:
    """How many blocks of ``model`` decode through the fused C++ block (:func:`use_fused_decoding`)."""
    return sum(isinstance(getattr(m, "decode_step", None), FusedDecodeBlock) for m in model.modules())


def kernel_in_use(model: nn.Module) -> str | None:
    """The kernel of ``model``'s int8 layers (None if it has none)."""
    return next((m.kernel for m in model.modules() if isinstance(m, Int8Linear)), None)


# ---------------------------------------------------------------------------------------------
# fp32 decoding: the same idea without rounding anything
# ---------------------------------------------------------------------------------------------
#: How an fp32 model's Linear layers run a decoding step: "cpp" (scratchllm's matrix-vector
#: kernel on the unchanged row-major weights, :class:`DecodingLinear`) or "blas" (PyTorch's
#: matmul on column-major weights, :func:`relayout_for_decoding`). In the order "auto" prefers.
FP32_DECODERS = ("cpp", "blas")


class DecodingLinear(nn.Linear):
    """An ``nn.Linear`` whose few-row products (a decoding step) run scratchllm's fp32 kernel.

    Decoding multiplies one activation row by each weight matrix: the time is the time to read
    the weights. The C++ kernel (``linear_rows_f32`` in ``int8_kernel.cpp``) reads ``nn.Linear``'s
    own row-major weight front to back, four runs per thread, at close to the memory bandwidth;
    PyTorch's matrix-vector product reached ~55 % of it on the CPUs we measured. Same parameters
    (the very same ``Parameter`` objects, so a tied head stays tied), same state dict, same
    results up to the order of the sum. Everything else — prompts (more than :data:`SMALL_M`
    rows), gradients, other dtypes or devices — goes through ``F.linear`` as before.
    """

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if (
            x.dtype == torch.float32
            and w.dtype == torch.float32
            and x.device.type == "cpu"
            and x.numel() <= SMALL_M * self.in_features
            and w.is_contiguous()
            and not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))
        ):
            y = _cpp_rows_f32()(x.reshape(-1, self.in_features).contiguous(), w, self.bias)
            return y.view(*x.shape[:-1], self.out_features)
        return F.linear(x, w, self.bias)


def use_decoding_kernel(model: nn.Module) -> nn.Module:
    """Make every plain ``nn.Linear`` of ``model`` a :class:`DecodingLinear` (in place); return it.

    The modules keep their parameters and buffers; only their class (their ``forward``) changes,
    so nothing is copied. Subclasses of ``nn.Linear`` (e.g. LoRA layers) are left alone.
    """
    if (why := cpp_kernel_error()) is not None:
        raise ScratchLLMError(f"the C++ decoding kernel is unavailable here ({why})")
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = DecodingLinear
    return model


def measure_fp32_decoders(
    shapes: list[tuple[int, int]], decoders: list[str], *, repeat: int = 5
) -> dict[str, float]:
    """Median seconds of a decode-like fp32 pass over matrices of these shapes, per decoder."""
    gen = torch.Generator().manual_seed(0)
    layers: dict[str, list[nn.Module]] = {d: [] for d in decoders}
    for n, k in shapes:
        w = torch.randn(n, k, generator=gen) * 0.02
        for name in decoders:
            lin = nn.Linear(k, n, bias=False).requires_grad_(False)
            lin.weight.data = w if name == "cpp" else w.t().contiguous().t()
            layers[name].append(use_decoding_kernel(lin) if name == "cpp" else lin)
    inputs = {k: torch.randn(1, k) for _, k in shapes}
    return take_turns({name: functools.partial(_one_pass, layers[name], inputs) for name in decoders}, repeat)


def choose_fp32_decoder(
    shapes: list[tuple[int, int]], *, cache_path: Path | None = None, use_cache: bool = True
) -> KernelChoice:
    """Pick how an fp32 model decodes on this CPU (see :data:`FP32_DECODERS`), as
    :func:`choose_kernel` picks an int8 kernel: ``$SCRATCHLLM_FP32_DECODER`` if set, else a
    cached measurement, else :func:`measure_fp32_decoders` (fp32 matrices, a quarter of the int8
    pass's bytes) cached beside the int8 choices."""
    if forced := _forced_choice("SCRATCHLLM_FP32_DECODER", FP32_DECODERS):
        return forced
    unavailable = {} if (why := cpp_kernel_error()) is None else {"cpp": why}
    decoders = [d for d in FP32_DECODERS if d not in unavailable]
    subset = _measure_shapes(shapes, _MEASURE_BYTES // 4)
    return _cached_choice(
        "fp32-decoding:" + _machine_key(shapes),
        decoders,
        lambda: measure_fp32_decoders(subset, decoders),
        FP32_DECODERS,
        len(shapes),
        cache_path or cache_dir() / "int8-kernels.json",
        use_cache,
        unavailable,
    )


def prepare_fp32_decoding(model: nn.Module, decoder: str | None = "auto") -> str:
    """Get an fp32 model ready for fast CPU generation (in place); return the decoder used.

    ``decoder``: ``"cpp"`` (:func:`use_decoding_kernel`), ``"blas"``
    (:func:`relayout_for_decoding`), or ``"auto"``/None to pick by measurement
    (:func:`choose_fp32_decoder`). For a model that only generates.
    """
    if decoder not in (None, "auto", *FP32_DECODERS):
        raise ValueError(f"unknown fp32 decoder {decoder!r}; choose one of {', '.join(FP32_DECODERS)}")
    model.eval()
    shapes = [(m.out_features, m.in_features) for m in model.modules() if type(m) is nn.Linear]
    if not shapes:
        return "blas"
    if decoder in (None, "auto"):
        decoder = choose_fp32_decoder(shapes).kernel
    if decoder == "cpp":
        use_decoding_kernel(model)
    else:
        relayout_for_decoding(model)
    return decoder


def relayout_for_decoding(model: nn.Module) -> nn.Module:
    """Store every ``nn.Linear`` weight column-major (in place; inference only); return the model.

    ``nn.Linear`` keeps its weight as ``[out, in]`` and computes ``x @ W.T``. When ``x`` is a single
    row (one token per decoding step) the product is a matrix-vector product whose speed is the
    speed of reading W, and the CPU BLAS we measured reads ``W.T`` ~1.4x faster when ``W.T`` itself
    is contiguous (the layout Hugging Face's GPT-2 ``Conv1D`` happens to use). Here each weight
    keeps its logical ``[out, in]`` shape — names, shapes and results are unchanged — but its
    storage becomes the transpose. Tied weights (``out_head`` = ``tok_emb``) are relaid once.

    Costs: a copy of each weight while converting, slower training matmuls with this layout, and
    safetensors refuses non-contiguous tensors — use it for a model that only generates.
    """
    done: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and id(module.weight) not in done:
                done.add(id(module.weight))
                module.weight.data = module.weight.data.t().contiguous().t()
    return model
