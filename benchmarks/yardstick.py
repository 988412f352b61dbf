"""The recipe study's fixed yardstick: held-out KL, CE and stage-1 L2 of students on one token set.

    .venv/bin/python benchmarks/yardstick.py STUDENT [STUDENT ...] --teacher smollm2-135m \
        --valid-data ../shared/data/corpus/wikipedia_en_2015/valid.jsonl.gz \
        [--sequences 32] [--seq-len 512] [--threads 1] [--json results/study/yardstick-ROW.json]

Every student is scored on exactly the same tokens: the first `--sequences` packed sequences of
the held-out file, unshuffled (32 x 512 = 16,384 tokens by default), so numbers from different
runs and different days compare directly. Per student:
  - kl: KL(teacher || student) per token, full vocabulary, temperature 1 (stage 2's objective);
  - ce / teacher_ce: next-token cross-entropy (nats per token) of the student and the teacher;
  - l2 / l2_per_layer: stage 1's objective, each time-mix fed the teacher's own residual stream.
The teacher runs once per batch for all students. Quick downstream accuracy is not here: it is
`radlads eval` on fixed item ranges (docs/recipe.md has the command).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from radlads.cpu_matmul import onednn_matmul
from radlads.data import validation_batches
from radlads.loading import load_student
from radlads.losses import attention_alignment_loss, distillation_kl
from radlads.teachers import load_teacher
from radlads.objectives import TeacherAttentionTap, time_mix_forward


@torch.no_grad()
def score(students: dict, teacher, batches: list[torch.Tensor]) -> dict:
    tap = TeacherAttentionTap(teacher)
    sums = {name: {"kl": 0.0, "ce": 0.0, "l2": 0.0, "l2_per_layer": None} for name in students}
    teacher_ce = 0.0
    try:
        for ids in batches:
            out = teacher(input_ids=ids, use_cache=False)
            inputs, targets = tap.take()
            t_logits = out.logits
            teacher_ce += float(torch.nn.functional.cross_entropy(t_logits[0, :-1], ids[0, 1:]))
            for name, student in students.items():
                s = sums[name]
                logits = student(input_ids=ids, use_cache=False).logits
                s["kl"] += float(distillation_kl(logits, t_logits))
                s["ce"] += float(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]))
                outputs = time_mix_forward(student, inputs)
                per_layer = [float(torch.nn.functional.mse_loss(o, t)) if o is not None else None
                             for o, t in zip(outputs, targets)]
                s["l2"] += float(attention_alignment_loss(outputs, targets))
                s["l2_per_layer"] = per_layer if s["l2_per_layer"] is None else [
                    (a + b if a is not None else None) for a, b in zip(s["l2_per_layer"], per_layer)]
    finally:
        tap.remove()
    n = len(batches)
    result = {}
    for name, s in sums.items():
        result[name] = {"kl": s["kl"] / n, "ce": s["ce"] / n, "teacher_ce": teacher_ce / n, "l2": s["l2"] / n,
                        "l2_per_layer": [round(v / n, 5) if v is not None else None for v in s["l2_per_layer"]]}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("students", nargs="+", help="student folders (exported runs, stage outputs, radlads init)")
    p.add_argument("--teacher", required=True)
    p.add_argument("--valid-data", required=True, help="held-out text; the same file for every row of a study")
    p.add_argument("--sequences", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    teacher, tokenizer = load_teacher(args.teacher)
    teacher.eval()
    students = {}
    for spec in args.students:
        model = load_student(spec, exported_code=False)
        students[spec] = model
    batches = validation_batches(args.valid_data, tokenizer, args.seq_len, args.sequences, split="all")
    with onednn_matmul():  # same results, 2-4x faster Linear layers (src/radlads/cpu_matmul.py)
        result = score(students, teacher, batches)
    record = {"teacher": args.teacher, "valid_data": args.valid_data, "sequences": len(batches),
              "seq_len": args.seq_len, "tokens": len(batches) * args.seq_len, "threads": args.threads,
              "seconds": round(time.perf_counter() - t0, 1), "loadavg": [round(x, 2) for x in os.getloadavg()],
              "students": result}
    for name, r in result.items():
        print(f"{name}: KL {r['kl']:.4f}  CE {r['ce']:.4f} (teacher {r['teacher_ce']:.4f})  L2 {r['l2']:.4f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
