"""`radlads train`: one training stage on an existing student folder (radlads.convert.train_one_stage)."""

from __future__ import annotations

import argparse

from radlads.commands.common import add_config_arguments, overrides_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", type=int, required=True, choices=[1, 2, 3], help="which stage to run")
    p.add_argument("--student", required=True, help="student folder (from radlads init or a previous stage)")
    p.add_argument("--teacher", required=True, help="teacher spec the student was made from")
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, and the trained student")
    p.add_argument("--lr", type=float, help="peak learning rate of this stage")
    add_config_arguments(p)


def run(args) -> int:
    from radlads.config import load_config
    from radlads.convert import train_one_stage

    overrides = overrides_from_args(args)
    overrides.update({"teacher": args.teacher, "out": args.out, "stages": [args.stage]})
    if args.lr is not None:
        overrides.setdefault(f"stage{args.stage}", {})["lr"] = args.lr
    cfg = load_config(args.preset, args.config, overrides, args.set)
    train_one_stage(cfg, args.student, resume=args.resume, stop_after_steps=args.stop_after_steps)
    return 0
