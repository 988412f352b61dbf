"""`radlads export-gguf`: a student as a GGUF file for llama.cpp (radlads.gguf_export)."""

from __future__ import annotations

import argparse

from radlads.gguf_export import OUTTYPES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("rwkv7 students become llama.cpp's arwkv7, rwkv6 students rwkv6qwen2; the tokenizer and chat "
                "template come from the teacher. Students llama.cpp cannot compute exactly (hybrid, RoPE, ...) "
                "are refused. A .gguf file as RUN is re-quantised by llama.cpp instead (e.g. the teacher at the "
                "student's weight type, for speed comparisons).")
    p.add_argument("run", metavar="RUN", help="a student or finished run folder (or a .gguf file to re-quantise)")
    p.add_argument("out", metavar="OUT.gguf", help="the GGUF file to write")
    p.add_argument("--outtype", choices=OUTTYPES, default="f32",
                   help="weight type of the matrices (1-D tensors, norms, decay/shift LoRAs stay f32)")
    p.add_argument("--force", action="store_true", help="overwrite an existing OUT")


def run(args) -> int:
    from pathlib import Path

    from radlads import gguf_export

    if Path(args.run).suffix.lower() == ".gguf" and Path(args.run).is_file():
        info = gguf_export.requantize_gguf(args.run, args.out, args.outtype, args.force)
    else:
        info = gguf_export.export_gguf(args.run, args.out, args.outtype, args.force)
    print(f"wrote {args.out}: {info['arch']}, {info['outtype']}, {info.get('tensors', '?')} tensors, "
          f"{info['file_bytes'] / 2**20:,.1f} MiB; tokenizer {info['tokenizer']}")
    return 0
