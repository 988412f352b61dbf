"""Write a student as a self-contained Hugging Face folder.

The folder holds safetensors weights, a config whose `auto_map` points at the modeling code, the
tokenizer, and a copy of src/radlads/model/*.py, so that
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` works where radlads is
not installed. The folder is written beside its destination and renamed into place, so a kill
mid-save never leaves a half-written model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

MODEL_CODE_DIR = Path(__file__).parent / "model"
AUTO_MAP = {
    "AutoConfig": "configuration_radlads.RadladsConfig",
    "AutoModelForCausalLM": "modeling_radlads.RadladsForCausalLM",
}


def model_code_files() -> list[Path]:
    return sorted(p for p in MODEL_CODE_DIR.glob("*.py") if p.name != "__init__.py")


def save_model(model, tokenizer, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model folder is meant to be shared
    try:
        model.config.auto_map = dict(AUTO_MAP)
        model.config.architectures = ["RadladsForCausalLM"]
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for src in model_code_files():
            shutil.copy2(src, tmp / src.name)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _replace_dir(new: Path, dest: Path) -> None:
    """Swap `new` into `dest`; an existing `dest` survives until the new one is in place."""
    if not dest.exists():
        new.rename(dest)
        return
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    dest.rename(old)
    new.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def save_model_into(model, tokenizer, folder: str | Path) -> Path:
    """Write the model's files into an existing folder (a run folder with checkpoints beside them).

    Each file is written beside its destination and renamed over it, so every file is either the
    old or the new one, never half-written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staged = save_model(model, tokenizer, folder / ".export")
    for f in staged.iterdir():
        os.replace(f, folder / f.name)
    staged.rmdir()
    return folder
