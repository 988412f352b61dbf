"""One typed config object per run: defaults <- preset <- YAML file <- CLI flags.

Every hyperparameter lives here, so `run.yaml` (written into each run folder) reproduces a run.
Unknown keys, wrong types and out-of-range values fail with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from radlads.errors import RadladsError


@dataclass
class StudentConfig:
    arch: str = "rwkv7"  # rwkv7 | rwkv6
    attention_layers: list[int] = field(default_factory=list)  # layers kept as softmax attention
    use_rope: bool = False
    use_groupnorm: bool = False
    # Fit the new time-mix parameters to the teacher's attention before stage 1 (radlads.teacher_init):
    # none | gain | decay | decay+gain | auto (the measured best per arch: decay+gain for rwkv7, gain for
    # rwkv6), from `teacher_init_sequences` training sequences of stage1.seq_len.
    teacher_init: str = "none"
    teacher_init_sequences: int = 4


@dataclass
class DataConfig:
    spec: str = "teacher"  # file/folder/glob, hf:NAME[:CONFIG][:SPLIT], or text sampled from the teacher
    valid_spec: str | None = None  # separate held-out text; default: a hash slice of `spec`
    text_field: str = "text"
    valid_fraction: float = 0.005
    valid_sequences: int = 8
    shuffle_buffer: int = 64
    teacher_samples: int = 512  # documents to sample when spec == "teacher"
    teacher_sample_tokens: int = 512


@dataclass
class StageConfig:
    tokens: int = 1_000_000  # token budget; steps = ceil(tokens / (batch_size * seq_len))
    # Wall-time budget in minutes (0 = none). The step count is fixed from the speed of the first
    # max(3, warmup_steps) steps so the stage ends about this long after it began; `tokens` caps it.
    minutes: float = 0.0
    seq_len: int = 512
    batch_size: int = 8  # global sequences per optimizer step, split over ranks
    grad_accum: int = 1  # micro-batches per rank per step
    lr: float = 1e-3
    lr_final: float = 1e-5
    schedule: str = "cosine"  # cosine | constant
    warmup_steps: int = 10
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    temperature: float = 1.0  # stage 2/3 KL temperature
    top_k: int = 0  # stage 2/3: KL on the teacher's top-k logits only (0 = full vocabulary)
    freeze_mlp: bool = False  # stage 2/3
    ce_weight: float = 0.0  # stage 2/3 loss = kl_weight * KL + ce_weight * CE
    kl_weight: float = 1.0
    gradient_checkpointing: bool = False


def _stage1() -> StageConfig:
    return StageConfig(tokens=100_000_000, lr=1e-3, lr_final=1e-5, schedule="cosine")


def _stage2() -> StageConfig:
    return StageConfig(tokens=250_000_000, lr=1e-5, lr_final=1e-5, schedule="constant", warmup_steps=0)


def _stage3() -> StageConfig:
    return StageConfig(tokens=100_000_000, seq_len=4096, batch_size=4, lr=1e-5, lr_final=1e-5, schedule="constant",
                       warmup_steps=0, ce_weight=1.0, kl_weight=0.0, gradient_checkpointing=True)


@dataclass
class RunConfig:
    teacher: str = ""
    out: str = ""
    stages: list[int] = field(default_factory=lambda: [1, 2])
    seed: int = 0
    dtype: str = "fp32"  # fp32 | bf16 (autocast on the teacher and student forward)
    threads: int = 0  # torch threads per process; 0 = torch's default
    compile: bool = False  # torch.compile the CPU RWKV-7 kernel for training (eager, with a warning, if it fails)
    log_every: int = 1
    eval_every: int = 50
    save_every: int = 50
    keep_checkpoints: int = 2
    fsdp: bool = False  # shard the student with FSDP2 instead of replicating it with DDP
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage1: StageConfig = field(default_factory=_stage1)
    stage2: StageConfig = field(default_factory=_stage2)
    stage3: StageConfig = field(default_factory=_stage3)

    def stage(self, n: int) -> StageConfig:
        return getattr(self, f"stage{n}")


# Tokens/s of each stage on this project's 2-core CPU with the smollm2-135m teacher (fp32, 2 threads,
# seq 512), measured on a quiet machine with benchmarks/bench_train.py (2026-12-07, oneDNN matmuls:
# 208 and 96 tok/s). Stage 3 (seq 2048) is not in that benchmark; its 60 is an earlier stage-2 speed.
# The cpu-demo budget (presets/cpu-demo.yaml) is derived from them: about 25 minutes of stage 1 and
# 25 of stage 2, so a whole `radlads convert --preset cpu-demo` (plus loading, validation and
# export) takes an hour; tests/test_config.py checks the file against cpu_demo_tokens.
CPU_DEMO_TOK_S = {1: 208.0, 2: 96.0, 3: 60.0}
CPU_DEMO_MINUTES = {1: 25, 2: 25, 3: 10}


def cpu_demo_tokens(stage: int, seq_len: int, batch_size: int) -> int:
    """The token budget that fills the stage's minutes at the measured speed, in whole steps."""
    step_tokens = seq_len * batch_size
    return max(1, round(CPU_DEMO_TOK_S[stage] * 60 * CPU_DEMO_MINUTES[stage] / step_tokens)) * step_tokens


# Presets are partial configs over the defaults, one YAML file each in radlads/presets/ (shipped
# inside the package, so an installed radlads finds them).
PRESET_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset(name: str) -> dict:
    """A preset's keys, as its YAML file spells them."""
    if name not in preset_names():
        raise RadladsError(f"unknown preset {name!r}: choose one of {', '.join(preset_names())}")
    return _read_yaml(PRESET_DIR / f"{name}.yaml")


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise RadladsError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RadladsError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise RadladsError(f"{path} must hold a mapping of config keys")
    return loaded


# --------------------------------------------------------------------------------------------
# Merging and checking
# --------------------------------------------------------------------------------------------


def _coerce(value, annotation, key: str):
    """Convert YAML/CLI values to the field's type, or fail naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise RadladsError(f"config key {key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    try:
        if annotation is bool:
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, bool):
                return value
            raise ValueError
        if annotation is int:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, bool) or float(number) != int(number):
                raise ValueError
            return int(number)
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if annotation is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise RadladsError(f"config key {key}: expected {annotation.__name__}, got {value!r}") from None
    return value


def merge(target, updates: dict, prefix: str = "") -> None:
    """Apply a nested dict onto a config dataclass in place; unknown keys are errors."""
    hints = typing.get_type_hints(type(target))
    for key, value in updates.items():
        name = f"{prefix}{key}"
        if key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(target))
            raise RadladsError(f"unknown config key {name!r} (known here: {known})")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise RadladsError(f"config key {name}: expected a section, got {value!r}")
            merge(current, value, f"{name}.")
        else:
            setattr(target, key, _coerce(value, hints[key], name))


def validate(cfg: RunConfig) -> RunConfig:
    def need(ok: bool, message: str):
        if not ok:
            raise RadladsError(message)

    need(cfg.student.arch in ("rwkv7", "rwkv6"), f"student.arch must be rwkv7 or rwkv6, got {cfg.student.arch!r}")
    need(cfg.student.teacher_init in ("none", "gain", "decay", "decay+gain", "auto"),
         f"student.teacher_init must be none, gain, decay, decay+gain or auto, got {cfg.student.teacher_init!r}")
    need(cfg.student.teacher_init_sequences >= 1, "student.teacher_init_sequences must be >= 1")
    need(cfg.dtype in ("fp32", "bf16"), f"dtype must be fp32 or bf16, got {cfg.dtype!r}")
    need(bool(cfg.stages) and all(s in (1, 2, 3) for s in cfg.stages) and cfg.stages == sorted(set(cfg.stages)),
         f"stages must be an increasing list drawn from 1, 2, 3, got {cfg.stages}")
    need(0 <= cfg.data.valid_fraction < 1, f"data.valid_fraction must be in [0, 1), got {cfg.data.valid_fraction}")
    need(cfg.data.valid_sequences >= 0, "data.valid_sequences must be >= 0")
    for key in ("log_every", "eval_every", "save_every", "keep_checkpoints"):
        need(getattr(cfg, key) >= 1, f"{key} must be >= 1, got {getattr(cfg, key)}")
    need(cfg.threads >= 0, f"threads must be >= 0, got {cfg.threads}")
    for n in (1, 2, 3):
        s, name = cfg.stage(n), f"stage{n}"
        need(s.tokens >= 1, f"{name}.tokens must be >= 1, got {s.tokens}")
        need(s.minutes >= 0, f"{name}.minutes must be >= 0, got {s.minutes}")
        need(s.seq_len >= 2, f"{name}.seq_len must be >= 2, got {s.seq_len}")
        need(s.batch_size >= 1, f"{name}.batch_size must be >= 1, got {s.batch_size}")
        need(s.grad_accum >= 1, f"{name}.grad_accum must be >= 1, got {s.grad_accum}")
        need(0 < s.lr <= 1, f"{name}.lr must be in (0, 1], got {s.lr}")
        need(0 < s.lr_final <= 1, f"{name}.lr_final must be in (0, 1], got {s.lr_final}")
        need(s.schedule in ("cosine", "constant"), f"{name}.schedule must be cosine or constant, got {s.schedule!r}")
        need(s.warmup_steps >= 0, f"{name}.warmup_steps must be >= 0")
        need(s.weight_decay >= 0, f"{name}.weight_decay must be >= 0")
        need(0 <= s.beta1 < 1 and 0 <= s.beta2 < 1, f"{name}.beta1/beta2 must be in [0, 1)")
        need(s.grad_clip > 0, f"{name}.grad_clip must be > 0, got {s.grad_clip}")
        need(s.temperature > 0, f"{name}.temperature must be > 0, got {s.temperature}")
        need(s.top_k >= 0, f"{name}.top_k must be >= 0, got {s.top_k}")
        need(s.ce_weight >= 0 and s.kl_weight >= 0 and s.ce_weight + s.kl_weight > 0,
             f"{name}: ce_weight and kl_weight must be >= 0 and not both 0")
    return cfg


def load_config(preset_name: str | None = None, config_file: str | None = None, overrides: dict | None = None,
                sets: list[str] | None = None) -> RunConfig:
    """defaults <- preset <- YAML file <- explicit overrides <- `--set key.path=value` items."""
    cfg = RunConfig()
    if preset_name:
        merge(cfg, preset(preset_name))
    if config_file:
        merge(cfg, _read_yaml(Path(config_file)))
    if overrides:
        merge(cfg, overrides)
    for item in sets or []:
        if "=" not in item:
            raise RadladsError(f"--set takes key.path=value, got {item!r}")
        key, value = item.split("=", 1)
        nested: dict = {}
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise RadladsError(f"--set {key}: cannot parse the value {value!r}") from None
        merge(cfg, nested)
    return validate(cfg)


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
