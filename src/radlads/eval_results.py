"""What a task's scores mean: `TaskResult` (and its --json form), RADLADS ratios, the report table.

The RADLADS ratio of a student on a task is (student - chance) / (teacher - chance): how much of
the teacher's above-chance skill the conversion kept. As the RADLADS paper reports them, LAMBADA
and MMLU stand on their own (SEPARATE) and the other accuracy tasks are averaged. Tasks where the
teacher is within NEAR_CHANCE_STDERRS standard errors of chance keep their ratio but are left out
of the average (and flagged when they are one of the separate ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

ItemRange = tuple[int, int]  # [start, end) in the task's document order

# Metric whose ratio enters the average, per task (as in the RADLADS paper's tables).
PRIMARY_METRIC = {"hellaswag": "acc_norm", "piqa": "acc", "arc_easy": "acc", "arc_challenge": "acc_norm",
                  "winogrande": "acc", "lambada_openai": "acc", "mmlu": "acc"}
# Reported on their own, not in the average (the RADLADS paper's table: LAMBADA, MMLU, average of the rest).
SEPARATE = ("lambada_openai", "mmlu")
ACCURACY_METRICS = ("acc", "acc_norm")
NEAR_CHANCE_STDERRS = 3.0


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
    # A group (mmlu): every subtask and subgroup, name -> {"n", "metrics"}; empty for a plain task.
    subtasks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def items_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")

    def to_json(self, limit: int | None) -> dict[str, Any]:
        return {"metrics": self.metrics, "n": self.n, "n_total": self.n_total, "limit": limit,
                "items": list(self.items), "parts": self.parts, "version": self.version, "chance": self.chance,
                "seconds": self.seconds, "items_per_second": self.items_per_second, "source": self.source,
                "higher_is_better": self.higher_is_better,
                **({"subtasks": self.subtasks} if self.subtasks else {})}

    @classmethod
    def from_json(cls, name: str, r: dict[str, Any], path: str) -> TaskResult:
        items = r.get("items")
        if items is None:  # written before --items existed: the first `limit` items
            items = [0, r["n_total"] if r["limit"] is None else min(r["limit"], r["n_total"])]
        return cls(task=name, metrics=r["metrics"], n=r["n"], n_total=r["n_total"], version=r["version"],
                   chance=r["chance"], seconds=r["seconds"], source=r["source"],
                   higher_is_better=r.get("higher_is_better", {}), items=(int(items[0]), int(items[1])),
                   parts=r.get("parts") or [{"items": list(items), "file": str(path)}],
                   subtasks=r.get("subtasks") or {})


def aggregate_group(tree, leaves: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every group node's metrics from its leaf tasks' {"n", "metrics"}, as lm-eval aggregates a group.

    lm-eval (0.4.13, `ConfigurableGroup.aggregate`) aggregates each group over all the leaf tasks
    beneath it (not over its subgroups' aggregates): the size-weighted mean with the pooled sample
    stderr when `weight_by_size`, else the plain mean of the leaves with its stderr. Leaves that
    scored no items are absent, as in lm-eval. Returns {node name: {"n", "metrics"}} per group node.
    """
    from lm_eval.api.metrics import aggregate_subtask_metrics, pooled_sample_stderr, unweighted_mean_stderr

    out: dict[str, dict[str, Any]] = {}

    def visit(node) -> None:
        present = [leaf for leaf in node.leaves() if leaf in leaves]
        if not present:
            return
        metrics: dict[str, dict[str, float | None]] = {}
        for metric, weight_by_size in node.aggregate.items():
            have = [leaf for leaf in present if metric in leaves[leaf]["metrics"]]
            if not have:
                continue
            values = [leaves[leaf]["metrics"][metric]["value"] for leaf in have]
            sizes = [leaves[leaf]["n"] for leaf in have]
            errs = [leaves[leaf]["metrics"][metric]["stderr"] for leaf in have]
            value = float(aggregate_subtask_metrics(values, sizes, weight_by_size))
            err = None
            if all(e is not None and math.isfinite(e) for e in errs):
                err = float(pooled_sample_stderr(errs, sizes) if weight_by_size else unweighted_mean_stderr(errs))
            metrics[metric] = {"value": value, "stderr": err}
        out[node.name] = {"n": sum(leaves[leaf]["n"] for leaf in present), "metrics": metrics}
        for child in node.children:
            if not isinstance(child, str):
                visit(child)

    visit(tree)
    return out


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
    """Per task/accuracy-metric ratios; their average over the primary metrics of all tasks but the
    SEPARATE ones (LAMBADA, MMLU), whose primary ratios are reported on their own in "separate".

    A task on which the teacher is near chance keeps its ratio but is left out of the average (and
    is listed in excluded_near_chance either way).
    """
    per_task: dict[str, dict[str, float | None]] = {}
    averaged, excluded, separate = {}, [], {}
    for name, t in teacher.items():
        s = student.get(name)
        if s is None or t.chance is None:
            continue
        per_task[name] = {}
        for metric in ACCURACY_METRICS:
            if metric in t.metrics and metric in s.metrics:
                per_task[name][metric] = ratio(s.metrics[metric]["value"], t.metrics[metric]["value"], t.chance)
        main = primary_metric(name, t.metrics)
        if main is None or main not in per_task[name]:
            continue
        at_chance = near_chance(t.metrics[main], t.chance) or per_task[name][main] is None
        if at_chance:
            excluded.append(name)
        if name in SEPARATE or name.startswith("lambada"):
            separate[name] = per_task[name][main]
        elif not at_chance:
            averaged[name] = per_task[name][main]
    average = sum(averaged.values()) / len(averaged) if averaged else None
    return {"per_task": per_task, "average": average, "averaged_tasks": averaged, "separate": separate,
            "excluded_near_chance": excluded}


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
        # The RADLADS summary: LAMBADA and MMLU on their own, then the average of the other tasks.
        for name in dict.fromkeys(n for s in students for n in ratios[s].get("separate", {})):
            t = results[teacher][name]
            row = [f"**{name}**", f"ratio, {primary_metric(name, t.metrics)}", *[""] * len(labels), ""]
            for s in students:
                r = ratios[s].get("separate", {}).get(name)
                cell = "—" if r is None else f"**{r:.3f}**"
                if r is not None and name in ratios[s]["excluded_near_chance"]:
                    cell += " ¹"
                    excluded_any.add(name)
                row.append(cell)
            lines.append("| " + " | ".join(row) + " |")
        row = ["**average**", "ratio, other tasks", *[""] * len(labels), ""]
        for s in students:
            avg = ratios[s]["average"]
            row.append("—" if avg is None else f"**{avg:.3f}**")
        lines.append("| " + " | ".join(row) + " |")
    notes = []
    if teacher:
        notes.append(f"Ratio = (student − chance) / (teacher − chance), teacher = {teacher}. As in RADLADS, "
                     + " and ".join(SEPARATE) + " are reported on their own; the average is over the other tasks: "
                     + ", ".join(f"{t} {m}" for t, m in PRIMARY_METRIC.items() if t not in SEPARATE)
                     + " (acc_norm, else acc, for other tasks); perplexities have no ratio.")
    if excluded_any:
        notes.append(f"¹ Teacher within {NEAR_CHANCE_STDERRS:g} standard errors of chance on "
                     f"{', '.join(sorted(excluded_any))}: shown, but left out of the average.")
    first = results[labels[0]] if labels else {}
    if first:
        notes.append("Items per task: " + ", ".join(_items_note(t, r) for t, r in first.items()) + ".")
    return "\n".join(lines + [""] + notes) if notes else "\n".join(lines)
