"""Load any model radlads can evaluate or run: a converted student folder or a teacher spec.

A student folder is a Hugging Face folder whose config.json says `"model_type": "radlads"`; it is
loaded exactly as a user would load it, through `trust_remote_code`, so evaluation exercises the
exported code path. Anything else is handed to `radlads.teachers.load_teacher`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from radlads.errors import RadladsError


def is_student_dir(spec: str) -> bool:
    config = Path(spec) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "radlads"
    except (OSError, json.JSONDecodeError):
        return False


def load_student(path: str, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if not any(folder.glob("*.safetensors")):
        raise RadladsError(f"{folder} has a radlads config.json but no *.safetensors weights")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    except (OSError, ValueError) as e:
        raise RadladsError(f"cannot load student from {folder}: {str(e).splitlines()[0]}") from e
    model.eval()
    return model, tokenizer


def load_model(spec: str, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for a student folder or any teacher spec, in eval mode."""
    if is_student_dir(spec):
        return load_student(spec, dtype)
    from radlads.teachers import load_teacher

    model, tokenizer = load_teacher(spec, dtype=dtype)
    model.eval()
    return model, tokenizer


def model_label(spec: str) -> str:
    """A short column name for tables: the folder or file name, or the preset/hub id."""
    p = Path(spec)
    return p.name if p.exists() else spec
