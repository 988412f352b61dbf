"""Flags several commands share, and the checks that go with them."""

from __future__ import annotations

import argparse
from pathlib import Path

from radlads.dtypes import DTYPE_CHOICES
from radlads.errors import RadladsError

MODEL_HELP = "student folder or teacher spec (folder, .gguf, preset, hub id)"


def add_dtype_argument(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="fp32", help=help)


def check_output(path: str | None, flag: str) -> None:
    """Fail before any work when an output file's folder does not exist."""
    if path is not None and not Path(path).resolve().parent.is_dir():
        raise RadladsError(f"{flag} {path}: folder {Path(path).resolve().parent} does not exist")


# --------------------------------------------------------------------------------------------
# The student's shape: init and convert
# --------------------------------------------------------------------------------------------


def add_student_arguments(p: argparse.ArgumentParser) -> None:
    """Student-shape options shared by `init` and `convert`."""
    p.add_argument("--arch", default="rwkv7", help="time-mix: rwkv7 (RAD-RWKV7) or rwkv6 (RAD-RWKV6)")
    p.add_argument("--attention-layers", default="", metavar="I,J",
                   help="layers that keep the teacher's softmax attention (hybrid), e.g. 7,15")
    p.add_argument("--use-rope", action="store_true", help="apply the teacher's RoPE to r and k")
    p.add_argument("--use-groupnorm", action="store_true", help="per-head GroupNorm on the time-mix output")


def parse_layer_list(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise RadladsError(f"--attention-layers takes comma-separated layer indices, got {text!r}") from None


# --------------------------------------------------------------------------------------------
# The run config: convert and train
# --------------------------------------------------------------------------------------------


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by `convert` and `train`; each maps onto a config key."""
    from radlads.config import preset_names

    p.add_argument("--config", help="YAML file with any config keys (CLI flags override it)")
    p.add_argument("--preset", help=f"start from a preset: {', '.join(preset_names())}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set stage2.temperature=2.0 (repeatable)")
    p.add_argument("--data", help="training data spec (file, folder, glob, hf:NAME, or 'teacher')")
    p.add_argument("--valid-data", help="held-out text spec (default: a hash slice of --data)")
    p.add_argument("--text-field", help="JSON/parquet field holding the text (default: text)")
    p.add_argument("--seed", type=int)
    p.add_argument("--dtype", choices=DTYPE_CHOICES)
    p.add_argument("--threads", type=int, help="torch threads per process")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the CPU RWKV-7 kernel (needs a C++ compiler; falls back to eager)")
    for n in (1, 2, 3):
        p.add_argument(f"--stage{n}-tokens", type=float, metavar="N", help=f"stage {n} token budget (e.g. 2e6)")
        p.add_argument(f"--stage{n}-minutes", type=float, metavar="M",
                       help=f"stage {n} wall-time budget: the step count is fixed from the first steps' speed")
        p.add_argument(f"--stage{n}-seq-len", type=int, metavar="N")
        p.add_argument(f"--stage{n}-batch-size", type=int, metavar="N", help="global sequences per step")
        p.add_argument(f"--stage{n}-lr", type=float, metavar="LR")
    p.add_argument("--eval-every", type=int, metavar="STEPS")
    p.add_argument("--save-every", type=int, metavar="STEPS")
    p.add_argument("--fsdp", action="store_true", default=None, help="shard the student with FSDP2 (torchrun)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    p.add_argument("--stop-after-steps", type=int, metavar="N",
                   help="stop (resumably) after N optimizer steps in this invocation, e.g. to time-box a run")


def overrides_from_args(args) -> dict:
    """The config keys the user set explicitly on the command line."""
    o: dict = {}

    def put(path: str, value):
        if value is None:
            return
        node = o
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    put("data.spec", getattr(args, "data", None))
    put("data.valid_spec", getattr(args, "valid_data", None))
    put("data.text_field", getattr(args, "text_field", None))
    for key in ("seed", "dtype", "threads", "compile", "eval_every", "save_every", "fsdp"):
        put(key, getattr(args, key, None))
    for n in (1, 2, 3):
        tokens = getattr(args, f"stage{n}_tokens", None)
        put(f"stage{n}.tokens", int(tokens) if tokens is not None else None)
        put(f"stage{n}.minutes", getattr(args, f"stage{n}_minutes", None))
        put(f"stage{n}.seq_len", getattr(args, f"stage{n}_seq_len", None))
        put(f"stage{n}.batch_size", getattr(args, f"stage{n}_batch_size", None))
        put(f"stage{n}.lr", getattr(args, f"stage{n}_lr", None))
    return o
