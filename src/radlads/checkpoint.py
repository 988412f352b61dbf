"""Atomic, resumable checkpoints: safetensors for tensors, JSON for everything else.

A checkpoint is a folder `step-000123/` holding model.safetensors (trainable state only is not
enough for an exact resume, so the whole model), optimizer.safetensors, and state.json
(optimizer hyperparameters, step, data-stream position, RNG states). It is written under a
temporary name, fsynced, renamed into place, and only then does `latest` point at it; a kill at
any moment leaves the previous checkpoint intact and `latest` valid.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from radlads.errors import RadladsError


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


def model_tensors(model) -> dict[str, torch.Tensor]:
    """State dict with tied duplicates dropped (safetensors refuses shared storage)."""
    seen, out = set(), {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape, t.dtype)
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous().cpu()
    return out


def optimizer_tensors(optimizer, names: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """AdamW state keyed by parameter name, plus its JSON-able hyperparameters."""
    tensors, scalars = {}, {}
    for param, state in optimizer.state.items():
        name = names[param]
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{name}::{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{name}::{key}"] = value
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return tensors, {"groups": groups, "scalars": scalars}


def rng_state() -> dict:
    return {"torch": torch.get_rng_state().tolist(), "python": _py_rng_to_json(random.getstate())}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    random.setstate(_py_rng_from_json(state["python"]))


def _py_rng_to_json(s):
    return [s[0], list(s[1]), s[2]]


def _py_rng_from_json(s):
    return (s[0], tuple(s[1]), s[2])


def save_checkpoint(folder: Path, step: int, model, optimizer, state: dict, keep: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=folder))
    try:
        save_file(model_tensors(model), str(tmp / "model.safetensors"))
        names = {p: n for n, p in model.named_parameters()}
        opt_tensors, opt_meta = optimizer_tensors(optimizer, names)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        full_state = dict(state, step=step, optimizer=opt_meta, rng=rng_state())
        (tmp / "state.json").write_text(json.dumps(full_state))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_json_atomic(folder / "latest.json", {"checkpoint": final.name, "step": step})
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    pointer = folder / "latest.json"
    if not pointer.is_file():
        return None
    try:
        path = folder / json.loads(pointer.read_text())["checkpoint"]
    except (json.JSONDecodeError, KeyError) as e:
        raise RadladsError(f"damaged checkpoint pointer {pointer}: {e}") from None
    if not (path / "state.json").is_file():
        raise RadladsError(f"checkpoint {path} named by {pointer} is missing or incomplete")
    return path


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore model and optimizer in place; returns the JSON state (step, data, ...)."""
    tensors = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {n for n in missing if n.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise RadladsError(f"checkpoint {path} does not match the model (missing {missing}, unexpected {unexpected})")
    state = json.loads((path / "state.json").read_text())
    opt = load_file(str(path / "optimizer.safetensors"))
    params = dict(model.named_parameters())
    scalars = state["optimizer"]["scalars"]
    per_param: dict[str, dict] = {}
    for key, value in list(opt.items()) + list(scalars.items()):
        name, field = key.split("::")
        per_param.setdefault(name, {})[field] = value
    optimizer.state.clear()
    for name, values in per_param.items():
        optimizer.state[params[name]] = {
            k: (v.to(params[name].device) if torch.is_tensor(v) and k != "step" else v) for k, v in values.items()
        }
    for group, saved in zip(optimizer.param_groups, state["optimizer"]["groups"]):
        group.update(saved)
    set_rng_state(state["rng"])
    return state
