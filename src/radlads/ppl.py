"""`radlads ppl`: token- and byte-level perplexity of students and teachers on held-out text.

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

import argparse
import gzip
import inspect
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from radlads.errors import RadladsError

DEFAULT_CHUNK = 512  # tokens per forward through a cache: bounds the logits' memory (chunk x vocab)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------------------------
# Scoring primitive shared with radlads.evaluate
# --------------------------------------------------------------------------------------------


def is_recurrent(model) -> bool:
    return getattr(model.config, "model_type", None) == "radlads"


def _forward_params(model) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def forward_logits(model, input_ids: torch.Tensor, cache, keep: int):
    """Logits of the last `keep` positions, and the updated cache.

    cache=False: one plain forward, no cache kept. cache=None: start a cache (a student's recurrent
    state, a teacher's KV cache). Otherwise continue from the given cache.
    """
    params = _forward_params(model)
    kwargs = {}
    if "logits_to_keep" in params:
        # Only the scored positions need the vocabulary projection, often a large share of the work.
        kwargs["logits_to_keep"] = keep
    if cache is False:  # a single forward: no cache at all
        out = model(input_ids=input_ids, use_cache=False, **kwargs)
        return out.logits[:, -keep:], None
    # Students and transformers >= 5 call the state `cache`; older transformers `past_key_values`.
    cache_arg = "cache" if "cache" in params else "past_key_values"
    out = model(input_ids=input_ids, use_cache=True, **{cache_arg: cache}, **kwargs)
    new_cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
    return out.logits[:, -keep:], new_cache


@torch.no_grad()
def target_logprobs(model, ids: torch.Tensor, start: int, chunk: int = DEFAULT_CHUNK):
    """log p(ids[t] | ids[:t]) and whether ids[t] was the argmax, for t in [start, len(ids)).

    Sequences longer than `chunk` run through the model's cache chunk by chunk (the recurrent
    state for a student, the KV cache for a teacher), which is the same computation as one pass
    but holds only one chunk of logits at a time.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    n = ids.numel()
    if not 1 <= start < n:
        raise ValueError(f"start must be in [1, {n}), got {start}")
    inputs = ids[:-1]  # position p predicts ids[p + 1]
    single = n - 1 <= chunk
    cache = False if single else None
    logprobs, greedy = [], []
    for c0 in range(0, n - 1, chunk):
        c1 = min(c0 + chunk, n - 1)
        first = max(c0, start - 1)  # first position in this chunk whose prediction is scored
        keep = c1 - first
        logits, cache = forward_logits(model, inputs[c0:c1].unsqueeze(0), cache, max(keep, 1))
        if keep <= 0:
            continue  # this chunk only feeds the cache
        lp = torch.log_softmax(logits[0, -keep:].float(), dim=-1)
        targets = ids[first + 1 : c1 + 1]
        logprobs.append(lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1))
        greedy.append(lp.argmax(-1) == targets)
    return torch.cat(logprobs), torch.cat(greedy)


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
# Reading the held-out text
# --------------------------------------------------------------------------------------------


def read_documents(spec: str) -> list[str]:
    """Documents of a .txt file (the whole file is one document) or .jsonl[.gz] (field `text`)."""
    path = Path(spec)
    if not path.is_file():
        raise RadladsError(f"--data file not found: {spec}")
    name = path.name.lower()
    opener = gzip.open if name.endswith(".gz") else open
    base = name[:-3] if name.endswith(".gz") else name
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            if base.endswith(".txt"):
                docs = [f.read()]
            elif base.endswith(".jsonl"):
                docs = []
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    record = json.loads(line)
                    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                        raise RadladsError(f"{spec} line {i} has no string field `text`")
                    docs.append(record["text"])
            else:
                raise RadladsError(f"--data must be a .txt or .jsonl(.gz) file, got {spec}")
    except (UnicodeDecodeError, json.JSONDecodeError, OSError, EOFError) as e:
        raise RadladsError(f"cannot read {spec}: {str(e).splitlines()[0]}") from e
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise RadladsError(f"{spec} holds no text")
    return docs


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


def context_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", None) or 2048)


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
        window = window or min(context_length(model), 2048)
        stride = stride or max(1, window // 2)
        if window > context_length(model):
            raise RadladsError(f"--window {window} exceeds {label}'s context of {context_length(model)} tokens")
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


def format_table(results: list[PplResult]) -> str:
    def row(name, cells):
        return "| " + " | ".join([name, *cells]) + " |"

    lines = [row("metric", [r.model for r in results]), row("---", ["---:" for _ in results])]
    lines.append(row("token perplexity", [f"{r.token_perplexity:.3f}" for r in results]))
    lines.append(row("byte perplexity", [f"{r.byte_perplexity:.4f}" for r in results]))
    lines.append(row("bits per byte", [f"{r.bits_per_byte:.4f}" for r in results]))
    lines.append(row("tokens", [str(r.tokens) for r in results]))
    lines.append(row("bytes", [str(r.bytes) for r in results]))
    lines.append(row("documents", [str(r.documents) for r in results]))
    lines.append(row("mode", [r.mode if r.window is None else f"window {r.window}, stride {r.stride}"
                              for r in results]))
    lines.append(row("tokens/s", [f"{r.tokens_per_second:.0f}" for r in results]))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL", help="student folder or teacher spec (folder, .gguf, preset, hub id)")
    p.add_argument("--data", required=True, metavar="SPEC", help="held-out text: .txt, or .jsonl(.gz) with a `text` field")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="score only the first N tokens of text (counted with the first model's tokenizer; "
                        "every model scores the same text)")
    p.add_argument("--window", type=int, default=None, metavar="W",
                   help="teachers' sliding window in tokens (default: min(context, 2048)); students read whole documents")
    p.add_argument("--stride", type=int, default=None, metavar="S", help="window step (default: W/2)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
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
    from radlads.loading import load_model, model_label

    _check_args(args)
    docs = read_documents(args.data)
    results: list[PplResult] = []
    labels: list[str] = []
    for spec in args.models:
        model, tokenizer = load_model(spec, DTYPES[args.dtype])
        if not results:
            docs = budget_documents(docs, tokenizer, args.max_tokens)
        label = model_label(spec)
        label = label if label not in labels else f"{label} ({len(labels) + 1})"
        labels.append(label)
        results.append(measure(model, tokenizer, docs, label, args.window, args.stride))
        del model
    print(format_table(results))
    if args.json:
        payload = {"data": str(args.data), "max_tokens": args.max_tokens, "dtype": args.dtype,
                   "models": {label: dict(asdict(r), spec=spec) for label, r, spec in zip(labels, results, args.models)}}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0
