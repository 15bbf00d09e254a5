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
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scratchllm.device import resolve_device

if TYPE_CHECKING:
    import torch


@dataclass
class DistEnv:
    """Who this process is. ``world_size == 1`` means a plain single-process run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"

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
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def shutdown_distributed(env: DistEnv) -> None:
    if env.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
