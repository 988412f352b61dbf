"""Load any model radlads can evaluate, run or train: a student folder or a teacher spec.

A student folder is a Hugging Face folder whose config.json says `"model_type": "radlads"`. For
evaluating and running it is loaded exactly as a user would load it, through `trust_remote_code`
(the folder's own copy of the modeling code), so those commands exercise the exported code path;
for training it is loaded with radlads' own model class. Anything else is a teacher, loaded by
`radlads.teachers.load_teacher`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from radlads.errors import RadladsError


def is_student_dir(spec: str | Path) -> bool:
    config = Path(spec) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "radlads"
    except (OSError, json.JSONDecodeError):
        return False


def load_student(path: str | Path, dtype: torch.dtype | None = None, exported_code: bool = True):
    """A student folder's model in eval mode.

    exported_code=True loads the folder's copied modeling code (trust_remote_code), as a user of the
    export would; False uses radlads.model, for training. dtype=None keeps the saved dtype.
    """
    folder = Path(path)
    if not is_student_dir(folder):
        raise RadladsError(f"{path} is not a radlads student folder (make one with radlads init)")
    if not any(folder.glob("*.safetensors")):
        raise RadladsError(f"{folder} has a radlads config.json but no *.safetensors weights")
    kwargs = {} if dtype is None else {"dtype": dtype}
    if exported_code:
        from transformers import AutoModelForCausalLM as model_class

        kwargs["trust_remote_code"] = True
    else:
        from radlads.model.modeling_radlads import RadladsForCausalLM as model_class
    try:
        model = model_class.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as e:
        raise RadladsError(f"cannot load student from {folder}: {str(e).splitlines()[0]}") from e
    return model.eval()


def load_model(spec: str, dtype: torch.dtype = torch.float32, quiet: bool = False):
    """(model, tokenizer) for a student folder or any teacher spec, in eval mode.

    quiet=True hides transformers' per-tensor loading bar (it would clutter bench's report).
    """
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if is_student_dir(spec):
        from transformers import AutoTokenizer

        model = load_student(spec, dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=True)
        except (OSError, ValueError) as e:
            raise RadladsError(f"cannot load student from {spec}: {str(e).splitlines()[0]}") from e
        return model, tokenizer
    from radlads.teachers import load_teacher

    return load_teacher(spec, dtype=dtype)


def model_label(spec: str) -> str:
    """A short column name for tables: the folder or file name, or the preset/hub id."""
    p = Path(spec)
    return p.name if p.exists() else spec
