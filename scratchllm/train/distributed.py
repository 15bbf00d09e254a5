"""Several processes, one model: the small amount of set-up DistributedDataParallel needs.

``torchrun --nproc_per_node K scratchllm train ...`` starts K copies of the same command and tells
each one who it is through environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``). Every process builds the same model from the same seed, reads
*its own* windows of the data, and computes gradients on them; DDP then averages the gradients
across processes during ``backward()`` so every copy takes the identical optimizer step. The
effective batch is ``world_size * grad_accum_steps * batch_size`` sequences.

Only rank 0 writes files (checkpoints, metrics, plots) and shows a progress bar. Collective
helpers here (:meth:`DistEnv.all_reduce_sum`, :meth:`DistEnv.gather_json`) are no-ops in a single
process, so the training loop reads the same either way.

**FSDP** (``--strategy fsdp``, :func:`prepare_model`): DDP's copies of everything stop fitting
once the weights, gradients and AdamW's two moments (16 bytes per parameter in fp32) outgrow one
device. PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``) splits every parameter by rows:
rank r keeps rows ``[r * ceil(N / K), ...)`` of each tensor (a ``DTensor`` with placement
``Shard(0)``), with its gradient and optimizer moments. Each transformer block is one FSDP unit:
just before the block computes, its full weights are gathered from all ranks (all-gather), and
freed again afterwards (``fsdp_reshard_after_forward``); after its backward pass the gradients
are summed and split again (reduce-scatter), so each rank only ever holds its own slice of the
gradients. The embeddings, final norm and head form the root unit. On CUDA the gathered weights
and the computation are bf16 while the master weights, the optimizer and the gradient reduction
stay fp32 (``MixedPrecisionPolicy``). Gradient accumulation under FSDP reduce-scatters every
micro-batch (:class:`ShardedModel` ``no_sync`` does nothing): the sharded gradients accumulate,
so memory stays at 1/K instead of holding full unsharded gradients between micro-batches.

**Activation checkpointing** (:func:`enable_activation_checkpointing`) wraps the same blocks in
``torch.utils.checkpoint``: a block keeps only its input, and recomputes the rest during the
backward pass (with the same random numbers for dropout), for any architecture built from the
shared blocks (GPT, BERT, the encoder-decoder) and with or without sharding.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from scratchllm.device import resolve_device
from scratchllm.errors import ScratchLLMError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


@dataclass
class DistEnv:
    """Who this process is. ``world_size == 1`` means a plain single-process run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    #: processes on this machine (torchrun's ``LOCAL_WORLD_SIZE``): they share its CPU memory.
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks, in place (and return it)."""
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def all_agree(self, ok: bool) -> bool:
        """True only if ``ok`` is true on every rank (used after rank 0 saves, so a failed save
        stops every process instead of leaving the others waiting forever)."""
        if not self.enabled:
            return ok
        import torch

        flag = torch.tensor([0.0 if ok else 1.0], device=self.device)
        self.all_reduce_sum(flag)
        return flag.item() == 0.0

    def agreed(self, fn: Callable[[], T], *, main_only: bool = False) -> T | None:
        """Run ``fn`` (on every rank, or on rank 0 only) and make every rank agree on the outcome:
        if it raised anywhere, it raises everywhere — the failing rank re-raises its own error, the
        others a :class:`ScratchLLMError` with its message (and exit code) — so no process is left
        waiting in a collective for one that gave up. Returns ``fn``'s result (None where it did not
        run)."""
        result, error = None, None
        if not main_only or self.is_main:
            try:
                result = fn()
            except Exception as err:  # re-raised below, once every rank knows
                error = err
        if not self.enabled:
            if error is not None:
                raise error
            return result
        report = None if error is None else {"message": str(error), "code": getattr(error, "exit_code", 2)}
        reports = self.gather_json(report)
        failed = [(r, rep) for r, rep in enumerate(reports) if rep is not None]
        if error is not None:
            raise error
        if failed:
            rank, rep = failed[0]
            prefix = "" if main_only else f"process {rank}: "
            raise ScratchLLMError(prefix + rep["message"], exit_code=int(rep["code"]))
        return result

    def from_main(self, obj: Any) -> Any:
        """Rank 0's JSON-able ``obj`` on every rank (a path it chose, a decision it made)."""
        return self.gather_json(obj if self.is_main else None)[0] if self.enabled else obj

    def gather_json(self, obj: Any) -> list[Any]:
        """Every rank's JSON-able ``obj``, in rank order, on every rank.

        The per-rank random states and data cursors travel this way so that rank 0 can store them
        all. They go through JSON (not ``all_gather_object``, which pickles) as padded byte tensors.
        """
        if not self.enabled:
            return [obj]
        import torch
        import torch.distributed as dist

        data = json.dumps(obj).encode("utf-8")
        length = torch.tensor([len(data)], dtype=torch.long, device=self.device)
        lengths = [torch.zeros_like(length) for _ in range(self.world_size)]
        dist.all_gather(lengths, length)
        size = int(max(int(n.item()) for n in lengths))
        buf = torch.zeros(size, dtype=torch.uint8, device=self.device)
        buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device)
        bufs = [torch.zeros_like(buf) for _ in range(self.world_size)]
        dist.all_gather(bufs, buf)
        return [
            json.loads(bytes(b[: int(n.item())].cpu().tolist()).decode("utf-8"))
            for b, n in zip(bufs, lengths)
        ]


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1), else a single process.

    The backend follows the device: NCCL between GPUs, Gloo between CPU processes.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv(device=resolve_device(device))
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = resolve_device(device, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if dev.startswith("cuda") else "gloo"
        if dev.startswith("cuda"):
            import torch

            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return DistEnv(
        rank=rank, local_rank=local_rank, world_size=world_size, device=dev, local_world_size=local_world
    )


def shutdown_distributed(env: DistEnv) -> None:
    if env.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


# ============================================================================ blocks, checkpointing, FSDP
def transformer_blocks(model: Any) -> list[Any]:
    """Every transformer block of ``model``, in order: the GPT's and BERT's ``blocks``, the
    encoder-decoder's ``encoder`` and ``decoder`` blocks — and those inside any model built around
    them (LoRA, classifiers). They are the units of activation checkpointing and of FSDP."""
    from scratchllm.model.gpt import TransformerBlock
    from scratchllm.model.seq2seq import DecoderBlock

    return [m for m in model.modules() if isinstance(m, (TransformerBlock, DecoderBlock))]


def enable_activation_checkpointing(model: Any) -> int:
    """Make every transformer block recompute its activations in the backward pass; returns how
    many blocks were wrapped.

    Without it, autograd keeps every intermediate tensor of every block (the attention inputs,
    q/k/v, the FFN's hidden layer...) until the backward pass needs it. With it, a block keeps only
    its input: ``torch.utils.checkpoint`` (non-reentrant) runs the forward pass normally, drops
    what it would have saved, and runs the block again when the backward pass reaches it —
    restoring the random state first, so dropout draws the same masks and the loss and gradients
    are the ones without checkpointing. Only while training with gradients on: evaluation and
    generation (KV cache) call the block directly. The parameter names do not change (the block's
    own ``forward`` is wrapped, no module is inserted), so checkpoints are unaffected.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    wrapped = 0
    for block in transformer_blocks(model):
        if "forward" in vars(block):  # already wrapped
            continue
        inner = block.forward

        def forward(*args: Any, _inner: Any = inner, _block: Any = block, **kwargs: Any) -> Any:
            if _block.training and torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        block.forward = forward
        wrapped += 1
    return wrapped


def bf16_compute(device_type: str, dtype: str) -> bool:
    """Whether training computes in bfloat16 (``dtype`` auto or bfloat16 on a CUDA device that has it)."""
    if device_type != "cuda" or dtype not in ("auto", "bfloat16"):
        return False
    import torch

    return bool(torch.cuda.is_bf16_supported())


def shard_model(model: Any, env: DistEnv, cfg: Any) -> None:
    """FSDP2 in place: ``fully_shard`` every transformer block, then the whole model (the root unit:
    embeddings, final norm, head — and anything else outside the blocks).

    Each call splits that unit's parameters into 1/K row slices on a 1-D device mesh over all K
    ranks and moves them to this rank's device (block by block, so the full model never has to
    fit on the device). On CUDA with bf16 compute, a mixed-precision policy gathers bf16 weights
    and reduces gradients in fp32 (the master weights and AdamW state stay fp32).
    """
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device_type = env.device.split(":")[0]
    mesh = init_device_mesh(device_type, (env.world_size,))
    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": bool(cfg.fsdp_reshard_after_forward)}
    if bf16_compute(device_type, cfg.dtype):
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in transformer_blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)


def prepare_model(model: Any, cfg: Any, env: DistEnv) -> bool:
    """Put ``model`` where it trains: activation checkpointing when asked, then FSDP sharding
    (``strategy fsdp`` with several processes) or simply the device. Returns True when sharded.
    Build the optimizer *after* this: FSDP replaces the parameters by their sharded versions."""
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    if env.enabled and cfg.strategy == "fsdp":
        shard_model(model, env, cfg)
        return True
    model.to(env.device)
    return False


class ShardedModel:
    """What the loop calls under FSDP: the sharded model, plus the ``no_sync()`` that DDP has.

    ``no_sync`` does nothing: FSDP reduce-scatters the gradients after every micro-batch, so each
    rank accumulates only its own slice of them (1/K of the memory) instead of keeping full
    gradients between micro-batches. ``module`` is the model (:func:`scratchllm.device.unwrap`).
    """

    def __init__(self, module: Any) -> None:
        self.module = module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)

    def no_sync(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def is_dtensor(t: Any) -> bool:
    """A ``DTensor`` (a slice of a tensor spread over ranks) rather than an ordinary tensor."""
    return hasattr(t, "to_local") and hasattr(t, "placements")


def is_sharded(model: Any) -> bool:
    """True when any parameter of ``model`` is sharded across processes (FSDP)."""
    return any(is_dtensor(p) for p in model.parameters())


def local_tensor(t: Any) -> Any:
    """This rank's part of a DTensor; an ordinary tensor as it is."""
    return t.to_local() if is_dtensor(t) else t


def reshard(model: Any) -> None:
    """Free every gathered (unsharded) FSDP weight, so the parameters are the sharded ones again
    (before a checkpoint reads them, after an evaluation kept them gathered)."""
    for m in model.modules():
        fn = getattr(m, "reshard", None)
        if callable(fn) and hasattr(m, "unshard"):
            fn()


@contextlib.contextmanager
def gathered(model: Any, reshard_after_forward: bool) -> Any:
    """Every FSDP unit of ``model`` gathered (whole weights on every rank) for the duration: for
    evaluation and samples, which call more than ``forward`` (the encoder-decoder's ``encode``,
    ``start_decoding`` and KV-cached ``decode_step``...), where FSDP's hooks would not gather.

    Costs one copy of the full weights per rank while it lasts (in the compute dtype), and no
    collective inside: every rank may run its own decoding loop. Afterwards the blocks reshard
    after each forward pass again (``reshard_after_forward``) and every weight is sharded.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in units:  # the root too: shard_model gave every unit the same setting
        m.set_reshard_after_forward(False, recurse=False)
    for m in units:
        m.unshard()
    try:
        yield model
    finally:
        for m in units:
            m.set_reshard_after_forward(reshard_after_forward, recurse=False)
        reshard(model)


def shard_rows(t: Any) -> tuple[int, int] | None:
    """``(first_row, rows)`` of this rank's slice of a DTensor sharded by rows on a 1-D mesh; None
    for an ordinary (whole, replicated) tensor.

    FSDP2 cuts dim 0 like ``torch.chunk``: ``ceil(N / K)`` rows per rank, the last ranks getting
    fewer (possibly none). The slice this rank actually holds is checked against that rule.
    """
    if not is_dtensor(t):
        return None
    placements = tuple(t.placements)
    if len(placements) != 1 or getattr(placements[0], "dim", None) != 0 or not placements[0].is_shard():
        raise ScratchLLMError(
            f"cannot checkpoint a tensor sharded as {placements}: only FSDP's row sharding on one "
            "mesh dimension (Shard(0)) is supported"
        )
    mesh = t.device_mesh
    k, r = mesh.size(), mesh.get_local_rank()
    n = t.shape[0]
    per = -(-n // k)
    start = min(r * per, n)
    rows = max(0, min(n, start + per) - start)
    local = t.to_local()
    if local.shape[0] != rows:
        raise ScratchLLMError(
            f"unexpected FSDP shard: rank {r} of {k} holds {local.shape[0]} rows of a {n}-row tensor, "
            f"expected {rows}"
        )
    return start, rows


def like_shard(local: Any, ref: Any) -> Any:
    """A DTensor with ``ref``'s mesh and placement around ``local`` (this rank's rows), on ``ref``'s
    device: how a resumed checkpoint's slice becomes a parameter or optimizer state again."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        local.to(device=ref.to_local().device, dtype=ref.dtype),
        device_mesh=ref.device_mesh,
        placements=ref.placements,
        run_check=False,
        shape=ref.shape,
        stride=ref.stride(),
    )
