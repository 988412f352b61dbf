"""Training throughput of stages 1 and 2 next to the teacher's own forward, on this machine.

    .venv/bin/python benchmarks/bench_train.py [--teacher smollm2-135m] [--dtypes fp32,bf16]
        [--seq-len 512] [--batch-size 1] [--steps 4] [--threads 2] [--compile] [--json results/train.json]

For each dtype (bf16 = torch.autocast, as `--dtype bf16` in training) it measures, in one
process: the teacher's forward (no grad, tokens/s), then a few real steps of `train_stage` for
stage 1 and stage 2 on random tokens (the first --warmup steps, 2 by default, are not counted; tokens/s is
the median over the others, as logged in metrics.jsonl). The teacher is timed again after each
stage, and each ratio uses the teacher measured just before and after it, so that a shared
machine's drifting speed cancels out. Targets: stage 1 >= 0.4x and stage 2 >= 0.2x the
teacher-forward throughput of the same dtype.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from radlads.compiled_kernels import compile_rwkv7_kernel
from radlads.runtime import keep_freed_memory
from radlads.config import load_config
from radlads.teachers import load_teacher
from radlads.train import train_stage
from radlads.transfer import build_student

TARGETS = {1: 0.4, 2: 0.2}  # stage 3 has none: it runs at a longer sequence length


class RandomTokens:
    def __init__(self, vocab: int, batch: int, seq: int, seed: int):
        self.g, self.shape, self.vocab = torch.Generator().manual_seed(seed), (batch, seq), vocab

    def __next__(self):
        return torch.randint(0, self.vocab, self.shape, generator=self.g)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def teacher_forward(teacher, vocab: int, batch: int, seq: int, dtype: str, steps: int, warmup: int) -> float:
    ids = torch.randint(0, vocab, (batch, seq))
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()
    times = []
    with torch.no_grad(), cast:
        for _ in range(steps + warmup):
            t0 = time.perf_counter()
            teacher(input_ids=ids, use_cache=False)
            times.append(time.perf_counter() - t0)
    return batch * seq / statistics.median(times[warmup:])


def stage_throughput(stage: int, teacher, student, vocab: int, batch: int, seq: int, dtype: str, steps: int,
                     warmup: int, extra: dict) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(overrides={
            "teacher": "bench", "out": tmp, "dtype": dtype, "save_every": 10**6, "eval_every": 10**6,
            "data": {"valid_sequences": 0},
            f"stage{stage}": dict({"tokens": (steps + warmup) * batch * seq, "seq_len": seq, "batch_size": batch},
                                  **extra),
        })
        train_stage(stage, cfg, teacher, student, None, Path(tmp),
                    data_factory=lambda s, seed: (RandomTokens(vocab, batch, seq, seed), []))
        rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["tok_s"] for r in rows[warmup:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="smollm2-135m")
    p.add_argument("--arch", default="rwkv7")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--stages", default="1,2", help="which stages to time (3: CE with gradient checkpointing)")
    p.add_argument("--stage3-seq-len", type=int, default=2048)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=4, help="measured steps per stage (after the warm-up)")
    # The first two training steps of a fresh student run ~2x slower (allocator and oneDNN warm-up,
    # measured); a long run never sees that again, so they are not counted.
    p.add_argument("--warmup", type=int, default=2, help="uncounted steps before measuring")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stage2-top-k", type=int, default=0, help="also time stage 2 with top-k KL")
    p.add_argument("--compile", action="store_true", help="the compiled RWKV-7 kernel, as `compile: true` (compiles in the warm-up)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    keep_freed_memory()  # as the radlads CLI does
    if args.compile:
        compile_rwkv7_kernel()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    stages = [int(x) for x in args.stages.split(",")]
    teacher, _ = load_teacher(args.teacher)
    vocab = teacher.config.vocab_size
    results = []
    for dtype in args.dtypes.split(","):
        student = build_student(teacher, args.arch)
        row = {"dtype": dtype, "seq_len": args.seq_len, "batch_size": args.batch_size, "compile": args.compile}
        forward = [teacher_forward(teacher, vocab, args.batch_size, args.seq_len, dtype, args.steps, args.warmup)]
        runs = [(n, {}) for n in stages] + ([(2, {"top_k": args.stage2_top_k})] if args.stage2_top_k else [])
        for stage, extra in runs:
            key = f"stage{stage}" + (f"_top{extra['top_k']}" if extra else "")
            seq = args.stage3_seq_len if stage == 3 else args.seq_len
            try:
                tok_s = stage_throughput(stage, teacher, student, vocab, args.batch_size, seq, dtype,
                                         args.steps, args.warmup, extra)
            except RuntimeError as e:  # e.g. a kernel without bf16 support: report it, measure the rest
                row[f"{key}_error"] = str(e).splitlines()[0]
                continue
            # On a shared machine the speed drifts: compare with the teacher measured just before and after.
            forward.append(teacher_forward(teacher, vocab, args.batch_size, args.seq_len, dtype, args.steps, args.warmup))
            row[f"{key}_tok_s"] = tok_s
            row[f"{key}_ratio"] = tok_s / statistics.mean(forward[-2:])
        row["teacher_fwd_tok_s"] = statistics.median(forward)
        row["teacher_fwd_spread"] = [round(f, 1) for f in forward]
        results.append(row)
        print(json.dumps(row), file=sys.stderr)

    print(f"\n{args.teacher} -> {args.arch}, seq {args.seq_len}, batch {args.batch_size}, "
          f"{args.threads} threads, median of {args.steps} steps")
    print(f"{'dtype':6} {'teacher fwd':>12} {'stage 1':>9} {'ratio':>6} {'target':>6} {'stage 2':>9} {'ratio':>6} "
          f"{'target':>6}")
    for r in results:
        cells = [f"{r['dtype']:6} {r['teacher_fwd_tok_s']:10.0f}/s"]
        for n in (1, 2):
            if f"stage{n}_tok_s" in r:
                cells.append(f"{r[f'stage{n}_tok_s']:7.0f}/s {r[f'stage{n}_ratio']:6.2f} {TARGETS[n]:6.1f}")
            else:
                cells.append(f"{'-':>9} {'-':>6} {TARGETS[n]:6.1f}")
        print(" ".join(cells))
        if "stage3_tok_s" in r:
            print(f"  stage 3 (seq {args.stage3_seq_len}, CE, gradient checkpointing): {r['stage3_tok_s']:.0f}/s")
        for key in [k for k in r if k.endswith("_error")]:
            print(f"  {r['dtype']} {key[:-6]} failed: {r[key]}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
