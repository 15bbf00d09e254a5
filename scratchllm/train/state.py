"""Training state that is not weights: random number generators and the environment.

Exact resume means the resumed run draws *the same random numbers* the uninterrupted run would
have drawn: for the data order, dropout masks, sampling at eval time. Python, numpy and torch
each keep their own global generator, CUDA keeps one per device, and the loop may create named
``torch.Generator`` objects of its own. :func:`capture_rng_state` snapshots all of them as plain
JSON (torch states are byte tensors, stored as base64 text) and :func:`restore_rng_state` puts them
back. Nothing here is pickled.

Floating-point results also depend on the environment: the torch version, the device, the number
of CPU threads (a matmul split across 2 or 4 threads adds numbers in a different order) and the
number of training processes. :func:`env_fingerprint` records them in every checkpoint and
:func:`fingerprint_differences` says, on resume, what changed and therefore why bit-exact
continuation is no longer possible.

:func:`to_jsonable` / :func:`from_jsonable` let the trainer state carry tensors and numpy arrays
in JSON (as ``{"__tensor__": ...}`` objects) so the loop does not need to convert them itself.
"""

from __future__ import annotations

import base64
import platform
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from scratchllm.device import wait_policy
from scratchllm.errors import ScratchLLMError

RNG_FORMAT_VERSION = 1


# --------------------------------------------------------------------------- bytes <-> text
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.detach().cpu().contiguous().numpy().tobytes()).decode("ascii")


def _unb64_bytes(s: Any, what: str) -> torch.Tensor:
    """Base64 text back to a uint8 tensor (torch's RNG state type)."""
    if not isinstance(s, str):
        raise ScratchLLMError(f"RNG state {what} is malformed (expected base64 text)")
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ScratchLLMError(f"RNG state {what} is not valid base64") from None
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()


# --------------------------------------------------------------------------- RNG states
def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Snapshot every random number generator as a JSON-able dict.

    ``generators`` are the loop's own named generators (e.g. ``{"data": g}``); each is saved under
    its name so :func:`restore_rng_state` can put it back into the generator of the same name.
    """
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "version": RNG_FORMAT_VERSION,
        "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss},
        "numpy": {
            "kind": np_kind,
            "keys": np.asarray(np_keys).tolist(),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": _b64(torch.get_rng_state()),
        # Only touch CUDA when it is already initialised: querying it would otherwise create a
        # CUDA context (slow, and wrong for CPU-only runs on a GPU machine).
        "cuda": (
            [_b64(s) for s in torch.cuda.get_rng_state_all()]
            if torch.cuda.is_available() and torch.cuda.is_initialized()
            else []
        ),
        "generators": {name: _b64(g.get_state()) for name, g in (generators or {}).items()},
    }
    return state


def restore_rng_state(
    state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None
) -> None:
    """Put back what :func:`capture_rng_state` saved.

    Every generator the loop registers now must have a saved state and vice versa: a missing one
    would make the resumed run silently differ from the uninterrupted one, so it is an error.
    CUDA states are restored when CUDA is available with the same number of devices (otherwise
    the environment fingerprint already warns that bit-exact resume is impossible).
    """
    try:
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss_next"]))
        npst = state["numpy"]
        np.random.set_state(
            (
                str(npst["kind"]),
                np.asarray(npst["keys"], dtype=np.uint32),
                int(npst["pos"]),
                int(npst["has_gauss"]),
                float(npst["cached_gaussian"]),
            )
        )
        torch.set_rng_state(_unb64_bytes(state["torch"], "torch"))
        cuda_states = state.get("cuda") or []
        if cuda_states and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
            torch.cuda.set_rng_state_all([_unb64_bytes(s, "cuda") for s in cuda_states])
        saved_gens = dict(state.get("generators") or {})
    except ScratchLLMError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ScratchLLMError(
            f"the checkpoint's RNG state is malformed ({type(err).__name__}: {err}); "
            "resume from another checkpoint"
        ) from None
    wanted = dict(generators or {})
    missing = sorted(set(wanted) - set(saved_gens))
    extra = sorted(set(saved_gens) - set(wanted))
    if missing or extra:
        raise ScratchLLMError(
            "the checkpoint's random generators do not match this run "
            f"(saved: {sorted(saved_gens) or 'none'}; this run uses: {sorted(wanted) or 'none'}); "
            "resume with the same configuration the checkpoint was made with"
        )
    for name, g in wanted.items():
        try:
            g.set_state(_unb64_bytes(saved_gens[name], f"of generator {name!r}"))
        except RuntimeError as err:
            raise ScratchLLMError(f"cannot restore RNG state of generator {name!r}: {err}") from None


# --------------------------------------------------------------------------- environment
def env_fingerprint(
    *, device: str | torch.device = "cpu", world_size: int = 1, strategy: str = "single"
) -> dict[str, Any]:
    """What the floating-point results of a run depend on besides its config and seed.

    ``strategy``: how several processes share the work ("ddp" or "fsdp"; "single" for one
    process) — FSDP's reduce-scatter sums gradients in another order than DDP's all-reduce.
    """
    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "device": str(device),
        "num_threads": torch.get_num_threads(),
        "world_size": int(world_size),
        "strategy": strategy,
        # how idle OpenMP threads waited (speed only, not results: not compared on resume)
        "omp_wait_policy": wait_policy(),
    }


def fingerprint_differences(saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """Human-readable differences that rule out bit-exact continuation (empty list: none).

    The loop prints these as warnings on ``--resume``; a world-size change additionally needs an
    explicit flag because the data each rank reads changes (that decision is the loop's).
    """
    if not saved:
        return ["the checkpoint has no environment fingerprint"]
    out = []
    for key in ("torch", "device", "num_threads", "world_size", "strategy", "numpy", "machine"):
        if key == "strategy" and key not in saved:  # recorded since FSDP arrived
            continue
        if key in current and saved.get(key) != current.get(key):
            out.append(f"{key} changed from {saved.get(key)!r} to {current.get(key)!r}")
    return out


# --------------------------------------------------------------------------- tensors in JSON
_TENSOR_KEY = "__tensor__"
_NDARRAY_KEY = "__ndarray__"


def to_jsonable(obj: Any) -> Any:
    """Recursively turn tensors/arrays/tuples into JSON values (tensors as tagged base64 objects)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: store the raw 16-bit pattern
            raw = t.view(torch.int16).numpy().tobytes()
        else:
            raw = t.numpy().tobytes()
        return {_TENSOR_KEY: {"dtype": dtype, "shape": list(t.shape), "data": base64.b64encode(raw).decode()}}
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        return {
            _NDARRAY_KEY: {
                "dtype": a.dtype.str,
                "shape": list(a.shape),
                "data": base64.b64encode(a.tobytes()).decode(),
            }
        }
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"trainer state keys must be strings, got {k!r}")
            out[k] = to_jsonable(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(
        f"cannot store a {type(obj).__name__} in the trainer state (JSON values and tensors only)"
    )


def from_jsonable(obj: Any) -> Any:
    """Inverse of :func:`to_jsonable` (tuples come back as lists)."""
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR_KEY}:
            spec = obj[_TENSOR_KEY]
            try:
                dtype = getattr(torch, spec["dtype"])
                raw = bytearray(base64.b64decode(spec["data"], validate=True))
                if dtype == torch.bfloat16:
                    t = (
                        torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16)
                        if raw
                        else torch.empty(0, dtype=dtype)
                    )
                else:
                    t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
                return t.reshape(spec["shape"]).clone()
            except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
                raise ScratchLLMError(f"a tensor in the trainer state is malformed ({err})") from None
        if set(obj) == {_NDARRAY_KEY}:
            spec = obj[_NDARRAY_KEY]
            try:
                raw = base64.b64decode(spec["data"], validate=True)
                return np.frombuffer(raw, dtype=np.dtype(spec["dtype"])).reshape(spec["shape"]).copy()
            except (KeyError, TypeError, ValueError) as err:
                raise ScratchLLMError(f"an array in the trainer state is malformed ({err})") from None
        return {k: from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_jsonable(v) for v in obj]
    return obj


__all__ = [
    "capture_rng_state",
    "env_fingerprint",
    "fingerprint_differences",
    "from_jsonable",
    "restore_rng_state",
    "to_jsonable",
]
