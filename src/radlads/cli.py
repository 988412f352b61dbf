"""`radlads` command line: one subcommand per step of the pipeline.

Each subcommand lives in its own module, which exposes `add_arguments(parser)` and
`run(args) -> int`. Only the chosen command's module is imported, so `radlads --help`
answers instantly without importing torch.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import sys

from radlads import __version__
from radlads.errors import RadladsError

# name -> (module, one-line help). Listed in pipeline order: teacher -> student -> eval.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("radlads.transfer", "build a student from a teacher (attention transfer) and save it"),
    "convert": ("radlads.convert", "full conversion: init, stage 1, stage 2 (and 3), export"),
    "train": ("radlads.train", "run one training stage (1, 2 or 3) on an existing student"),
    "eval": ("radlads.evaluate", "benchmark accuracy (lm-eval tasks) for students and teachers"),
    "ppl": ("radlads.ppl", "token- and byte-level perplexity on held-out text"),
    "bench": ("radlads.bench", "prefill/decode speed and memory per context length"),
    "passkey": ("radlads.passkey", "passkey-retrieval accuracy per context length and depth"),
    "generate": ("radlads.generate", "generate text from a model, streaming"),
}


def keep_freed_memory() -> None:
    """Let glibc reuse freed tensor memory instead of handing it back to the kernel.

    By default every tensor above 128 KiB is a fresh mmap, and the kernel zeroes its pages again on
    first touch: 10-25 ms of page faults per chunked time-mix forward at T=2048 (measured), i.e. a
    steady share of every training step and prefill. Keeping up to 1 GiB of freed heap and serving
    allocations below 32 MiB from it removes most of that. Same as MALLOC_TRIM_THRESHOLD_ /
    MALLOC_MMAP_THRESHOLD_ / MALLOC_ARENA_MAX in the environment, which win when set.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...): keep its defaults
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_mmap_threshold, 32 << 20)
    # The chunked kernel's worker threads would each get a fresh arena that starts cold (~5,500
    # extra page faults per layer fwd+bwd, measured); one shared arena keeps reusing warm memory.
    libc.mallopt(m_arena_max, 1)


def _parser(selected: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radlads",
        description="Convert a softmax-attention LLM into an RWKV-family linear-attention RNN "
        "(RADLADS), then evaluate, benchmark and run it.",
    )
    parser.add_argument("--version", action="version", version=f"radlads {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    if selected not in COMMANDS:
        selected = None
    try:
        args = _parser(selected).parse_args(argv)
        if args.command is None:
            _parser(None).print_help()
            return 2
        keep_freed_memory()
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except RadladsError as e:
        print(f"radlads {selected}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("radlads: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
