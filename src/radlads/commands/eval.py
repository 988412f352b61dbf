"""`radlads eval`: lm-eval benchmark accuracy for students and teachers, with RADLADS ratios
(radlads.evaluate runs the tasks, radlads.eval_results reports them)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from radlads.commands.common import MODEL_HELP, add_dtype_argument
from radlads.errors import RadladsError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from radlads.evaluate import DEFAULT_BOOTSTRAP, DEFAULT_TASKS

    p.add_argument("models", nargs="+", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--tasks", default=DEFAULT_TASKS,
                   help=f"comma-separated; local: {DEFAULT_TASKS}; any other lm-eval task loads from the hub")
    p.add_argument("--eval-data", default=None, metavar="DIR",
                   help="folder with the local benchmark files (default: ../shared/data/eval from the "
                        "current directory, else from the repository root)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N items of each task")
    p.add_argument("--items", default=None, metavar="START:END",
                   help="only items START..END-1 of each task (END may be left out: to the end); with "
                        "--reuse, results on adjacent ranges are joined (accuracies only)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's, or OMP_NUM_THREADS); 1 on a shared machine")
    p.add_argument("--teacher", default=None, metavar="SPEC",
                   help="also evaluate this teacher and report each model's RADLADS ratio against it")
    add_dtype_argument(p)
    p.add_argument("--bootstrap-iters", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                   help="lm-eval bootstrap resamples for stderrs without a closed form (perplexity)")
    p.add_argument("--json", default=None, metavar="FILE", help="write all raw results here")
    p.add_argument("--reuse", action="extend", nargs="+", default=[], metavar="FILE",
                   help="an earlier --json file: a task a model already scored there with the same --dtype on "
                        "the same items, or on adjacent --items shards that together cover them, is not "
                        "run again (takes several files, and repeats)")


def _check_args(args) -> None:
    if args.limit is not None and args.limit < 1:
        raise RadladsError(f"--limit must be >= 1, got {args.limit}")
    if args.limit is not None and args.items is not None:
        raise RadladsError("--limit and --items both choose items; give one (--limit N is --items 0:N)")
    if args.batch_size < 1:
        raise RadladsError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise RadladsError(f"--threads must be >= 1, got {args.threads}")
    if args.bootstrap_iters < 1:
        raise RadladsError(f"--bootstrap-iters must be >= 1, got {args.bootstrap_iters}")


def run(args) -> int:
    from radlads.eval_results import format_table
    from radlads.evaluate import evaluate_models

    _check_args(args)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    ev = evaluate_models(args.models, args.teacher, args.tasks, args.eval_data, args.limit, args.items,
                         args.batch_size, args.dtype, args.bootstrap_iters, args.reuse)
    print(format_table(ev.results, ev.teacher, ev.ratios))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(ev.json, indent=2, default=str) + "\n")
    return 0
