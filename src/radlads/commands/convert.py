"""`radlads convert`: init -> stage 1 -> stage 2 (-> stage 3) -> export (radlads.convert)."""

from __future__ import annotations

import argparse

from radlads.commands.common import add_config_arguments, add_student_arguments, overrides_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="teacher: HF folder, .gguf file, preset or hub id")
    p.add_argument("--out", required=True, help="run folder; ends up as the converted Hugging Face model")
    p.add_argument("--stages", help="which stages to run, e.g. 1,2 (default) or 1,2,3")
    add_student_arguments(p)
    for action in p._actions:  # student options default to None here so YAML and presets can set them
        if action.dest in ("arch", "attention_layers", "use_rope", "use_groupnorm"):
            action.default = None
    add_config_arguments(p)


def run(args) -> int:
    from radlads import convert
    from radlads.config import load_config

    overrides = overrides_from_args(args)
    overrides.update({"teacher": args.teacher, "out": args.out})
    if args.stages:
        overrides["stages"] = args.stages
    student = {k: v for k, v in {"arch": args.arch, "attention_layers": args.attention_layers,
                                  "use_rope": args.use_rope, "use_groupnorm": args.use_groupnorm}.items()
               if v is not None}
    if student:
        overrides["student"] = student
    cfg = load_config(args.preset, args.config, overrides, args.set)
    convert.convert(cfg, resume=args.resume, stop_after_steps=args.stop_after_steps)
    return 0
