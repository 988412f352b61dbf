"""Item ranges of a task, and joining results scored on adjacent ranges into one.

A full hellaswag pass is hours on one CPU core. `radlads eval --items A:B` scores part of a task
(a shard), and `--reuse` joins shards that tile the range asked for, so a long evaluation can be
split across processes, machines or days and still report what one pass would have.

Joining works from the shards' summaries (n, mean, standard error), so it is exact only for
metrics that lm-eval aggregates as a plain mean with its closed-form standard error (accuracies,
acc_norm): the pooled mean and pooled sample variance follow from those three numbers. Other
aggregations (perplexity = exp of a mean, word perplexity = a ratio of sums) cannot be rebuilt
from summaries, so their shards are not joined and the task runs again.
"""

from __future__ import annotations

import math
from typing import Sequence, TypeVar

from radlads.errors import RadladsError

ItemRange = tuple[int, int]  # [start, end) in the task's document order
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
