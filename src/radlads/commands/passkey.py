"""`radlads passkey`: passkey-retrieval accuracy per context length and depth (radlads.passkey)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from radlads.commands.common import MODEL_HELP, add_dtype_argument, check_output
from radlads.errors import RadladsError


def _parse_list(text: str, flag: str, kind, example: str) -> list:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RadladsError(f"{flag} takes comma-separated numbers, e.g. {example}, got {text!r}") from None
    if not values:
        raise RadladsError(f"{flag} is empty")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--lengths", default="1024,4096,16384", metavar="L,L,...", help="prompt lengths in tokens (about)")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1", metavar="D,D,...",
                   help="relative key positions, 0 (start) to 1 (end)")
    p.add_argument("--trials", type=int, default=1, metavar="N", help="keys tried per length x depth")
    p.add_argument("--seed", type=int, default=0, help="seed for the keys")
    p.add_argument("--max-new-tokens", type=int, default=8, metavar="N", help="tokens decoded for the answer")
    add_dtype_argument(p)
    p.add_argument("--json", default=None, metavar="FILE", help="write every cell and reply here")


def validate(args) -> tuple[list[int], list[float]]:
    lengths = _parse_list(args.lengths, "--lengths", int, "1024,4096")
    depths = _parse_list(args.depths, "--depths", float, "0,0.5,1")
    if any(n < 1 for n in lengths):
        raise RadladsError(f"--lengths must be positive token counts, got {args.lengths!r}")
    if any(not 0 <= d <= 1 for d in depths):
        raise RadladsError(f"--depths must lie in [0, 1], got {args.depths!r}")
    if args.trials < 1:
        raise RadladsError(f"--trials must be >= 1, got {args.trials}")
    if args.max_new_tokens < 1:
        raise RadladsError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    check_output(args.json, "--json")
    return lengths, depths


def run(args) -> int:
    from radlads import passkey

    lengths, depths = validate(args)
    result = passkey.passkey_test(args.model, lengths, depths, args.trials, args.seed, args.max_new_tokens,
                                  args.dtype)
    print(f"passkey retrieval, {result['model']}, {args.trials} trial(s) per cell, greedy")
    print(passkey.markdown_table(result))
    if result["accuracy"] is not None:
        print(f"overall accuracy: {result['accuracy']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
