"""`radlads` command line: one subcommand per step of the pipeline.

Each subcommand lives in its own module under radlads/commands/, which exposes
`add_arguments(parser)` and `run(args) -> int`. Only the chosen command's module is imported, so
`radlads --help` answers instantly without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from radlads import __version__
from radlads.errors import RadladsError
from radlads.runtime import keep_freed_memory

# name -> (module, one-line help). Listed in pipeline order: teacher -> student -> eval.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("radlads.commands.init", "build a student from a teacher (attention transfer) and save it"),
    "convert": ("radlads.commands.convert", "full conversion: init, stage 1, stage 2 (and 3), export"),
    "train": ("radlads.commands.train", "run one training stage (1, 2 or 3) on an existing student"),
    "eval": ("radlads.commands.eval", "benchmark accuracy (lm-eval tasks) for students and teachers"),
    "ppl": ("radlads.commands.ppl", "token- and byte-level perplexity on held-out text"),
    "bench": ("radlads.commands.bench", "prefill/decode speed and memory per context length"),
    "passkey": ("radlads.commands.passkey", "passkey-retrieval accuracy per context length and depth"),
    "generate": ("radlads.commands.generate", "generate text from a model, streaming"),
    "export-gguf": ("radlads.commands.export_gguf", "write a student as a GGUF file for llama.cpp"),
}


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
