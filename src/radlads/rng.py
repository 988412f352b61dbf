"""Random-number-generator states as plain JSON, for checkpoints and the data stream's position."""

from __future__ import annotations

import random

import torch


def python_rng_to_json(state) -> list:
    """A `random.Random().getstate()` tuple as JSON (its inner tuple becomes a list)."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def python_rng_from_json(state) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def rng_state() -> dict:
    """The global torch, Python and (when present) CUDA generator states."""
    state = {"torch": torch.get_rng_state().tolist(), "python": python_rng_to_json(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    random.setstate(python_rng_from_json(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
