"""`radlads ppl`: token- and byte-level perplexity on held-out text (radlads.ppl)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from radlads.commands.common import MODEL_HELP, add_dtype_argument
from radlads.errors import RadladsError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="held-out text: a file, folder or glob of .txt / .jsonl(.gz) / .parquet, as for training")
    p.add_argument("--text-field", default="text", help="JSON/parquet field holding the text (default: text)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="score only the first N tokens of text (counted with the first model's tokenizer; "
                        "every model scores the same text)")
    p.add_argument("--window", type=int, default=None, metavar="W",
                   help="teachers' sliding window in tokens (default: min(context, 2048)); students read whole documents")
    p.add_argument("--stride", type=int, default=None, metavar="S", help="window step (default: W/2)")
    add_dtype_argument(p)
    p.add_argument("--json", default=None, metavar="FILE", help="write the raw results here")


def _check_args(args) -> None:
    if args.max_tokens is not None and args.max_tokens < 1:
        raise RadladsError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.window is not None and args.window < 2:
        raise RadladsError(f"--window must be >= 2, got {args.window}")
    if args.stride is not None and args.stride < 1:
        raise RadladsError(f"--stride must be >= 1, got {args.stride}")
    if args.window is not None and args.stride is not None and args.stride >= args.window:
        raise RadladsError(f"--stride ({args.stride}) must be smaller than --window ({args.window})")


def run(args) -> int:
    from radlads import ppl

    _check_args(args)
    report = ppl.compare(args.models, args.data, args.max_tokens, args.window, args.stride, args.dtype,
                         args.text_field)
    print(ppl.format_table(report["models"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0
