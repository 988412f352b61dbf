"""`radlads init`: build a student from a teacher by attention transfer and save it (radlads.convert)."""

from __future__ import annotations

import argparse

from radlads.commands.common import DTYPE_CHOICES, add_student_arguments, parse_layer_list
from radlads.errors import RadladsError



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="teacher: HF folder, .gguf file, preset or hub id")
    p.add_argument("--out", required=True, help="output folder for the student (Hugging Face format)")
    add_student_arguments(p)
    p.add_argument("--dtype", default="fp32", choices=DTYPE_CHOICES, help="weights dtype to save")


def run(args) -> int:
    from radlads.convert import init_student
    from radlads.model.configuration_radlads import TIME_MIX_KINDS
    from radlads.objectives import time_mix_parameter_names

    if args.arch not in TIME_MIX_KINDS:  # before the (slow) teacher load
        raise RadladsError(f"unknown --arch {args.arch!r}: choose one of {', '.join(TIME_MIX_KINDS)}")
    student = init_student(args.teacher, args.out, args.arch, parse_layer_list(args.attention_layers),
                           args.use_rope, args.use_groupnorm, args.dtype)
    n_params = sum(p.numel() for p in student.parameters())
    names = time_mix_parameter_names(student)
    new = sum(p.numel() for n, p in student.named_parameters() if n in names)
    print(f"saved {args.arch} student ({n_params / 1e6:.1f}M parameters, {new / 1e6:.1f}M in time-mix) to {args.out}")
    return 0
