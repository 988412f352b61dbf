"""`radlads eval`: lm-eval benchmarks for students and teachers, side by side, with RADLADS ratios.

Scoring is lm-eval's: `RadladsLM` is an `lm_eval.api.model.TemplateLM` (so context/continuation
encoding is lm-eval's own `_encode_pair`), and tasks are lm-eval's task configs, for our local
data files (radlads.eval_tasks) or, for any other lm-eval task name, straight from the hub.

`RadladsLM` tokenizes as lm-eval's HFLM does by default (the tokenizer's own special tokens,
BOS/EOS as the prefix of an empty context, rolling windows of the model's context for a
teacher). What differs is only how the model runs: a student is recurrent, so it has no context
limit and reads a long input in one pass, chunk by chunk through its state; batches are padded
on the right, which a causal model never sees; and the choices of one question read a long shared
context once (then continue from copies of its cache), which changes log-probs only at float
rounding level (~1e-5).

The RADLADS ratio of a student on a task is (student - chance) / (teacher - chance): how much of
the teacher's above-chance skill the conversion kept.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import inspect
import json
import logging
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import TemplateLM

from radlads.errors import RadladsError
from radlads.eval_shards import ItemRange, parse_items, pool_mean, resolve_range, tile
from radlads.ppl import DEFAULT_CHUNK, DTYPES, forward_logits, is_recurrent, target_logprobs

DEFAULT_TASKS = "lambada_openai,hellaswag,piqa,arc_easy,winogrande,wikitext"
# Metric whose ratio enters the average, per task (as in the RADLADS paper's tables).
PRIMARY_METRIC = {"hellaswag": "acc_norm", "piqa": "acc", "arc_easy": "acc", "winogrande": "acc",
                  "lambada_openai": "acc"}
ACCURACY_METRICS = ("acc", "acc_norm")
NEAR_CHANCE_STDERRS = 3.0
# Bootstrap resamples for stderrs that have no closed form (lambada perplexity); lm-eval's default
# of 100,000 takes minutes on a CPU and only refines an error bar. Means keep their exact stderr.
DEFAULT_BOOTSTRAP = 1000
# Choices read a shared context once only when it is this long: for short contexts (hellaswag's
# ActivityNet items, piqa, arc: ~15-40 tokens) the extra, smaller forwards cost more than the tokens
# saved (measured 2x slower on those items with SmolLM2-135M on CPU); hellaswag's WikiHow items
# (contexts of 49-80 tokens, p10-p90) ran 22% (teacher) and 30% (RWKV7 student) faster shared.
SHARE_CONTEXT_FROM = 48
FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed


# --------------------------------------------------------------------------------------------
# The lm-eval model adapter
# --------------------------------------------------------------------------------------------


def _context_length(model, tokenizer) -> int:
    """A teacher's context, by HFLM's rule (config, then tokenizer, then 2048)."""
    try:
        from lm_eval.models.utils import resolve_max_length
    except ImportError:  # older lm-eval: the rule's main case, inline
        return int(getattr(model.config, "max_position_embeddings", None) or 2048)
    return int(resolve_max_length(model.config, tokenizer, default=2048))


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
        self._max_length = None if self.recurrent else _context_length(model, tokenizer)
        self.share_context_from = SHARE_CONTEXT_FROM

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
        shared, singles = [], []
        for context, group in by_context.items():
            if len(group) > 1 and len(context) >= self.share_context_from:
                shared.append(group)
            else:
                singles += group
        # Longest first, as lm-eval: similar lengths share a batch (little padding), memory peaks early.
        singles.sort(key=lambda i: -len(items[i][0]))
        with self._progress(sum(map(len, shared)) + len(singles)) as bar:
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
    def _score_shared_context(self, context: list[int], conts: list[list[int]]) -> list[tuple[float, bool]]:
        """Score several continuations of one context: the context runs once, then the continuations
        run as a batch from copies of its cache (recurrent state or KV cache)."""
        logits, cache = forward_logits(self.model, torch.tensor([context]), None, keep=1)
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
                rest, _ = forward_logits(self.model, inputs, branch, keep=width)
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


# --------------------------------------------------------------------------------------------
# Running tasks
# --------------------------------------------------------------------------------------------


@dataclass
class TaskResult:
    task: str
    metrics: dict[str, dict[str, float | None]]  # metric -> {"value", "stderr"}
    n: int
    n_total: int
    version: Any
    chance: float | None  # None: no ratio (perplexity-only tasks)
    seconds: float
    source: str
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    items: ItemRange | None = None  # [start, end) of the task's documents
    parts: list[dict[str, Any]] = field(default_factory=list)  # shards joined into this result, if any

    @property
    def items_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")


def parse_tasks(text: str) -> list[str]:
    from radlads.eval_tasks import LOCAL_TASKS

    names = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names:
        raise RadladsError(f"--tasks is empty; local tasks: {', '.join(LOCAL_TASKS)}")
    hub = [n for n in names if n not in LOCAL_TASKS]
    if hub:
        known = set(_task_manager().all_tasks)
        unknown = [n for n in hub if n not in known]
        if unknown:
            raise RadladsError(f"unknown task {', '.join(unknown)}; local tasks: {', '.join(LOCAL_TASKS)} "
                               "(other lm-eval task names load from the Hugging Face hub)")
    return names


@functools.lru_cache(maxsize=1)
def _task_manager() -> Any:
    """lm-eval's index of its own task configs: built only when a hub task is asked for (takes seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _build_task(name: str, data_dir: Path | None):
    """{leaf task name: Task} for one requested name (a hub name may be a group of several)."""
    from radlads.eval_tasks import LOCAL_TASKS, build_task

    if name in LOCAL_TASKS:
        tasks = {name: build_task(name, data_dir)}
    else:
        try:
            tasks = dict(_task_manager().load([name])["tasks"])
        except Exception as e:  # noqa: BLE001 - datasets/hub raise many types (offline, gated, missing)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RadladsError(f"cannot load lm-eval task {name} from the Hugging Face hub: {first}") from e
    for task in tasks.values():
        # As lm-eval's simple_evaluate: zero-shot unless the task sets its own shots, seeded sampling.
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=FEWSHOT_SEED)
    return tasks


def _metrics(entry: dict) -> dict[str, dict[str, float | None]]:
    metrics: dict[str, dict[str, float | None]] = {}
    for key, value in entry.items():
        name, _, filt = key.partition(",")
        if not filt or "_stderr" in name or not isinstance(value, (int, float)):
            continue
        err = entry.get(f"{name}_stderr,{filt}")
        label = name if filt == "none" else f"{name} ({filt})"
        metrics[label] = {"value": float(value), "stderr": float(err) if isinstance(err, (int, float)) else None}
    return metrics


def _chance(task, samples: list[dict]) -> float | None:
    """Expected accuracy of guessing: mean 1/#choices for multiple choice, 0 for single continuations."""
    kind = task.OUTPUT_TYPE
    if kind == "multiple_choice" and samples:
        return sum(1.0 / len(s["arguments"]) for s in samples) / len(samples)
    if kind == "loglikelihood":
        return 0.0
    return None


def evaluate_task(lm: RadladsLM, name: str, task, items: ItemRange, bootstrap_iters: int,
                  source: str) -> TaskResult:
    from lm_eval.evaluator import evaluate

    n_docs = len(task.eval_docs)
    lm.desc = name if items == (0, n_docs) else f"{name} [{items[0]}:{items[1]}]"
    # A prefix goes through lm-eval's --limit (as lm_eval itself runs it); other ranges by index.
    if items[0] == 0:
        select = {"limit": items[1] if items[1] < n_docs else None}
    else:
        select = {"samples": {name: list(range(*items))}}
    start = time.perf_counter()
    # lm-eval prints bootstrap notes on stdout; stdout is reserved for our table.
    with contextlib.redirect_stdout(sys.stderr):
        out = evaluate(lm=lm, task_dict={name: task}, bootstrap_iters=bootstrap_iters,
                       log_samples=True, verbosity="WARNING", **select)
    seconds = time.perf_counter() - start
    entry = out["results"][name]
    counts = out.get("n-samples", {}).get(name, {})
    samples = out.get("samples", {}).get(name, [])
    return TaskResult(
        task=name,
        metrics=_metrics(entry),
        n=int(counts.get("effective", len(samples))),
        n_total=int(counts.get("original", len(samples))),
        version=out.get("versions", {}).get(name),
        chance=_chance(task, samples),
        seconds=seconds,
        source=source,
        higher_is_better=dict(out.get("higher_is_better", {}).get(name, {})),
        items=items,
    )


def join_shards(name: str, task, shards: list[TaskResult]) -> TaskResult:
    """One result from results on adjacent item ranges (see radlads.eval_shards for when it is exact)."""
    from lm_eval.api.metrics import mean

    aggregation = task.aggregation()
    first = shards[0]
    for s in shards[1:]:
        if (s.version, s.source, set(s.metrics)) != (first.version, first.source, set(first.metrics)):
            raise RadladsError(f"cannot join {name} shards: they differ in task version, data file or metrics")
    for s in shards:
        if s.n != s.items[1] - s.items[0]:
            raise RadladsError(f"cannot join {name} shards: items {s.items[0]}:{s.items[1]} scored {s.n} items")
    metrics = {}
    for label in first.metrics:
        if aggregation.get(label.split(" (")[0]) is not mean:
            raise RadladsError(f"cannot join {name} shards: {label} is not a mean of per-item values")
        value, err = pool_mean([(s.n, s.metrics[label]["value"], s.metrics[label]["stderr"]) for s in shards])
        metrics[label] = {"value": value, "stderr": err}
    n = sum(s.n for s in shards)
    chances = [s.chance for s in shards]
    return TaskResult(
        task=name, metrics=metrics, n=n, n_total=first.n_total, version=first.version,
        chance=None if None in chances else sum(s.n * s.chance for s in shards) / n,
        seconds=sum(s.seconds for s in shards), source=first.source, higher_is_better=first.higher_is_better,
        items=(shards[0].items[0], shards[-1].items[1]),
        parts=[p for s in shards for p in (s.parts or [{"items": list(s.items)}])],
    )


# --------------------------------------------------------------------------------------------
# RADLADS ratios
# --------------------------------------------------------------------------------------------


def ratio(student: float, teacher: float, chance: float) -> float | None:
    """(student - chance) / (teacher - chance); None when the teacher is at chance."""
    if teacher == chance:
        return None
    return (student - chance) / (teacher - chance)


def near_chance(teacher: dict[str, float | None], chance: float, stderrs: float = NEAR_CHANCE_STDERRS) -> bool:
    """The teacher's accuracy is within `stderrs` standard errors of chance (a task too hard to compare on)."""
    err = teacher.get("stderr") or 0.0
    return teacher["value"] - chance <= stderrs * err


def primary_metric(task: str, metrics: dict) -> str | None:
    if task in PRIMARY_METRIC and PRIMARY_METRIC[task] in metrics:
        return PRIMARY_METRIC[task]
    return next((m for m in ("acc_norm", "acc") if m in metrics), None)


def compute_ratios(student: dict[str, TaskResult], teacher: dict[str, TaskResult]) -> dict[str, Any]:
    """Per task/accuracy-metric ratios and their average over non-LAMBADA tasks' primary metrics.

    A task on which the teacher is near chance keeps its ratio but is left out of the average.
    """
    per_task: dict[str, dict[str, float | None]] = {}
    averaged, excluded = {}, []
    for name, t in teacher.items():
        s = student.get(name)
        if s is None or t.chance is None:
            continue
        per_task[name] = {}
        for metric in ACCURACY_METRICS:
            if metric in t.metrics and metric in s.metrics:
                per_task[name][metric] = ratio(s.metrics[metric]["value"], t.metrics[metric]["value"], t.chance)
        main = primary_metric(name, t.metrics)
        if main is None or main not in per_task[name] or name.startswith("lambada"):
            continue
        if near_chance(t.metrics[main], t.chance) or per_task[name][main] is None:
            excluded.append(name)
        else:
            averaged[name] = per_task[name][main]
    average = sum(averaged.values()) / len(averaged) if averaged else None
    return {"per_task": per_task, "average": average, "averaged_tasks": averaged, "excluded_near_chance": excluded}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt(m: dict[str, float | None] | None) -> str:
    if m is None:
        return "—"
    v, err = m["value"], m["stderr"]
    digits = 2 if abs(v) >= 100 else 4
    text = f"{v:.{digits}f}"
    return text + (f" ± {err:.{digits}f}" if err is not None and math.isfinite(err) else "")


def _items_note(task: str, r: TaskResult) -> str:
    text = f"{task} {r.n}/{r.n_total}"
    if r.items is not None and r.items[0] > 0:
        text += f" (items {r.items[0]}:{r.items[1]})"
    if len(r.parts) > 1:
        text += f" (joined from {len(r.parts)} shards)"
    return text


def format_table(results: dict[str, dict[str, TaskResult]], teacher: str | None,
                 ratios: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per task/metric, one column per model, then a ratio column per student."""
    labels = list(results)
    students = [m for m in labels if m != teacher] if teacher else []
    header = ["task", "metric", *labels]
    if teacher:
        header += ["chance"] + [f"ratio {s}" for s in students]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    tasks = list(dict.fromkeys(t for m in labels for t in results[m]))
    excluded_any = set()
    for task in tasks:
        metric_names = list(dict.fromkeys(k for m in labels if task in results[m] for k in results[m][task].metrics))
        for metric in metric_names:
            row = [task, metric]
            row += [_fmt(results[m][task].metrics.get(metric)) if task in results[m] else "—" for m in labels]
            if teacher:
                t = results[teacher].get(task)
                is_acc = t is not None and t.chance is not None and metric in ACCURACY_METRICS
                row.append(f"{t.chance:.4f}" if is_acc else "")
                for s in students:
                    r = ratios.get(s, {}).get("per_task", {}).get(task, {}).get(metric) if is_acc else None
                    cell = "—" if r is None else f"{r:.3f}"
                    if r is not None and task in ratios[s]["excluded_near_chance"] and \
                            metric == primary_metric(task, t.metrics):
                        cell += " ¹"
                        excluded_any.add(task)
                    row.append(cell)
            lines.append("| " + " | ".join(row) + " |")
    if teacher and students:
        row = ["**average**", "non-LAMBADA acc", *[""] * len(labels), ""]
        for s in students:
            avg = ratios[s]["average"]
            row.append("—" if avg is None else f"**{avg:.3f}**")
        lines.append("| " + " | ".join(row) + " |")
    notes = []
    if teacher:
        notes.append(f"Ratio = (student − chance) / (teacher − chance), teacher = {teacher}. The average uses "
                     + ", ".join(f"{t} {m}" for t, m in PRIMARY_METRIC.items() if t != "lambada_openai")
                     + " (acc_norm, else acc, for other tasks); LAMBADA and perplexities have no ratio in it.")
    if excluded_any:
        notes.append(f"¹ Teacher within {NEAR_CHANCE_STDERRS:g} standard errors of chance on "
                     f"{', '.join(sorted(excluded_any))}: shown, but left out of the average.")
    first = results[labels[0]] if labels else {}
    if first:
        notes.append("Items per task: " + ", ".join(_items_note(t, r) for t, r in first.items()) + ".")
    return "\n".join(lines + [""] + notes) if notes else "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="student folder or teacher spec (folder, .gguf, preset, hub id)")
    p.add_argument("--tasks", default=DEFAULT_TASKS,
                   help=f"comma-separated; local: {DEFAULT_TASKS}; any other lm-eval task loads from the hub")
    p.add_argument("--eval-data", default=None, metavar="DIR",
                   help="folder with the local benchmark files (default: ../shared/data/eval from the "
                        "current directory, else from the repository root)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N items of each task")
    p.add_argument("--items", default=None, metavar="START:END",
                   help="only items START..END-1 of each task (END may be left out: to the end); with "
                        "--reuse, results on adjacent ranges are joined (accuracies only)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B")
    p.add_argument("--teacher", default=None, metavar="SPEC",
                   help="also evaluate this teacher and report each model's RADLADS ratio against it")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--bootstrap-iters", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                   help="lm-eval bootstrap resamples for stderrs without a closed form (perplexity)")
    p.add_argument("--json", default=None, metavar="FILE", help="write all raw results here")
    p.add_argument("--reuse", action="append", default=[], metavar="FILE",
                   help="an earlier --json file: a task a model already scored there with the same --dtype on "
                        "the same items, or on adjacent --items shards that together cover them, is not "
                        "run again (repeatable)")


def _check_args(args) -> None:
    if args.limit is not None and args.limit < 1:
        raise RadladsError(f"--limit must be >= 1, got {args.limit}")
    if args.limit is not None and args.items is not None:
        raise RadladsError("--limit and --items both choose items; give one (--limit N is --items 0:N)")
    if args.batch_size < 1:
        raise RadladsError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.bootstrap_iters < 1:
        raise RadladsError(f"--bootstrap-iters must be >= 1, got {args.bootstrap_iters}")


def _resolve_data_dir(arg: str | None, tasks: list[str]) -> Path | None:
    from radlads.eval_tasks import LOCAL_TASKS, default_eval_data_dir

    if not any(t in LOCAL_TASKS for t in tasks):
        return None
    if arg is None:
        return default_eval_data_dir()
    path = Path(arg)
    if not path.is_dir():
        raise RadladsError(f"--eval-data folder not found: {arg}")
    return path


def load_reusable(paths: list[str], dtype: str) -> dict[str, dict[str, list[tuple[ItemRange, TaskResult]]]]:
    """spec -> task -> [(item range, result)], from earlier --json files scored with the same dtype.

    Evaluating a teacher on CPU takes most of an hour; comparing a new student with it should not
    repeat that. Results in another dtype would not be comparable, so they are ignored; which
    items a result covers is matched per task by the caller.
    """
    reusable: dict[str, dict[str, list[tuple[ItemRange, TaskResult]]]] = {}
    for path in paths:
        try:
            payload = json.loads(Path(path).read_text())
            if payload.get("dtype") != dtype:
                print(f"radlads eval: not reusing {path}: it was scored with --dtype {payload.get('dtype')}",
                      file=sys.stderr)
                continue
            for info in payload["models"].values():
                tasks = reusable.setdefault(info["spec"], {})
                for name, r in info["tasks"].items():
                    items = r.get("items")
                    if items is None:  # written before --items existed: the first `limit` items
                        items = [0, r["n_total"] if r["limit"] is None else min(r["limit"], r["n_total"])]
                    result = TaskResult(task=name, metrics=r["metrics"], n=r["n"], n_total=r["n_total"],
                                        version=r["version"], chance=r["chance"], seconds=r["seconds"],
                                        source=r["source"], higher_is_better=r.get("higher_is_better", {}),
                                        items=(int(items[0]), int(items[1])),
                                        parts=r.get("parts") or [{"items": list(items), "file": str(path)}])
                    tasks.setdefault(name, []).append((result.items, result))
        except FileNotFoundError:
            raise RadladsError(f"--reuse {path}: file not found") from None
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            raise RadladsError(f"--reuse {path}: not a radlads eval --json file ({type(e).__name__}: {e})") from None
    return reusable


def reuse_result(label: str, name: str, task, want: ItemRange,
                 pieces: list[tuple[ItemRange, TaskResult]]) -> TaskResult | None:
    """An earlier result on exactly the items `want`, or one joined from shards that tile them."""
    chosen = tile(pieces, want)
    if chosen is None:
        return None
    if len(chosen) == 1:
        print(f"{label} {name}: reused", file=sys.stderr)
        return chosen[0]
    try:
        joined = join_shards(name, task, chosen)
    except RadladsError as e:
        print(f"{label} {name}: not reused: {e}", file=sys.stderr)
        return None
    spans = ", ".join(f"{a}:{b}" for a, b in (s.items for s in chosen))
    print(f"{label} {name}: reused, joined from {len(chosen)} shards ({spans})", file=sys.stderr)
    return joined


def _quiet_libraries() -> None:
    import datasets

    datasets.disable_progress_bars()
    for name in ("lm_eval", "lm-eval", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run(args) -> int:
    import lm_eval

    from radlads import __version__
    from radlads.eval_tasks import LOCAL_TASKS
    from radlads.loading import load_model, model_label

    _check_args(args)
    _quiet_libraries()
    tasks = parse_tasks(args.tasks)
    data_dir = _resolve_data_dir(args.eval_data, tasks)
    # Tasks are built once, before any model: a missing file or an unreachable hub fails in seconds,
    # and every model is scored on the same documents (lm-eval rebuilds requests per evaluation).
    built: dict[str, tuple[Any, str]] = {}
    for name in tasks:
        source = f"local:{data_dir / LOCAL_TASKS[name].data_file}" if name in LOCAL_TASKS else "lm-eval hub"
        for leaf, task in _build_task(name, data_dir).items():
            built[leaf] = (task, source)

    specs = list(args.models) + ([args.teacher] if args.teacher else [])
    labels: list[str] = []
    for spec in specs:
        label = model_label(spec)
        labels.append(label if label not in labels else f"{label} ({len(labels) + 1})")
    teacher_label = labels[-1] if args.teacher else None
    items = parse_items(args.items) if args.items is not None else None
    ranges = {leaf: resolve_range(leaf, len(task.eval_docs), items, args.limit) for leaf, (task, _) in built.items()}
    reusable = load_reusable(args.reuse, args.dtype)

    results: dict[str, dict[str, TaskResult]] = {}
    model_info: dict[str, dict[str, Any]] = {}
    for spec, label in zip(specs, labels):
        earlier = reusable.get(spec, {})
        results[label] = {}
        for leaf, (task, _) in built.items():
            found = reuse_result(label, leaf, task, ranges[leaf], earlier.get(leaf, []))
            if found is not None:
                results[label][leaf] = found
        if len(results[label]) == len(built):
            print(f"{label}: all tasks reused from --reuse", file=sys.stderr)
            model_info[label] = {"spec": spec, "role": "teacher" if label == teacher_label else "model",
                                 "recurrent": None, "reused": True}
            continue
        t0 = time.perf_counter()
        model, tokenizer = load_model(spec, DTYPES[args.dtype])
        lm = RadladsLM(model, tokenizer, batch_size=args.batch_size)
        model_info[label] = {"spec": spec, "role": "teacher" if label == teacher_label else "model",
                             "recurrent": lm.recurrent, "load_seconds": time.perf_counter() - t0,
                             "reused_tasks": sorted(results[label])}
        for leaf, (task, source) in built.items():
            if leaf in results[label]:
                continue
            res = evaluate_task(lm, leaf, task, ranges[leaf], args.bootstrap_iters, source)
            results[label][leaf] = res
            print(f"{label} {leaf}: {res.n} items in {res.seconds:.1f} s ({res.items_per_second:.2f} items/s)",
                  file=sys.stderr)
        results[label] = {leaf: results[label][leaf] for leaf in built}  # task order as asked
        del lm, model

    ratios = {}
    if teacher_label:
        ratios = {s: compute_ratios(results[s], results[teacher_label]) for s in labels if s != teacher_label}
    print(format_table(results, teacher_label, ratios))

    if args.json:
        payload = {
            "radlads_version": __version__,
            "lm_eval_version": getattr(lm_eval, "__version__", None),
            "tasks": tasks,
            "eval_data": str(data_dir) if data_dir else None,
            "limit": args.limit,
            "items": args.items,
            "batch_size": args.batch_size,
            "dtype": args.dtype,
            "bootstrap_iters": args.bootstrap_iters,
            "teacher": teacher_label,
            "models": {
                label: dict(model_info[label], tasks={
                    name: {"metrics": r.metrics, "n": r.n, "n_total": r.n_total, "limit": args.limit,
                           "items": list(r.items), "parts": r.parts, "version": r.version, "chance": r.chance, "seconds": r.seconds,
                           "items_per_second": r.items_per_second, "source": r.source,
                           "higher_is_better": r.higher_is_better}
                    for name, r in results[label].items()})
                for label in labels
            },
            "ratios": ratios,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0
