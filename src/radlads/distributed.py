"""Plain torch.distributed under torchrun: gloo on CPU, nccl on CUDA; DDP or FSDP2.

Without torchrun's environment everything here is a no-op, so single-process runs take the
same code path. Data is never sharded by a sampler: every rank reads the same global batch and
takes `batch[rank::world]`, which keeps results independent of the world size.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch
import torch.distributed as td


def init() -> None:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not td.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        td.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def is_distributed() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if is_distributed() else 0


def world_size() -> int:
    return td.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        td.barrier()


def mean(value: float) -> float:
    """Average a Python float over ranks (losses for logging and NaN checks)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    td.all_reduce(t)
    return float(t) / world_size()


def wrap(objective: torch.nn.Module, fsdp: bool = False) -> torch.nn.Module:
    """DDP (replicated student) or FSDP2 (sharded student layers) around a stage objective."""
    if not is_distributed():
        return objective
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in objective.student.model.layers:
            fully_shard(layer)
        fully_shard(objective.student)
        return objective
    from torch.nn.parallel import DistributedDataParallel as DDP

    # Frozen parameters (the teacher; the non-time-mix student in stage 1) are not reduced.
    return DDP(objective, find_unused_parameters=False)


def no_sync(wrapped):
    """Skip the gradient all-reduce on all but the last micro-batch (DDP only)."""
    return wrapped.no_sync() if hasattr(wrapped, "no_sync") else nullcontext()


def cleanup() -> None:
    if is_distributed():
        td.destroy_process_group()
