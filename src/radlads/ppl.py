"""Token- and byte-level perplexity of students and teachers on held-out text (`radlads ppl`).

Token perplexity depends on the tokenizer, so models with different vocabularies are compared by
bytes: total NLL over the UTF-8 bytes of the scored text (byte perplexity, bits per byte). Every
model scores exactly the same text for that reason: documents are read once and, when
--max-tokens cuts them, the cut is made in characters (measured with the first model's tokenizer)
and then applied to every model.

A teacher sees each document through a sliding window (the window's first tokens only give
context; only targets not scored by an earlier window count). A student is a recurrent model and
reads each document in one pass, fed chunk by chunk through its recurrent cache.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from radlads.cpu_matmul import with_onednn_matmul
from radlads.errors import RadladsError
from radlads.scoring import DEFAULT_CHUNK, context_limit, is_recurrent, target_logprobs

# --------------------------------------------------------------------------------------------
# Scoring a sequence
# --------------------------------------------------------------------------------------------


def sliding_windows(n: int, window: int, stride: int):
    """(begin, end, first_target) per window over a sequence of n tokens (index 0 is a prefix).

    Window tokens are [begin, end); targets [first_target, end) are scored in it, each target
    exactly once overall, so every target past the first window keeps >= window - stride tokens of
    context.
    """
    if window < 2 or not 1 <= stride <= window - 1:
        raise RadladsError(f"need window >= 2 and 1 <= stride < window, got window={window} stride={stride}")
    begin, scored_to = 0, 1
    while True:
        end = min(begin + window, n)
        yield begin, end, scored_to
        scored_to = end
        if end == n:
            return
        begin += stride


def sequence_nll(model, token_ids: list[int], prefix_id: int, window: int | None, stride: int | None,
                 chunk: int = DEFAULT_CHUNK) -> float:
    """Summed NLL (nats) of all of token_ids, conditioned on a one-token prefix."""
    seq = torch.tensor([prefix_id] + list(token_ids), dtype=torch.long)
    if window is None:  # recurrent: one pass
        lp, _ = target_logprobs(model, seq, 1, chunk)
        return -float(lp.double().sum())
    total = 0.0
    for begin, end, first in sliding_windows(len(seq), window, stride):
        lp, _ = target_logprobs(model, seq[begin:end], first - begin, chunk)
        total -= float(lp.double().sum())
    return total


# --------------------------------------------------------------------------------------------
# Cutting the held-out text to a token budget
# --------------------------------------------------------------------------------------------


def _char_cut(tokenizer, text: str, n_tokens: int) -> str:
    """The prefix of `text` covered by its first n_tokens tokens."""
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return text[: offsets[n_tokens - 1][1]]
    ids = tokenizer.encode(text, add_special_tokens=False)[:n_tokens]
    return text[: len(tokenizer.decode(ids))]


def budget_documents(docs: list[str], tokenizer, max_tokens: int | None) -> list[str]:
    """Leading documents holding at most max_tokens tokens of `tokenizer`, the last one cut."""
    if max_tokens is None:
        return docs
    kept, used = [], 0
    for doc in docs:
        n = len(tokenizer.encode(doc, add_special_tokens=False))
        if used + n <= max_tokens:
            kept.append(doc)
            used += n
        else:
            cut = _char_cut(tokenizer, doc, max_tokens - used) if max_tokens > used else ""
            if cut:
                kept.append(cut)
            break
        if used == max_tokens:
            break
    return kept


# --------------------------------------------------------------------------------------------
# Per-model measurement
# --------------------------------------------------------------------------------------------


@dataclass
class PplResult:
    model: str
    mode: str
    documents: int
    tokens: int
    bytes: int
    nll: float
    token_perplexity: float
    byte_perplexity: float
    bits_per_byte: float
    seconds: float
    tokens_per_second: float
    window: int | None = None
    stride: int | None = None


def prefix_token_id(tokenizer) -> int:
    # As lm-eval: BOS if the tokenizer has one, else EOS, so the first token is scored too.
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise RadladsError("tokenizer has neither a BOS nor an EOS token to condition the first token on")
    return tid


def measure(model, tokenizer, docs: list[str], label: str, window: int | None = None, stride: int | None = None,
            chunk: int = DEFAULT_CHUNK, progress: bool = True) -> PplResult:
    from tqdm import tqdm

    recurrent = is_recurrent(model)
    if recurrent:
        window = stride = None
    else:
        limit = context_limit(model, tokenizer)
        window = window or min(limit, 2048)
        stride = stride or max(1, window // 2)
        if window > limit:
            raise RadladsError(f"--window {window} exceeds {label}'s context of {limit} tokens")
    prefix = prefix_token_id(tokenizer)
    start = time.perf_counter()
    nll, tokens, n_bytes = 0.0, 0, 0
    bar = tqdm(total=sum(len(d.encode("utf-8")) for d in docs), unit="B", unit_scale=True, desc=label,
               disable=not progress, dynamic_ncols=True)
    for doc in docs:
        ids = tokenizer.encode(doc, add_special_tokens=False)
        if ids:
            nll += sequence_nll(model, ids, prefix, window, stride, chunk)
            tokens += len(ids)
            n_bytes += len(doc.encode("utf-8"))
        bar.update(len(doc.encode("utf-8")))
        bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - start, 1e-9):.0f}")
    bar.close()
    seconds = time.perf_counter() - start
    if tokens == 0:
        raise RadladsError("the text tokenizes to no tokens")
    return PplResult(
        model=label,
        mode="recurrent" if recurrent else "sliding window",
        documents=len(docs),
        tokens=tokens,
        bytes=n_bytes,
        nll=nll,
        token_perplexity=math.exp(nll / tokens),
        byte_perplexity=math.exp(nll / n_bytes),
        bits_per_byte=nll / n_bytes / math.log(2),
        seconds=seconds,
        tokens_per_second=tokens / seconds if seconds > 0 else float("inf"),
        window=window,
        stride=stride,
    )


# --------------------------------------------------------------------------------------------
# Several models on the same text
# --------------------------------------------------------------------------------------------


@with_onednn_matmul  # fp32 Linear layers 2-4x faster where MKL runs AVX2 code (cpu_matmul.py)
def compare(specs: list[str], data: str, max_tokens: int | None = None, window: int | None = None,
            stride: int | None = None, dtype: str = "fp32", text_field: str = "text") -> dict:
    """Every model on the same documents of `data`: {"data", "max_tokens", "dtype", "models": {label: ...}}.

    With max_tokens, the documents are cut once, with the first model's tokenizer.
    """
    from radlads.data import read_texts
    from radlads.dtypes import torch_dtype
    from radlads.loading import load_model, model_label

    docs = [d for d in read_texts(data, text_field) if d.strip()]  # the documents training would read
    if not docs:
        raise RadladsError(f"{data} holds no text")
    models: dict[str, dict] = {}
    for spec in specs:
        model, tokenizer = load_model(spec, torch_dtype(dtype))
        if not models:
            docs = budget_documents(docs, tokenizer, max_tokens)
        label = model_label(spec)
        label = label if label not in models else f"{label} ({len(models) + 1})"
        models[label] = dict(asdict(measure(model, tokenizer, docs, label, window, stride)), spec=spec)
        del model
    return {"data": str(data), "max_tokens": max_tokens, "dtype": dtype, "models": models}


def format_table(models: dict[str, dict]) -> str:
    """Markdown, one column per model, from `compare(...)["models"]`."""
    results = list(models.values())

    def row(name, cells):
        return "| " + " | ".join([name, *cells]) + " |"

    lines = [row("metric", [r["model"] for r in results]), row("---", ["---:" for _ in results])]
    lines.append(row("token perplexity", [f"{r['token_perplexity']:.3f}" for r in results]))
    lines.append(row("byte perplexity", [f"{r['byte_perplexity']:.4f}" for r in results]))
    lines.append(row("bits per byte", [f"{r['bits_per_byte']:.4f}" for r in results]))
    lines.append(row("tokens", [str(r["tokens"]) for r in results]))
    lines.append(row("bytes", [str(r["bytes"]) for r in results]))
    lines.append(row("documents", [str(r["documents"]) for r in results]))
    lines.append(row("mode", [r["mode"] if r["window"] is None else f"window {r['window']}, stride {r['stride']}"
                              for r in results]))
    lines.append(row("tokens/s", [f"{r['tokens_per_second']:.0f}" for r in results]))
    return "\n".join(lines)
