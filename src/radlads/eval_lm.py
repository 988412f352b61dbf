"""Any loaded causal LM (teacher or student) as an lm-eval model: `RadladsLM`.

`RadladsLM` is an `lm_eval.api.model.TemplateLM`, so context/continuation encoding is lm-eval's own
`_encode_pair`, and it tokenizes as lm-eval's HFLM does by default (the tokenizer's own special
tokens, BOS/EOS as the prefix of an empty context, rolling windows of the model's context for a
teacher). What differs is only how the model runs: a student is recurrent, so it has no context
limit and reads a long input in one pass, chunk by chunk through its state; batches are padded
on the right, which a causal model never sees; and the choices of one question read a long shared
context once (then continue from copies of its cache), which changes log-probs only at float
rounding level (~1e-5).
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections import defaultdict

import torch
from lm_eval.api.model import TemplateLM

from radlads.scoring import DEFAULT_CHUNK, context_limit, forward_cached, is_recurrent, target_logprobs

# Choices read a shared context once only when it is this long: for short contexts (hellaswag's
# ActivityNet items, piqa, arc: ~15-40 tokens) the extra, smaller forwards cost more than the tokens
# saved (measured 2x slower on those items with SmolLM2-135M on CPU); hellaswag's WikiHow items
# (contexts of 49-80 tokens, p10-p90) ran 22% (teacher) and 30% (RWKV7 student) faster shared.
SHARE_CONTEXT_FROM = 48
# Contexts whose continuations are all one token (MMLU's " A".." D") need only the next-token
# distribution after the context: they run as padded batches of whole contexts, at most this many
# tokens (rows x longest row) per forward, and only each row's last position goes through the head.
# SmolLM2-135M, 1 thread, 96 MMLU prompts of ~66 tokens: 2.83 / 3.28 / 2.85 / 2.42 / 1.76 items/s
# at 1 / 4 / 8 / 16 / 32 rows per forward (load ~2.5-3 on 2 cores): a few rows, not many.
SINGLE_TOKEN_BATCH_TOKENS = 256


class RadladsLM(TemplateLM):
    """Any loaded causal LM (teacher or student) as an lm-eval model."""

    def __init__(self, model, tokenizer, batch_size: int = 8, chunk: int = DEFAULT_CHUNK, progress: bool = True):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.chunk = chunk
        self.progress = progress
        self.desc = "requests"  # progress-bar label, set per task by the caller
        self.recurrent = is_recurrent(model)
        self._takes_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._max_length = context_limit(model, tokenizer)  # None for a student
        self.share_context_from = SHARE_CONTEXT_FROM
        self.single_token_batch_tokens = SINGLE_TOKEN_BATCH_TOKENS

    # -- tokenization, as lm-eval's HFLM -----------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int | None:
        """Context limit in tokens; None for a student, which has none."""
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        bos_text = self.tokenizer.decode(self.prefix_token_id)
        if add_special_tokens is None and bos_text and string.startswith(bos_text):
            kw["add_special_tokens"] = False  # the text already carries its BOS
        return self.tokenizer.encode(string, **kw)

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "")).replace("/", "__")

    # -- scoring ------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        # Tokenizing takes no time worth a bar; ours (in _loglikelihood_tokens) shows the scoring.
        return super().loglikelihood(requests, disable_tqdm=True)

    def _progress(self, total: int):
        from tqdm import tqdm

        return tqdm(total=total, desc=self.desc, unit="req", disable=not self.progress, dynamic_ncols=True,
                    file=sys.stderr)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of continuation log-probs, continuation is greedy) per (key, context_enc, cont_enc)."""
        items = []
        for _, context_enc, continuation_enc in requests:
            tokens = list(context_enc) + list(continuation_enc)
            if self.max_length is not None:
                tokens = tokens[-(self.max_length + 1):]  # HFLM's left truncation for a teacher
            items.append((tokens, min(len(continuation_enc), len(tokens) - 1)))
        # An empty continuation has probability 1; nothing to run.
        results: list[tuple[float, bool] | None] = [(0.0, True) if n == 0 else None for _, n in items]
        # The choices of one question share their context: it is read once and its cache copied.
        by_context: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (tokens, n_cont) in enumerate(items):
            if results[i] is None:
                by_context[tuple(tokens[: len(tokens) - n_cont])].append(i)
        shared, singles, one_token = [], [], []
        for context, group in by_context.items():
            if all(items[i][1] == 1 for i in group):
                one_token.append((context, group))  # every choice is one token: one forward gives all
            elif len(group) > 1 and len(context) >= self.share_context_from:
                shared.append(group)
            else:
                singles += group
        # Longest first, as lm-eval: similar lengths share a batch (little padding), memory peaks early.
        singles.sort(key=lambda i: -len(items[i][0]))
        one_token.sort(key=lambda cg: -len(cg[0]))
        with self._progress(sum(map(len, shared)) + len(singles) + sum(len(g) for _, g in one_token)) as bar:
            pos = 0
            while pos < len(one_token):
                # Longest first: the first row sets the batch's width, so it bounds the rows.
                rows = max(1, min(self.batch_size, self.single_token_batch_tokens // len(one_token[pos][0])))
                batch = one_token[pos : pos + rows]
                logprobs = self._next_token_logprobs([list(c) for c, _ in batch])
                for lp, (_, group) in zip(logprobs, batch):
                    best = int(lp.argmax())
                    for i in group:
                        target = items[i][0][-1]
                        results[i] = (float(lp[target]), best == target)
                pos += len(batch)
                bar.update(sum(len(g) for _, g in batch))
            for group in shared:
                context = items[group[0]][0][: len(items[group[0]][0]) - items[group[0]][1]]
                conts = [items[i][0][len(context):] for i in group]
                for i, res in zip(group, self._score_shared_context(context, conts)):
                    results[i] = res
                bar.update(len(group))
            pos = 0
            while pos < len(singles):
                if len(items[singles[pos]][0]) > self.chunk:
                    batch = singles[pos : pos + 1]  # long inputs go alone, chunked through the cache
                    tokens, n_cont = items[batch[0]]
                    lp, greedy = target_logprobs(self.model, torch.tensor(tokens), len(tokens) - n_cont, self.chunk)
                    results[batch[0]] = (float(lp.double().sum()), bool(greedy.all()))
                else:
                    batch = singles[pos : pos + self.batch_size]
                    for i, res in zip(batch, self._score_batch([items[i] for i in batch])):
                        results[i] = res
                pos += len(batch)
                bar.update(len(batch))
        for (key, *_), res in zip(requests, results):
            if key is not None and key[0] is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return results

    @torch.no_grad()
    def _score_batch(self, batch: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        width = max(len(tokens) for tokens, _ in batch) - 1
        inputs = torch.zeros(len(batch), width, dtype=torch.long)  # right padding: a causal model never sees it
        for row, (tokens, _) in enumerate(batch):
            inputs[row, : len(tokens) - 1] = torch.tensor(tokens[:-1])
        # Only positions that predict a continuation token need the vocabulary projection.
        keep = width - min(len(tokens) - 1 - n_cont for tokens, n_cont in batch)
        kwargs = {"logits_to_keep": keep} if self._takes_logits_to_keep else {}
        logits = self.model(input_ids=inputs, use_cache=False, **kwargs).logits
        offset = width - logits.shape[1]  # padded position p is logits column p - offset
        out = []
        for row, (tokens, n_cont) in enumerate(batch):
            end = len(tokens) - 1 - offset
            lp = torch.log_softmax(logits[row, end - n_cont : end].float(), dim=-1)
            target = torch.tensor(tokens[-n_cont:])
            out.append((float(lp.gather(-1, target[:, None]).double().sum()), bool((lp.argmax(-1) == target).all())))
        return out

    @torch.no_grad()
    def _next_token_logprobs(self, contexts: list[list[int]]) -> torch.Tensor:
        """log p(next token | context) for each context (rows x vocab), from one padded forward.

        Rows are padded on the right, after their real tokens, so neither a causal teacher nor a
        recurrent student sees a pad before a real token (a student's state would). Only each row's
        last real position goes through the LM head: a pre-hook on the output embeddings hands it
        those hidden states instead of every position's (the head is ~20% of a small teacher's work).
        """
        width = max(map(len, contexts))
        inputs = torch.zeros(len(contexts), width, dtype=torch.long)
        for row, context in enumerate(contexts):
            inputs[row, : len(context)] = torch.tensor(context)
        rows = torch.arange(len(contexts))
        last = torch.tensor([len(c) - 1 for c in contexts])

        def last_positions(_module, args):
            hidden = args[0]  # (rows, positions, hidden): all positions, or the last few if sliced
            return (hidden[rows, last - (width - hidden.shape[1])].unsqueeze(1), *args[1:])

        handle = self.model.get_output_embeddings().register_forward_pre_hook(last_positions)
        try:
            logits = self.model(input_ids=inputs, use_cache=False).logits
        finally:
            handle.remove()
        return torch.log_softmax(logits[:, -1].float(), dim=-1)

    @torch.no_grad()
    def _score_shared_context(self, context: list[int], conts: list[list[int]]) -> list[tuple[float, bool]]:
        """Score several continuations of one context: the context runs once, then the continuations
        run as a batch from copies of its cache (recurrent state or KV cache)."""
        logits, cache = forward_cached(self.model, torch.tensor([context]), None, keep=1)
        first = torch.log_softmax(logits[0, -1].float(), dim=-1)  # predicts each continuation's first token
        out = []
        for start in range(0, len(conts), self.batch_size):
            sub = conts[start : start + self.batch_size]
            width = max(len(c) for c in sub) - 1
            if width > 0:
                branch = copy.deepcopy(cache)
                branch.reorder_cache(torch.zeros(len(sub), dtype=torch.long))  # batch 1 -> len(sub) copies
                inputs = torch.zeros(len(sub), width, dtype=torch.long)  # right padding, never seen
                for row, c in enumerate(sub):
                    inputs[row, : len(c) - 1] = torch.tensor(c[:-1])
                rest, _ = forward_cached(self.model, inputs, branch, keep=width)
            for row, c in enumerate(sub):
                logprob, greedy = float(first[c[0]]), bool(first.argmax() == c[0])
                if len(c) > 1:
                    lp = torch.log_softmax(rest[row, : len(c) - 1].float(), dim=-1)
                    target = torch.tensor(c[1:])
                    logprob += float(lp.gather(-1, target[:, None]).double().sum())
                    greedy = greedy and bool((lp.argmax(-1) == target).all())
                out.append((logprob, greedy))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """lm-eval's rolling windows; a student's single window spans the whole document."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows, owner = [], []
        for n, req in enumerate(requests):
            tokens = self.tok_encode(req.args[0])
            max_len = self.max_length if self.max_length is not None else len(tokens) + 1
            for context, target in map(
                make_disjoint_window,
                get_rolling_token_windows(tokens, prefix_token=self.prefix_token_id, max_seq_len=max_len, context_len=1),
            ):
                windows.append((None, context, target))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows)):
            totals[n] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy generation, for hub tasks that generate; cut at the first stop string."""
        outputs = []
        with self._progress(len(requests)) as bar:
            for req in requests:
                context, gen_kwargs = req.args
                gen_kwargs = dict(gen_kwargs or {})
                until = gen_kwargs.pop("until", None) or [self.tok_decode([self.eot_token_id])]
                until = [until] if isinstance(until, str) else list(until)
                max_new = int(gen_kwargs.pop("max_gen_toks", 256))
                ids = torch.tensor([self.tok_encode(context)])
                gen = self.model.generate(ids, max_new_tokens=max_new, do_sample=False,
                                          pad_token_id=self.eot_token_id if self.tokenizer.pad_token_id is None
                                          else self.tokenizer.pad_token_id)
                text = self.tok_decode(gen[0, ids.shape[1]:].tolist())
                for stop in until:
                    if stop:
                        text = text.split(stop)[0]
                outputs.append(text)
                self.cache_hook.add_partial("generate_until", req.args, text)
                bar.update(1)
        return outputs
