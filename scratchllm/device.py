"""Where computation runs and who is running it: the one home for device and rank helpers.

* :func:`resolve_device` turns ``--device auto|cpu|cuda|cuda:N|mps`` into a concrete device name,
  with a one-line error when the device is not there;
* :func:`rank`, :func:`world_size`, :func:`is_main_process` read the process's place in a
  ``torchrun`` launch from the environment (``RANK``, ``WORLD_SIZE``), so code that only needs to
  know "am I rank 0?" (printing, writing result files) does not need the process group;
* :func:`peak_rss_mb` reports the process's peak memory; :func:`keep_freed_memory` stops the C
  allocator from handing a training step's freed activations back to the kernel;
* :func:`choose_wait_policy` decides, before torch loads, whether idle OpenMP threads spin (the
  cores are ours) or sleep (another process wants them);
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


def _cpu_ticks(cores: set[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks of ``cores`` since boot, from Linux's ``/proc/stat``."""
    busy = total = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cores:
                    continue
                # user nice system idle iowait irq softirq steal (guest time is inside user)
                t = [int(v) for v in fields[:8]]
                busy += t[0] + t[1] + t[2] + t[5] + t[6] + t[7]
                total += sum(t)
    except (OSError, ValueError, IndexError):
        return None
    return (busy, total) if total else None


def busy_cores(window_s: float = 0.1) -> float | None:
    """How many of this process's cores *other* work kept busy during the next ``window_s``
    seconds (this process sleeps meanwhile): 0.0 on an idle machine, ~1.0 with one busy process
    beside us. None where the kernel does not say (no ``/proc/stat``: not Linux)."""
    import time

    try:
        cores = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    first = _cpu_ticks(cores)
    time.sleep(window_s)
    second = _cpu_ticks(cores)
    if first is None or second is None or second[1] <= first[1]:
        return None
    return len(cores) * (second[0] - first[0]) / (second[1] - first[1])


#: Other work on our cores above which OpenMP's threads should sleep rather than spin.
QUIET_BELOW_CORES = 0.25


def cpu_quota_cores() -> float | None:
    """The CPU time this container may use, in cores (cgroup v2 ``cpu.max``: quota / period), or
    None when there is no quota. A container can see many cores and still be allowed two."""
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def choose_wait_policy(spin_if_quiet: bool = True, window_s: float = 0.1) -> str:
    """Decide how torch's idle OpenMP threads wait, before torch loads; returns what was decided.

    Between two parallel regions (every matrix product, every elementwise kernel) a worker thread
    either *spins* — keeps its core and polls for the next task, OpenMP's default, the fastest
    way to start the next region — or *sleeps* (``OMP_WAIT_POLICY=PASSIVE``) and is woken up,
    which costs some microseconds per region. On a machine whose cores are ours, spinning won:
    a training step at nanoGPT's config 5–25 % faster, int8 decoding 70 against 59 tokens/s.
    When another process wants the same cores, spinning collapses: a spinning thread holds the
    core the thread it waits for needs — 2× to 7.5× slower steps, decoding 19 against 54 tokens/s
    (docs/guide/train.md has the table).

    So: the user's own ``OMP_WAIT_POLICY`` always wins ("yours"). Otherwise, with
    ``spin_if_quiet``, this looks at the cores for ``window_s`` seconds (:func:`busy_cores`): if
    other work kept less than :data:`QUIET_BELOW_CORES` of a core busy, OpenMP keeps its default
    ("spin": the machine was quiet); if more, or if it cannot tell, or if several processes of one
    ``torchrun`` launch share this machine (``LOCAL_WORLD_SIZE`` > 1), or if a container's CPU
    quota is below the cores it sees (:func:`cpu_quota_cores`: one spinning thread per visible
    core would burn the quota), it sets ``PASSIVE``. The decision is made once, at start: a
    machine that gets busy later still has spinning threads — set ``OMP_WAIT_POLICY=PASSIVE`` for
    a machine you share. Once torch is imported its OpenMP runtime has read the setting already,
    so this changes nothing then ("loaded").
    """
    if os.environ.get("OMP_WAIT_POLICY"):
        return "yours"
    if "torch" in sys.modules:
        return "loaded"
    if spin_if_quiet and not _cores_shared_by_design():
        busy = busy_cores(window_s)
        if busy is not None and busy < QUIET_BELOW_CORES:
            return "spin"
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "passive"


def _cores_shared_by_design() -> bool:
    """Several processes of one torchrun launch on this machine, or a container's CPU quota below
    the cores it sees: spinning threads would compete with each other, whatever the load now."""
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1) > 1:
        return True
    quota = cpu_quota_cores()
    return quota is not None and quota < available_cores()


def wait_policy() -> str:
    """How this process's OpenMP threads wait: "passive", "active", or "default" (spinning
    briefly: OpenMP's own default) — for run records and ``--json`` reports."""
    return (os.environ.get("OMP_WAIT_POLICY") or "default").lower()


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op CPU threads in torch; None or 0 leaves torch's setting (one per
    core unless the program changed it). Returns the number now in use.

    The OpenMP wait policy the CLI chose before torch loaded (:func:`choose_wait_policy`) keeps a
    busy machine from collapsing: spinning OpenMP threads that wait for a core another process
    holds can make a step many times slower than one thread.
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
