"""What eval, ppl, bench, passkey and generate share about running a loaded model.

Any model here is a radlads student (recurrent: a fixed-size state, no context limit) or a
transformers teacher (a KV cache and a trained context length). Both take their cache as `cache`
(transformers >= 5; `past_key_values` before) and return it in their output.
"""

from __future__ import annotations

import functools
import inspect

import torch

DEFAULT_CHUNK = 512  # tokens per forward through a cache: bounds the logits' memory (chunk x vocab)
DEFAULT_CONTEXT = 2048  # a teacher whose config and tokenizer name no context length (lm-eval's default)
_TOKENIZER_NO_LIMIT = int(1e30)  # transformers' model_max_length when the tokenizer sets none


def is_recurrent(model) -> bool:
    """A radlads student: constant state per token, no context limit."""
    return getattr(model.config, "model_type", None) == "radlads"


def context_limit(model, tokenizer=None) -> int | None:
    """The longest context a model is meant for: None for a student (it has none).

    For a teacher, lm-eval's HFLM rule: the text config's n_positions, max_position_embeddings or
    n_ctx, else the tokenizer's model_max_length, else DEFAULT_CONTEXT.
    """
    if is_recurrent(model):
        return None
    config = getattr(model.config, "text_config", None) or model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit < _TOKENIZER_NO_LIMIT:
        return int(limit)
    return DEFAULT_CONTEXT


def skip_reason(limit: int | None, context: int, past_limit: bool = False) -> str | None:
    """Why a model with context `limit` is not run on `context` tokens (None: it is run)."""
    if limit is not None and context > limit and not past_limit:
        return f"context {context} > max_position_embeddings {limit}"
    return None


@functools.lru_cache(maxsize=None)
def _forward_params(model_class) -> frozenset[str]:
    """The forward's parameter names, looked up once per class (bench times single decode steps)."""
    return frozenset(inspect.signature(model_class.forward).parameters)


def forward_cached(model, input_ids: torch.Tensor, cache=None, keep: int = 1):
    """(logits of the last `keep` positions, the updated cache), for a student or a teacher.

    cache=None starts a cache (a student's recurrent state, a teacher's KV cache); another cache is
    continued; cache=False runs one plain forward and keeps no cache (returns None for it).
    """
    params = _forward_params(type(model))
    kwargs = {}
    if "logits_to_keep" in params:
        # Only the scored positions need the vocabulary projection, often a large share of the work.
        kwargs["logits_to_keep"] = keep
    if cache is False:
        out = model(input_ids=input_ids, use_cache=False, **kwargs)
        return out.logits[:, -keep:], None
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
    cache = False if n - 1 <= chunk else None
    logprobs, greedy = [], []
    for c0 in range(0, n - 1, chunk):
        c1 = min(c0 + chunk, n - 1)
        first = max(c0, start - 1)  # first position in this chunk whose prediction is scored
        keep = c1 - first
        logits, cache = forward_cached(model, inputs[c0:c1].unsqueeze(0), cache, max(keep, 1))
        if keep <= 0:
            continue  # this chunk only feeds the cache
        lp = torch.log_softmax(logits[0, -keep:].float(), dim=-1)
        targets = ids[first + 1 : c1 + 1]
        logprobs.append(lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1))
        greedy.append(lp.argmax(-1) == targets)
    return torch.cat(logprobs), torch.cat(greedy)
