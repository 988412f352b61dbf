"""Run lm-eval tasks on students and teachers, side by side (`radlads eval`).

Tasks are lm-eval's task configs, for our local data files (radlads.eval_tasks) or, for any other
lm-eval task name, straight from the hub; each model is scored through `radlads.eval_lm.RadladsLM`,
so scoring is lm-eval's. A task a model already scored in an earlier --json file (whole, or as
--items shards that tile the items asked for) is reused instead of run again (radlads.eval_shards).
What the scores mean (ratios, the table) is radlads.eval_results.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radlads.cpu_matmul import with_onednn_matmul
from radlads.errors import RadladsError
from radlads.eval_lm import RadladsLM
from radlads.eval_results import ItemRange, TaskResult, aggregate_group, compute_ratios
from radlads.eval_shards import load_reusable, parse_items, resolve_range, reuse_result

# The table converted models are compared by (RADLADS, the Qwerky/QRWKV model cards), as far as the
# shared data has it, plus WikiText perplexity.
DEFAULT_TASKS = "lambada_openai,mmlu,arc_challenge,arc_easy,hellaswag,piqa,winogrande,wikitext"
# Bootstrap resamples for stderrs that have no closed form (lambada perplexity); lm-eval's default
# of 100,000 takes minutes on a CPU and only refines an error bar. Means keep their exact stderr.
DEFAULT_BOOTSTRAP = 1000
FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


def parse_tasks(text: str) -> list[str]:
    from radlads.eval_tasks import LOCAL_GROUPS, LOCAL_TASKS

    local = [*LOCAL_TASKS, *LOCAL_GROUPS]
    names = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names:
        raise RadladsError(f"--tasks is empty; local tasks: {', '.join(local)}")
    hub = [n for n in names if n not in local]
    if hub:
        known = set(_task_manager().all_tasks)
        unknown = [n for n in hub if n not in known]
        if unknown:
            raise RadladsError(f"unknown task {', '.join(unknown)}; local tasks: {', '.join(local)} "
                               "(other lm-eval task names load from the Hugging Face hub)")
    return names


@functools.lru_cache(maxsize=1)
def _task_manager() -> Any:
    """lm-eval's index of its own task configs: built only when a hub task is asked for (takes seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


@dataclass
class BuiltGroup:
    """A local group (mmlu): lm-eval's group tree and its subtasks, whose documents --items counts
    in this order, one after the other."""

    tree: Any  # radlads.eval_tasks.GroupNode
    tasks: dict[str, Any]  # subtask name -> lm-eval Task
    version: Any = None
    OUTPUT_TYPE = "group"

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(task.eval_docs) for name, task in self.tasks.items()}

    def n_docs(self) -> int:
        return sum(self.sizes.values())

    def select(self, items: ItemRange) -> dict[str, list[int]]:
        """Subtask -> its document indices inside the group's item range (subtasks without any left out)."""
        chosen, offset = {}, 0
        for name, size in self.sizes.items():
            lo, hi = max(items[0], offset), min(items[1], offset + size)
            if lo < hi:
                chosen[name] = list(range(lo - offset, hi - offset))
            offset += size
        return chosen


def n_docs(task) -> int:
    return task.n_docs() if isinstance(task, BuiltGroup) else len(task.eval_docs)


def _prepare(task) -> None:
    # As lm-eval's simple_evaluate: zero-shot unless the task sets its own shots, seeded sampling.
    if task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=FEWSHOT_SEED)


def _build_task(name: str, data_dir: Path | None):
    """{leaf task name: Task} for one requested name (a hub name may be a group of several)."""
    from radlads.eval_tasks import LOCAL_GROUPS, LOCAL_TASKS, build_group, build_task

    if name in LOCAL_GROUPS:
        tree, subtasks = build_group(name, data_dir)
        for task in subtasks.values():
            _prepare(task)
        return {name: BuiltGroup(tree, subtasks, version=tree.version)}
    if name in LOCAL_TASKS:
        tasks = {name: build_task(name, data_dir)}
    else:
        try:
            tasks = dict(_task_manager().load([name])["tasks"])
        except Exception as e:  # noqa: BLE001 - datasets/hub raise many types (offline, gated, missing)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RadladsError(f"cannot load lm-eval task {name} from the Hugging Face hub: {first}") from e
    for task in tasks.values():
        _prepare(task)
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


def evaluate_group(lm: RadladsLM, name: str, group: BuiltGroup, items: ItemRange, bootstrap_iters: int,
                   source: str) -> TaskResult:
    """A local group in one lm-eval run over its subtasks (all their requests in one batch for the
    model), aggregated as lm-eval aggregates the group (radlads.eval_results.aggregate_group)."""
    from lm_eval.evaluator import evaluate

    lm.desc = name if items == (0, group.n_docs()) else f"{name} [{items[0]}:{items[1]}]"
    chosen = group.select(items)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        out = evaluate(lm=lm, task_dict={t: group.tasks[t] for t in chosen}, samples=chosen,
                       bootstrap_iters=bootstrap_iters, log_samples=True, verbosity="WARNING")
    seconds = time.perf_counter() - start
    leaves, chance_sum, n = {}, 0.0, 0
    for t in chosen:
        samples = out.get("samples", {}).get(t, [])
        count = int(out.get("n-samples", {}).get(t, {}).get("effective", len(samples)))
        leaves[t] = {"n": count, "metrics": _metrics(out["results"][t])}
        chance_sum += (_chance(group.tasks[t], samples) or 0.0) * count
        n += count
    subtasks = aggregate_group(group.tree, leaves)
    top = subtasks.pop(name)
    subtasks.update(leaves)
    hib = {}
    for t in chosen:
        hib.update(out.get("higher_is_better", {}).get(t, {}))
    return TaskResult(task=name, metrics=top["metrics"], n=n, n_total=group.n_docs(), version=group.version,
                      chance=chance_sum / n if n else None, seconds=seconds, source=source,
                      higher_is_better={m: hib.get(m, True) for m in top["metrics"]}, items=items,
                      subtasks=subtasks)


def evaluate_task(lm: RadladsLM, name: str, task, items: ItemRange, bootstrap_iters: int,
                  source: str) -> TaskResult:
    from lm_eval.evaluator import evaluate

    if isinstance(task, BuiltGroup):
        return evaluate_group(lm, name, task, items, bootstrap_iters, source)
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


def resolve_data_dir(arg: str | None, tasks: list[str]) -> Path | None:
    """The local benchmark files' folder, when any asked task reads them."""
    from radlads.eval_tasks import LOCAL_GROUPS, LOCAL_TASKS, default_eval_data_dir

    if not any(t in LOCAL_TASKS or t in LOCAL_GROUPS for t in tasks):
        return None
    if arg is None:
        return default_eval_data_dir()
    path = Path(arg)
    if not path.is_dir():
        raise RadladsError(f"--eval-data folder not found: {arg}")
    return path


def _quiet_libraries() -> None:
    import datasets

    datasets.disable_progress_bars()
    for name in ("lm_eval", "lm-eval", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


# --------------------------------------------------------------------------------------------
# Every model on every task
# --------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    results: dict[str, dict[str, TaskResult]]  # model label -> task -> result
    teacher: str | None  # the teacher's label
    ratios: dict[str, dict[str, Any]]  # student label -> compute_ratios(...)
    json: dict[str, Any]  # what --json writes


@with_onednn_matmul  # fp32 Linear layers 2-4x faster where MKL runs AVX2 code (cpu_matmul.py)
def evaluate_models(specs: list[str], teacher: str | None = None, tasks: str = DEFAULT_TASKS,
                    eval_data: str | None = None, limit: int | None = None, items: str | None = None,
                    batch_size: int = 8, dtype: str = "fp32", bootstrap_iters: int = DEFAULT_BOOTSTRAP,
                    reuse: list[str] = ()) -> Evaluation:
    """Score every model (and the teacher, last) on every task; ratios against the teacher."""
    import lm_eval

    from radlads import __version__
    from radlads.dtypes import torch_dtype
    from radlads.eval_tasks import LOCAL_GROUPS, LOCAL_TASKS
    from radlads.loading import load_model, model_label

    _quiet_libraries()
    task_names = parse_tasks(tasks)
    data_dir = resolve_data_dir(eval_data, task_names)
    # Tasks are built once, before any model: a missing file or an unreachable hub fails in seconds,
    # and every model is scored on the same documents (lm-eval rebuilds requests per evaluation).
    built: dict[str, tuple[Any, str]] = {}
    for name in task_names:
        local = LOCAL_TASKS.get(name) or LOCAL_GROUPS.get(name)
        source = f"local:{data_dir / local.data_file}" if local else "lm-eval hub"
        for leaf, task in _build_task(name, data_dir).items():
            built[leaf] = (task, source)

    specs = list(specs) + ([teacher] if teacher else [])
    labels: list[str] = []
    for spec in specs:
        label = model_label(spec)
        labels.append(label if label not in labels else f"{label} ({len(labels) + 1})")
    teacher_label = labels[-1] if teacher else None
    item_range = parse_items(items) if items is not None else None
    ranges = {leaf: resolve_range(leaf, n_docs(task), item_range, limit) for leaf, (task, _) in built.items()}
    reusable = load_reusable(list(reuse), dtype)

    results: dict[str, dict[str, TaskResult]] = {}
    model_info: dict[str, dict[str, Any]] = {}
    for spec, label in zip(specs, labels):
        earlier = reusable.get(spec, {})
        results[label] = {}
        for leaf, (task, _) in built.items():
            found = reuse_result(label, leaf, task, ranges[leaf], earlier.get(leaf, []))
            if found is not None:
                results[label][leaf] = found
        role = "teacher" if label == teacher_label else "model"
        if len(results[label]) == len(built):
            print(f"{label}: all tasks reused from --reuse", file=sys.stderr)
            model_info[label] = {"spec": spec, "role": role, "recurrent": None, "reused": True}
            continue
        t0 = time.perf_counter()
        model, tokenizer = load_model(spec, torch_dtype(dtype))
        lm = RadladsLM(model, tokenizer, batch_size=batch_size)
        model_info[label] = {"spec": spec, "role": role, "recurrent": lm.recurrent,
                             "load_seconds": time.perf_counter() - t0, "reused_tasks": sorted(results[label])}
        for leaf, (task, source) in built.items():
            if leaf in results[label]:
                continue
            res = evaluate_task(lm, leaf, task, ranges[leaf], bootstrap_iters, source)
            results[label][leaf] = res
            print(f"{label} {leaf}: {res.n} items in {res.seconds:.1f} s ({res.items_per_second:.2f} items/s)",
                  file=sys.stderr)
        results[label] = {leaf: results[label][leaf] for leaf in built}  # task order as asked
        del lm, model

    ratios = {}
    if teacher_label:
        ratios = {s: compute_ratios(results[s], results[teacher_label]) for s in labels if s != teacher_label}
    payload = {
        "radlads_version": __version__,
        "lm_eval_version": getattr(lm_eval, "__version__", None),
        "tasks": task_names,
        "eval_data": str(data_dir) if data_dir else None,
        "limit": limit,
        "items": items,
        "batch_size": batch_size,
        "dtype": dtype,
        "bootstrap_iters": bootstrap_iters,
        "teacher": teacher_label,
        "models": {label: dict(model_info[label], tasks={name: r.to_json(limit) for name, r in results[label].items()})
                   for label in labels},
        "ratios": ratios,
    }
    return Evaluation(results, teacher_label, ratios, payload)
