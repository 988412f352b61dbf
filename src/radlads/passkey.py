"""The passkey-retrieval test, accuracy per context length and key depth (`radlads passkey`).

The prompt (after Mohtashami & Jaggi, 2023) is a task line, then the filler sentence block
repeated to about the requested number of tokens, with "The pass key is NNNNN. Remember it.
NNNNN is the pass key." inserted at the requested relative depth (0 = right after the task line,
1 = right before the question), ending with "What is the pass key? The pass key is". The model
decodes a few tokens greedily; a trial is correct when the first number it writes is the key.
Keys are random 5-digit numbers drawn from --seed, so runs repeat exactly.

A teacher is not run on lengths beyond its max_position_embeddings (noted, not an error).
"""

from __future__ import annotations

import random
import re
import sys

import torch

from radlads.cpu_matmul import with_onednn_matmul
from radlads.scoring import context_limit, skip_reason

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
        "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"


def prompt_text(key: int, before: int, after: int) -> str:
    parts = [TASK] + [FILLER] * before + [KEY_LINE.format(key=key)] + [FILLER] * after + [QUESTION]
    return " ".join(parts)


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


def filler_repeats(tokenizer, length: int) -> int:
    """How many filler blocks bring the prompt to about `length` tokens (never fewer than 0)."""
    fixed = _n_tokens(tokenizer, prompt_text(10000, 0, 0))
    unit = max(1, _n_tokens(tokenizer, prompt_text(10000, 8, 0)) - fixed) / 8
    n = max(0, round((length - fixed) / unit))
    # Tokens at the block joins can merge differently; one correction from the real count suffices.
    actual = _n_tokens(tokenizer, prompt_text(10000, n, 0))
    return max(0, n + round((length - actual) / unit))


def build_prompt(key: int, repeats: int, depth: float) -> str:
    before = round(depth * repeats)
    return prompt_text(key, before, repeats - before)


@torch.no_grad()
def answer(model, tokenizer, input_ids: torch.Tensor, max_new_tokens: int) -> str:
    """The model's greedy continuation of the prompt, as text."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=pad)
    return tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)


def is_correct(key: int, reply: str) -> bool:
    m = re.search(r"\d+", reply)
    return m is not None and m.group(0) == str(key)


def run_passkey(model, tokenizer, lengths: list[int], depths: list[float], trials: int = 1, seed: int = 0,
                max_new_tokens: int = 8, progress=None) -> dict:
    """Accuracy for every (length, depth) cell; raw replies kept for inspection."""
    limit = context_limit(model)
    rng = random.Random(seed)
    cells = []
    for length in lengths:
        repeats = filler_repeats(tokenizer, length)
        for depth in depths:
            keys = [rng.randint(10000, 99999) for _ in range(trials)]  # drawn even when skipped: stable keys
            reason = skip_reason(limit, length)
            cell = {"length": length, "depth": depth, "tokens": None, "accuracy": None, "skipped": reason, "trials": []}
            if reason is None:
                for key in keys:
                    ids = tokenizer(build_prompt(key, repeats, depth), return_tensors="pt")["input_ids"]
                    reply = answer(model, tokenizer, ids, max_new_tokens)
                    cell["tokens"] = int(ids.shape[1])
                    cell["trials"].append({"key": key, "reply": reply, "correct": is_correct(key, reply)})
                cell["accuracy"] = sum(t["correct"] for t in cell["trials"]) / trials
            if progress:
                progress(cell)
            cells.append(cell)
    measured = [c for c in cells if c["accuracy"] is not None]
    overall = sum(c["accuracy"] for c in measured) / len(measured) if measured else None
    return {"lengths": lengths, "depths": depths, "trials": trials, "seed": seed, "cells": cells, "accuracy": overall}


def markdown_table(result: dict) -> str:
    depths = result["depths"]
    lines = ["| length (tokens) | " + " | ".join(f"depth {d:g}" for d in depths) + " | mean |",
             "|---" * (len(depths) + 2) + "|"]
    for length in result["lengths"]:
        row = [c for c in result["cells"] if c["length"] == length]
        accs = [c["accuracy"] for c in row if c["accuracy"] is not None]
        tokens = next((c["tokens"] for c in row if c["tokens"]), None)
        label = f"{length} (~{tokens})" if tokens and tokens != length else str(length)
        cells = [f"{c['accuracy']:.2f}" if c["accuracy"] is not None else "skipped" for c in row]
        mean = f"{sum(accs) / len(accs):.2f}" if accs else "–"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


@with_onednn_matmul  # fp32 Linear layers 2-4x faster where MKL runs AVX2 code (cpu_matmul.py)
def passkey_test(spec: str, lengths: list[int], depths: list[float], trials: int = 1, seed: int = 0,
                 max_new_tokens: int = 8, dtype: str = "fp32") -> dict:
    """Load a model and run every cell, saying each cell's accuracy on stderr as it finishes."""
    from radlads.dtypes import torch_dtype
    from radlads.loading import load_model, model_label

    model, tokenizer = load_model(spec, torch_dtype(dtype), quiet=True)
    label = model_label(spec)

    def progress(cell):
        if cell["skipped"]:
            print(f"note: {label} skipped at length {cell['length']}: {cell['skipped']}", file=sys.stderr)
        else:
            print(f"length {cell['length']} depth {cell['depth']:g}: {cell['accuracy']:.2f}", file=sys.stderr, flush=True)

    result = run_passkey(model, tokenizer, lengths, depths, trials, seed, max_new_tokens, progress)
    return {"model": label, "spec": spec, "dtype": dtype, **result}
