"""Item ranges of a task, and joining results scored on adjacent ranges into one (`eval --reuse`).

A full hellaswag pass is hours on one CPU core. `radlads eval --items A:B` scores part of a task
(a shard), and `--reuse` joins shards that tile the range asked for, so a long evaluation can be
split across processes, machines or days and still report what one pass would have.

Joining works from the shards' summaries (n, mean, standard error), so it is exact only for
metrics that lm-eval aggregates as a plain mean with its closed-form standard error (accuracies,
acc_norm): the pooled mean and pooled sample variance follow from those three numbers. Other
aggregations (perplexity = exp of a mean, word perplexity = a ratio of sums) cannot be rebuilt
from summaries: a join leaves them out and says so (lambada_openai keeps its accuracy, loses its
perplexity), and a task with no mean metric at all (wikitext) is not joined but runs again.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Sequence, TypeVar

from radlads.errors import RadladsError
from radlads.eval_results import ItemRange, TaskResult

R = TypeVar("R")


def parse_items(text: str) -> tuple[int, int | None]:
    """'A:B' -> (A, B); 'A:' -> (A, None) (to the task's end); ':B' -> (0, B)."""
    start, sep, end = text.partition(":")
    try:
        if not sep:
            raise ValueError
        a = int(start) if start.strip() else 0
        b = int(end) if end.strip() else None
    except ValueError:
        raise RadladsError(f"--items must look like START:END (e.g. 2000:4000 or 2000:), got {text!r}") from None
    if a < 0 or (b is not None and b <= a):
        raise RadladsError(f"--items {text}: need 0 <= START < END")
    return a, b


def resolve_range(task: str, n_docs: int, items: tuple[int, int | None] | None, limit: int | None) -> ItemRange:
    """The document range a run scores on one task, clipped to the task's length."""
    if items is None:
        return 0, n_docs if limit is None else min(limit, n_docs)
    start, end = items
    if start >= n_docs:
        raise RadladsError(f"--items {start}:{'' if end is None else end} starts past the end of {task} "
                           f"({n_docs} items)")
    return start, n_docs if end is None else min(end, n_docs)


def tile(pieces: Sequence[tuple[ItemRange, R]], want: ItemRange) -> list[R] | None:
    """Pieces whose ranges join end to end into exactly `want`, in order; None when they cannot.

    A depth-first search that tries the longest piece first at each position, so a single piece
    covering the whole range wins (a handful of shards per task: its cost does not matter).
    """
    longest_first = sorted(pieces, key=lambda p: -p[0][1])

    def walk(pos: int) -> list[R] | None:
        if pos == want[1]:
            return []
        for (a, b), piece in longest_first:
            if a == pos and b <= want[1] and b > a:
                rest = walk(b)
                if rest is not None:
                    return [piece, *rest]
        return None

    return walk(want[0])


def pool_mean(parts: Sequence[tuple[int, float, float | None]]) -> tuple[float, float | None]:
    """(mean, standard error of the mean) of the union of samples given as (n, mean, stderr) each.

    lm-eval's stderr of a mean is sample_stddev / sqrt(n), so each part's sum of squared deviations
    is stderr² · n · (n - 1); the parallel-variance identity adds the spread between part means.
    """
    total = sum(n for n, _, _ in parts)
    mean = sum(n * m for n, m, _ in parts) / total
    if total < 2:
        return mean, None
    squares = 0.0
    for n, m, err in parts:
        if n > 1:
            if err is None or not math.isfinite(err):
                return mean, None
            squares += err * err * n * (n - 1)
        squares += n * (m - mean) ** 2
    return mean, math.sqrt(squares / (total - 1)) / math.sqrt(total)


# --------------------------------------------------------------------------------------------
# Joining, and reusing earlier --json results
# --------------------------------------------------------------------------------------------


def _join_group_leaves(name: str, group, shards: list[TaskResult]) -> dict[str, dict]:
    """A group's leaf results over all shards: each leaf's means pooled over the shards that have it."""
    from lm_eval.api.metrics import mean

    leaves = {}
    for leaf in group.tasks:
        parts = [s.subtasks[leaf] for s in shards if leaf in s.subtasks and s.subtasks[leaf]["n"] > 0]
        if not parts:
            continue
        aggregation = group.tasks[leaf].aggregation()
        metrics = {}
        for label in parts[0]["metrics"]:
            if aggregation.get(label.split(" (")[0]) is not mean:
                raise RadladsError(f"cannot join {name} shards: {leaf} {label} is not a mean of per-item values")
            value, err = pool_mean([(p["n"], p["metrics"][label]["value"], p["metrics"][label]["stderr"])
                                    for p in parts])
            metrics[label] = {"value": value, "stderr": err}
        leaves[leaf] = {"n": sum(p["n"] for p in parts), "metrics": metrics}
    return leaves


def join_shards(name: str, task, shards: list[TaskResult]) -> TaskResult:
    """One result from results on adjacent item ranges (see the module docstring for when it is exact).

    A group (mmlu) joins each subtask's shards, then aggregates the group again as lm-eval does:
    its pooled stderr is not that of a plain mean over all items, so it cannot be pooled directly.
    """
    from lm_eval.api.metrics import mean

    from radlads.eval_results import aggregate_group

    group = getattr(task, "tree", None) is not None
    first = shards[0]
    for s in shards[1:]:
        if (s.version, s.source, set(s.metrics)) != (first.version, first.source, set(first.metrics)):
            raise RadladsError(f"cannot join {name} shards: they differ in task version, data file or metrics")
    for s in shards:
        if s.n != s.items[1] - s.items[0]:
            raise RadladsError(f"cannot join {name} shards: items {s.items[0]}:{s.items[1]} scored {s.n} items")
    metrics, subtasks = {}, {}
    if group:
        if any(not s.subtasks for s in shards):
            raise RadladsError(f"cannot join {name} shards: a shard has no per-subtask results")
        leaves = _join_group_leaves(name, task, shards)
        subtasks = aggregate_group(task.tree, leaves)
        metrics = subtasks.pop(name)["metrics"]
        subtasks.update(leaves)
    else:
        aggregation = task.aggregation()
        joinable = [label for label in first.metrics if aggregation.get(label.split(" (")[0]) is mean]
        if not joinable:
            raise RadladsError(f"cannot join {name} shards: none of {', '.join(first.metrics)} "
                               "is a mean of per-item values")
        for label in joinable:
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
        subtasks=subtasks,
    )


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
                    result = TaskResult.from_json(name, r, path)
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
    left_out = [m for m in chosen[0].metrics if m not in joined.metrics]
    note = (f"; left out {', '.join(left_out)}: not a mean of per-item values (score the task in one pass "
            "for it)") if left_out else ""
    print(f"{label} {name}: reused, joined from {len(chosen)} shards ({spans}){note}", file=sys.stderr)
    return joined
