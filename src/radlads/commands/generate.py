"""`radlads generate`: generate text from a model, streaming (radlads.generate)."""

from __future__ import annotations

import argparse
import sys

from radlads.commands.common import MODEL_HELP, add_dtype_argument
from radlads.errors import RadladsError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--prompt", required=True, metavar="TEXT", help="the prompt; - reads it from stdin")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--system", default=None, metavar="TEXT", help="system message (with --chat)")
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (1 = off)")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="sample from the K likeliest tokens (0 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    add_dtype_argument(p)


def validate(args) -> None:
    if args.max_new_tokens < 1:
        raise RadladsError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise RadladsError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise RadladsError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k < 0:
        raise RadladsError(f"--top-k must be >= 0 (0 = off), got {args.top_k}")
    if args.system and not args.chat:
        raise RadladsError("--system needs --chat (a system message only exists in a chat template)")


def run(args) -> int:
    from radlads.generate import generate_text

    validate(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    generate_text(args.model, prompt, args.chat, args.system, args.max_new_tokens, args.temperature, args.top_p,
                  args.top_k, args.seed, args.dtype)
    return 0
