"""Atomic, resumable checkpoints: safetensors for tensors, JSON for everything else.

A checkpoint is a folder `step-0000123/` holding model.safetensors (the whole student: an exact
resume needs the frozen part too once stage 2 trains it), optimizer.safetensors (AdamW moments
keyed by parameter name), and state.json (optimizer hyperparameters, step, tokens, data-stream
position, RNG states). It is written under a temporary name, fsynced, renamed into place, and
only then does `latest.json` point at it: a kill at any moment leaves the previous checkpoint
intact and `latest.json` valid.

State dicts go through torch.distributed.checkpoint.state_dict, so the same code gathers a
plain, DDP-replicated or FSDP2-sharded student (on every rank: gathering is collective) and only
rank 0 writes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from radlads import distributed as dist
from radlads.errors import RadladsError
from radlads.rng import rng_state, set_rng_state

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, obj) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _dedup(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop tied duplicates (safetensors refuses shared storage); loading re-ties them."""
    seen, out = set(), {}
    for name, t in tensors.items():
        key = (t.data_ptr(), t.shape, t.dtype)
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous()
    return out


def save_checkpoint(folder: Path, step: int, model, optimizer, state: dict, keep: int = 2) -> Path:
    """Write checkpoint `step` into `folder`. Call on every rank; rank 0 writes."""
    model_sd = get_model_state_dict(model, options=_GATHER)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=_GATHER)
    final = folder / f"step-{step:07d}"
    if dist.rank() == 0:
        _write(folder, final, step, model_sd, optim_sd, state, keep)
    dist.barrier()
    return final


def _write(folder: Path, final: Path, step: int, model_sd, optim_sd, state: dict, keep: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=folder))
    try:
        save_file(_dedup(model_sd), str(tmp / "model.safetensors"))
        opt_tensors, opt_scalars = {}, {}
        for name, values in optim_sd["state"].items():
            for key, value in values.items():
                if torch.is_tensor(value):
                    opt_tensors[f"{name}::{key}"] = value.detach().contiguous()
                else:
                    opt_scalars[f"{name}::{key}"] = value
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        full_state = dict(state, step=step, rng=rng_state(),
                          optimizer={"param_groups": optim_sd["param_groups"], "scalars": opt_scalars})
        (tmp / "state.json").write_text(json.dumps(full_state))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if final.exists():  # the same step written again (e.g. a resumed run stopping where it began)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_json_atomic(folder / "latest.json", {"checkpoint": final.name, "step": step})
    _fsync_dir(folder)
    for old in sorted(folder.glob("step-*"))[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(folder: Path) -> Path | None:
    pointer = folder / "latest.json"
    if not pointer.is_file():
        return None
    try:
        path = folder / json.loads(pointer.read_text())["checkpoint"]
    except (json.JSONDecodeError, KeyError) as e:
        raise RadladsError(f"damaged checkpoint pointer {pointer}: {e}") from None
    if not all((path / f).is_file() for f in ("state.json", "model.safetensors", "optimizer.safetensors")):
        raise RadladsError(f"checkpoint {path} named by {pointer} is missing or incomplete")
    return path


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore model, optimizer and RNG in place (collective); returns the JSON state (step, data...).

    In a distributed run rank 0 reads the tensors and broadcasts them, so the checkpoint needs to
    be readable on rank 0 only; state.json is small and read everywhere.
    """
    state = json.loads((path / "state.json").read_text())
    reads = dist.rank() == 0
    model_sd = load_file(str(path / "model.safetensors")) if reads else {}
    optim_sd: dict = {"state": {}, "param_groups": state["optimizer"]["param_groups"]}
    if reads:
        per_param = optim_sd["state"]
        for key, value in list(load_file(str(path / "optimizer.safetensors")).items()) + list(
            state["optimizer"]["scalars"].items()
        ):
            name, field = key.split("::")
            per_param.setdefault(name, {})[field] = value
        _check_names(path, model, model_sd)
    options = StateDictOptions(full_state_dict=True, strict=False, broadcast_from_rank0=dist.is_distributed())
    set_model_state_dict(model, model_sd, options=options)
    set_optimizer_state_dict(model, optimizer, optim_sd, options=options)
    set_rng_state(state["rng"])
    return state


def _check_names(path: Path, model, saved: dict) -> None:
    expected = set(model.state_dict())
    missing = {n for n in expected - set(saved) if not n.endswith("lm_head.weight")}  # tied: re-tied on load
    unexpected = set(saved) - expected - {n for n in saved if n.endswith("lm_head.weight")}
    if missing or unexpected:
        raise RadladsError(f"checkpoint {path} does not match the model "
                           f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
