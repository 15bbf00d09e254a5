"""Where computation runs and who is running it: the one home for device and rank helpers.

* :func:`resolve_device` turns ``--device auto|cpu|cuda|cuda:N|mps`` into a concrete device name,
  with a one-line error when the device is not there;
* :func:`rank`, :func:`world_size`, :func:`is_main_process` read the process's place in a
  ``torchrun`` launch from the environment (``RANK``, ``WORLD_SIZE``), so code that only needs to
  know "am I rank 0?" (printing, writing result files) does not need the process group;
* :func:`peak_rss_mb` reports the process's peak memory; :func:`keep_freed_memory` stops the C
  allocator from handing a training step's freed activations back to the kernel;
* :func:`unwrap` and :func:`model_device` see through the wrappers training puts around a model
  (DistributedDataParallel, ``torch.compile``).

Nothing here imports torch at module import time.
"""

from __future__ import annotations

import os
import resource
import sys
from typing import TYPE_CHECKING, Any

from scratchllm.errors import ScratchLLMError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"


def resolve_device(name: str | None = "auto", local_rank: int = 0) -> str:
    """``"auto"`` picks cuda, then mps, then cpu; ``"cuda"`` becomes ``cuda:<local_rank>`` (under
    torchrun every process gets its own GPU). Unknown or unavailable devices are one-line errors."""
    import torch

    name = (name or "auto").strip().lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = mps is not None and mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ScratchLLMError(
                f"device {name!r} was requested but no CUDA GPU is available; use --device cpu"
            )
        if name == "cuda":
            return f"cuda:{local_rank}"
        index = name.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise ScratchLLMError(
                f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return name
    if name == "mps":
        if not mps_ok:
            raise ScratchLLMError("device 'mps' was requested but MPS is not available; use --device cpu")
        return name
    if name != "cpu":
        raise ScratchLLMError(f"unknown device {name!r}; use {DEVICE_CHOICES}")
    return name


def rank() -> int:
    """This process's global rank under torchrun (0 in a plain single-process run)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes torchrun started (1 in a plain run)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 (or a single process): the one that prints, writes files and scores test sets."""
    return rank() == 0


def unwrap(model: Any) -> Any:
    """The plain model inside DistributedDataParallel (``.module``) / torch.compile (``._orig_mod``).

    Their ``state_dict`` keys carry a ``module.`` / ``_orig_mod.`` prefix and their attributes
    hide the model's own methods; files always hold the plain names, and tasks call the plain
    model's methods (``aux_loss``, ``loss``) through this.
    """
    while True:
        inner = getattr(model, "module", None)
        if inner is None:
            inner = getattr(model, "_orig_mod", None)
        if inner is None or inner is model:
            return model
        model = inner


def model_device(model: Any) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
    import torch

    for p in unwrap(model).parameters():
        return p.device
    return torch.device("cpu")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return round(kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024, 1)


#: glibc's ``mallopt`` parameters (malloc.h) and the values :func:`keep_freed_memory` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 64 << 20
_TRIM_THRESHOLD_BYTES = 1 << 30
#: The environment variables through which a user tunes glibc's allocator themselves.
_MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")
_allocator_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse instead of returning it to the kernel
    (CPU training calls this once); True when the setting is in effect.

    Every training step allocates its activations and gradients (megabytes each) and frees them
    again. By default glibc serves blocks above a threshold with a fresh ``mmap`` and gives the top
    of its heap back to the kernel once more than 128 KiB of it is free — so the next step asks
    for the same memory again, and the kernel must fault in and zero every page of it. At
    nanoGPT's CPU config that was ~1,300–1,900 page faults and ~7–8 ms of kernel time in a
    ~70 ms step; with blocks up to 64 MiB taken from the heap and the heap trimmed only above
    1 GiB free it is a handful of faults, and the step ~13 % faster (``benchmarks/
    bench_speedrun.py``). The price is that the process keeps its peak memory mapped while it
    lives, which a training process reaches every step anyway.

    Only glibc has ``mallopt`` (Linux; not macOS or musl): elsewhere this does nothing and returns
    False. ``SCRATCHLLM_KEEP_FREED_MEMORY=0``, or the user's own allocator tuning
    (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES``, an ``LD_PRELOAD``
    allocator), leaves the allocator alone.
    """
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if os.environ.get("SCRATCHLLM_KEEP_FREED_MEMORY", "1") == "0" or any(
        os.environ.get(k) for k in _MALLOC_ENV
    ):
        return False
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1 and ok
    _allocator_tuned = ok
    return ok


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op CPU threads in torch; None or 0 leaves torch's setting (one per
    core unless the program changed it). Returns the number now in use.

    Together with ``OMP_WAIT_POLICY=PASSIVE`` (set by the CLI before torch loads) this keeps a
    shared or busy machine from collapsing: spinning OpenMP threads that wait for a core another
    process holds can make a step many times slower than one thread.
    """
    if threads is not None and threads < 0:
        raise ScratchLLMError(f"--threads must be >= 0 (got {threads}); 0 means torch's default")
    import torch

    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def available_memory_bytes(device: str = "cpu") -> int | None:
    """Memory a new allocation can still get: free GPU memory on CUDA; on the CPU the kernel's
    ``MemAvailable``, capped by a cgroup (container) limit. None when unknown."""
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    if str(device) != "cpu":
        return None
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        return None
    try:  # cgroup v2: what is left under this container's limit
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            used = int(f.read())
        if limit != "max":
            avail = min(avail or 1 << 62, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail
