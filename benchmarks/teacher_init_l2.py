"""Stage 1's starting point: held-out attention L2 of freshly transferred students, per init mode.

    .venv/bin/python benchmarks/teacher_init_l2.py --teacher smollm2-135m \
        --data ../shared/data/corpus/wikipedia_en_2015/train_00.jsonl.gz \
        --valid-data ../shared/data/corpus/wikipedia_en_2015/valid.jsonl.gz \
        [--archs rwkv7,rwkv6] [--modes none,gain,decay,decay+gain] [--groupnorm off,on]
        [--fit-sequences 4] [--sequences 8] [--json results/teacher-init-l2.json]

For each arch and `student.teacher_init` mode it builds the attention-transferred student (seed 0),
fits the mode on the first --fit-sequences training sequences (as `radlads convert` does), and
reports stage 1's loss on the first --sequences held-out sequences: the mean over layers of the
MSE between each time-mix output and the teacher attention output it replaces, with the teacher's
own residual stream as input. `zero` is the same loss for a time-mix that outputs zeros. Each row
also has `output_ms`, the mean square of the time-mix outputs (averaged over layers), beside the
teacher attention's own `target_ms` (= `zero`): an output far louder than the target is what makes
a fresh student's L2 large.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from radlads.cpu_matmul import with_onednn_matmul
from radlads.data import validation_batches
from radlads.teacher_init import MODES, initialise_from_teacher
from radlads.teachers import load_teacher
from radlads.objectives import TeacherAttentionTap, time_mix_forward
from radlads.transfer import build_student


@torch.no_grad()
def held_out_l2(student, inputs, targets) -> tuple[float, list[float], float]:
    outputs = [o for o in time_mix_forward(student, inputs) if o is not None]
    per_layer = [float(F.mse_loss(o, t)) for o, t in zip(outputs, targets)]
    output_ms = sum(float(o.pow(2).mean()) for o in outputs) / len(outputs)
    return sum(per_layer) / len(per_layer), per_layer, output_ms


@with_onednn_matmul  # same results, 2-4x faster Linear layers (src/radlads/cpu_matmul.py)
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True, help="training text the init modes are fitted on")
    p.add_argument("--valid-data", required=True)
    p.add_argument("--archs", default="rwkv7,rwkv6")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--groupnorm", default="off", help="off, on or off,on: student.use_groupnorm")
    p.add_argument("--fit-sequences", type=int, default=4)
    p.add_argument("--sequences", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    teacher, tokenizer = load_teacher(args.teacher)
    teacher.eval()
    fit = validation_batches(args.data, tokenizer, args.seq_len, args.fit_sequences, split="train")
    valid = validation_batches(args.valid_data, tokenizer, args.seq_len, args.sequences, split="all")
    tap = TeacherAttentionTap(teacher)
    with torch.no_grad():
        teacher.model(input_ids=torch.cat(valid), use_cache=False)
    inputs, targets = tap.take()
    tap.remove()
    zero = sum(float(t.pow(2).mean()) for t in targets) / len(targets)
    print(f"zero output: L2 {zero:.3f}")
    rows = []
    for arch in args.archs.split(","):
        for groupnorm in args.groupnorm.split(","):
            for mode in args.modes.split(","):
                student = build_student(teacher, arch, seed=0, use_groupnorm=groupnorm == "on")
                initialise_from_teacher(student, teacher, fit, mode)
                l2, per_layer, output_ms = held_out_l2(student, inputs, targets)
                rows.append({"arch": arch, "mode": mode, "groupnorm": groupnorm == "on", "l2": l2,
                             "output_ms": output_ms, "target_ms": zero,
                             "l2_per_layer": [round(x, 4) for x in per_layer]})
                print(f"{arch} {mode:11s} groupnorm {groupnorm:3s} L2 {l2:.3f}  output mean square {output_ms:.3f} "
                      f"(teacher attention {zero:.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"teacher": args.teacher, "fit_sequences": len(fit), "valid_sequences": len(valid),
             "seq_len": args.seq_len, "zero_output_l2": zero, "loadavg": os.getloadavg(), "rows": rows},
            indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
