"""Plain torch.distributed under torchrun: gloo on CPU, nccl on CUDA; DDP or FSDP2.

Without torchrun's environment everything here is a no-op, so single-process runs take the
same code path. Data is never sharded by a sampler: every rank reads the same global batch and
takes `batch[rank::world]`, which keeps results independent of the world size.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager

import torch
import torch.distributed as td


def init() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not td.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        td.init_process_group("nccl" if cuda else "gloo")


def is_distributed() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if is_distributed() else 0


def world_size() -> int:
    return td.get_world_size() if is_distributed() else 1


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        td.barrier()


def mean(value: float) -> float:
    """Average a Python float over ranks (losses for logging and the NaN check: all ranks agree)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device() if td.get_backend() == "nccl" else "cpu")
    td.all_reduce(t)
    return float(t) / world_size()


def wrap(objective: torch.nn.Module, fsdp: bool = False) -> torch.nn.Module:
    """DDP (replicated student) or FSDP2 (sharded student) around a stage objective.

    FSDP2 shards what grows with training: the student's weights, gradients and AdamW moments
    (16 bytes a parameter in fp32). The frozen teacher costs only its weights and stays
    replicated. Each student time-mix and MLP is its own unit rather than each whole layer,
    because stage 1 calls the time-mix modules directly, never a layer's forward; the objective
    is the root unit, so the student's embeddings, norms and head are gathered once per forward.
    """
    if not is_distributed():
        return objective
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        # Time-mix modules return views; radlads never modifies them in place, which is what
        # this FSDP2 warning is about.
        warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
        for layer in objective.student.model.layers:
            fully_shard(layer.time_mix)
            fully_shard(layer.mlp)
        fully_shard(objective, ignored_params=set(objective.teacher.parameters()))
        return objective
    from torch.nn.parallel import DistributedDataParallel as DDP

    # Frozen parameters (the teacher; the non-time-mix student in stage 1) are not reduced.
    return DDP(objective, find_unused_parameters=False)


@contextmanager
def no_sync(wrapped):
    """Skip the gradient reduction on all but the last micro-batch of a step."""
    if hasattr(wrapped, "no_sync"):  # DDP
        with wrapped.no_sync():
            yield
    elif hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True)
    else:
        yield


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def unsharded(model):
    """The model with full weights, for export: itself, or for an FSDP2-sharded model a gathered
    copy on rank 0 (None on the other ranks, which must still call this: gathering is collective)."""
    if not is_sharded(model):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank() != 0:
        return None
    plain = type(model)(model.config)
    plain.load_state_dict(state, strict=False)
    plain.tie_weights()
    return plain.eval()


def full_value(t: torch.Tensor) -> float:
    """A scalar that may be a DTensor (FSDP2 grad norms) as a Python float."""
    return float(t.full_tensor() if hasattr(t, "full_tensor") else t)


def cleanup() -> None:
    if is_distributed():
        td.destroy_process_group()
