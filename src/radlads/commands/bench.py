"""`radlads bench`: prefill/decode speed and memory per context length (radlads.bench)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from radlads.commands.common import MODEL_HELP, add_dtype_argument, check_output
from radlads.errors import RadladsError


def parse_contexts(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RadladsError(f"--contexts takes comma-separated token counts, e.g. 512,2048, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise RadladsError(f"--contexts values must be positive token counts, got {text!r}")
    return sorted(set(values))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("Contexts are random token ids. Each (model, context) runs in a fresh process whose RSS "
                "high-water mark is reset after loading, so peak RSS = resident weights + that context's "
                "prefill and decode. Teachers skip contexts beyond their max_position_embeddings unless "
                "--past-context-limit is given.")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--vs", default=None, metavar="TEACHER", help="a second model to compare against (usually the teacher)")
    p.add_argument("--contexts", default="512,2048,8192,16384", metavar="L,L,...",
                   help="context lengths in tokens (random token ids)")
    p.add_argument("--decode-tokens", type=int, default=32, metavar="N", help="greedy decode steps per context")
    p.add_argument("--prefill-chunk", type=int, default=0, metavar="N",
                   help="prefill through the cache N tokens at a time (default: one forward)")
    add_dtype_argument(p)
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's)")
    p.add_argument("--past-context-limit", action="store_true",
                   help="also time teachers beyond max_position_embeddings: their output there is not "
                   "meaningful, but the speed and memory of their KV cache are")
    p.add_argument("--in-process", action="store_true",
                   help="measure all contexts in this process instead of one fresh process each (faster, "
                   "peak RSS less clean)")
    p.add_argument("--paired", action="store_true",
                   help="with --vs: also time both models' decode steps in turn in one process at the largest "
                   "context both ran, and report the median of the per-pair ratios (far less affected by "
                   "other processes than the ratio of two separate medians)")
    p.add_argument("--backend", choices=("torch", "llama.cpp"), default="torch",
                   help="torch: student folders / teacher specs in PyTorch; llama.cpp: .gguf files (radlads "
                   "export-gguf, a teacher's GGUF) through llama-cpp-python (the gguf extra); --threads sets "
                   "llama.cpp's threads (default 1), --dtype does not apply (the file's types do)")
    p.add_argument("--flash-attn", action="store_true", help="llama.cpp: flash attention for transformer GGUFs")
    p.add_argument("--json", default=None, metavar="FILE", help="write the raw numbers here")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="decode ms/token and state bytes vs context")


def validate(args) -> list[int]:
    contexts = parse_contexts(args.contexts)
    if args.decode_tokens < 1:
        raise RadladsError(f"--decode-tokens must be >= 1, got {args.decode_tokens}")
    if args.prefill_chunk < 0:
        raise RadladsError(f"--prefill-chunk must be >= 0, got {args.prefill_chunk}")
    if args.threads is not None and args.threads < 1:
        raise RadladsError(f"--threads must be >= 1, got {args.threads}")
    if args.paired and not args.vs:
        raise RadladsError("--paired compares two models: give the second with --vs")
    check_output(args.json, "--json")
    check_output(args.plot, "--plot")
    return contexts


def run(args) -> int:
    from radlads import bench

    settings = bench.BenchSettings(
        contexts=validate(args), decode_tokens=args.decode_tokens, prefill_chunk=args.prefill_chunk,
        dtype=args.dtype, threads=args.threads, past_context_limit=args.past_context_limit,
        in_process=args.in_process, paired=args.paired, backend=args.backend, flash_attn=args.flash_attn)
    report = bench.run_bench([args.model] + ([args.vs] if args.vs else []), settings)
    print(bench.report_text(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        bench.plot(report["models"], args.plot)
    return 0
