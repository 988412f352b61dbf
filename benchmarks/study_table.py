"""The recipe study's table: one row per configuration, from run folders and yardstick files.

    .venv/bin/python benchmarks/study_table.py configs/study/rows.yaml --runs ../runs/study \
        --yardstick results/study/yardstick-*.json [--quick results/study/quick-*.json] \
        [--copy-metrics results/study/metrics] [--json results/study/table.json]

rows.yaml lists rows as {row, stage1: RUN, stage2: RUN or null, note}. A row's wall minutes are
the sum of its stages' training time (metrics.jsonl `elapsed_s` at the stage's last step, added up
over a resumed run's invocations, each to the step the next resumed from; stage 1 shared by
several rows is counted in each, as each row would have to run it); a run whose folder
and kept metrics copy are both gone shows "—". Held-out L2 is the
yardstick's stage-1 loss of the stage-1 student; KL and CE are the yardstick's for the row's final
student. `--copy-metrics` keeps every cited run's metrics.jsonl under results/.
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import sys
from pathlib import Path

import yaml


def stage_summary(metrics: Path | None) -> dict:
    if metrics is None:
        return {}
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    out = {}
    finished = {}  # per stage: seconds of the invocations before the current one
    invocation = {}  # per stage: (step, elapsed_s) rows of the current invocation
    for r in rows:
        stage = r["stage"]
        s = out.setdefault(stage, {"tokens": 0, "seconds": 0.0, "steps": 0})
        s["tokens"], s["steps"] = max(s["tokens"], r["tokens"]), max(s["steps"], r["step"])
        # A resumed run restarts its clock (and `--resume` drops the rows after its checkpoint;
        # an older metrics file may still repeat them): an invocation counts up to the step the
        # next one resumed from, so a repeated step counts once.
        current = invocation.setdefault(stage, [])
        if current and (r["step"] <= current[-1][0] or r["elapsed_s"] < current[-1][1]):
            finished[stage] = finished.get(stage, 0.0) + max([e for step, e in current if step < r["step"]], default=0.0)
            current.clear()
        current.append((r["step"], r["elapsed_s"]))
        s["seconds"] = finished.get(stage, 0.0) + r["elapsed_s"]
        if "val_loss" in r:
            s["val_loss"] = r["val_loss"]
    return out


def metrics_path(runs: Path, kept: Path | None, run: str | None) -> Path | None:
    """A run's metrics.jsonl, or its kept copy (kept/NAME.jsonl) once the folder is gone (a machine
    handed back empty)."""
    for path in (runs / str(run) / "metrics.jsonl", kept / f"{Path(str(run)).name}.jsonl" if kept else None):
        if run and path is not None and path.exists():
            return path
    return None


def load_many(patterns: list[str], key: str) -> dict:
    merged = {}
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            data = json.loads(Path(path).read_text())
            for name, value in data.get(key, {}).items():
                merged[Path(name).name] = value
    return merged


def quick_scores(patterns: list[str]) -> tuple[dict, dict, dict]:
    """model name -> {task: accuracy} from `radlads eval --json` files (acc_norm for hellaswag),
    task -> chance accuracy, and model name -> {task: standard error of the accuracy}. A later file
    overrides an earlier one for the same model and task."""
    scores: dict[str, dict] = {}
    stderr: dict[str, dict] = {}
    chance: dict[str, float] = {}
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            data = json.loads(Path(path).read_text())
            for label, model in data.get("models", {}).items():
                name = Path(model.get("spec") or label).name
                for task, result in model.get("tasks", {}).items():
                    metric = "acc_norm" if task == "hellaswag" else "acc"
                    if metric in result.get("metrics", {}):
                        scores.setdefault(name, {})[task] = result["metrics"][metric]["value"]
                        stderr.setdefault(name, {})[task] = result["metrics"][metric].get("stderr")
                    if result.get("chance") is not None:
                        chance[task] = result["chance"]
    return scores, chance, stderr


# The tasks the teacher (smollm2-135m) is > 3 se above chance on: the average ratio.
RATIO_TASKS = ("hellaswag", "piqa", "arc_easy")


def average_ratio(student: dict, teacher: dict, chance: dict) -> float | None:
    """RADLADS' quality ratio (student − chance) / (teacher − chance), averaged over RATIO_TASKS."""
    if not all(t in student and t in teacher and t in chance for t in RATIO_TASKS):
        return None
    return sum((student[t] - chance[t]) / (teacher[t] - chance[t]) for t in RATIO_TASKS) / len(RATIO_TASKS)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows")
    p.add_argument("--runs", required=True)
    p.add_argument("--yardstick", nargs="+", default=[])
    p.add_argument("--quick", nargs="+", default=[])
    p.add_argument("--teacher", default="smollm2-135m", help="model name of the teacher in the --quick files")
    p.add_argument("--copy-metrics")
    p.add_argument("--json")
    args = p.parse_args(argv)
    runs = Path(args.runs)
    kept = Path(args.copy_metrics) if args.copy_metrics else None

    yard = load_many(args.yardstick, "students")
    quick, chance, _ = quick_scores(args.quick)
    table = []
    for row in yaml.safe_load(Path(args.rows).read_text()):
        s1 = stage_summary(metrics_path(runs, kept, row["stage1"])).get(1)
        final = row.get("stage2") or row["stage1"]
        s2 = stage_summary(metrics_path(runs, kept, row.get("stage2"))).get(2) if row.get("stage2") else None
        known = s1 is not None and (s2 is not None or not row.get("stage2"))
        entry = {"row": row["row"], "stage1": row["stage1"], "stage2": row.get("stage2"),
                 "stage1_tokens": s1["tokens"] if s1 else None,
                 "stage2_tokens": (s2["tokens"] if s2 else 0) if known else None,
                 "wall_min": round((s1["seconds"] + (s2["seconds"] if s2 else 0)) / 60, 1) if known else None,
                 "l2": yard.get(row["stage1"], {}).get("l2"), "kl": yard.get(final, {}).get("kl"),
                 "ce": yard.get(final, {}).get("ce"), "quick": quick.get(final, {}),
                 "ratio": average_ratio(quick.get(final, {}), quick.get(args.teacher, {}), chance), "note": row.get("note", "")}
        table.append(entry)
        if args.copy_metrics:
            Path(args.copy_metrics).mkdir(parents=True, exist_ok=True)
            for run in {row["stage1"], row.get("stage2")} - {None}:
                source = runs / run / "metrics.jsonl"
                if source.exists():
                    shutil.copyfile(source, Path(args.copy_metrics) / f"{run}.jsonl")

    def fmt(x, digits=3):
        return "—" if x is None else f"{x:.{digits}f}"

    def count(x):
        return "—" if x is None else f"{x:,}"

    tasks = ["lambada_openai", "hellaswag", "piqa", "arc_easy"]
    print("| row | stage 1 / stage 2 tokens | wall min | held-out L2 | held-out KL | CE | "
          + " | ".join(tasks) + " | avg ratio | note |")
    print("|---|---|---:|---:|---:|---:|" + "---:|" * (len(tasks) + 1) + "---|")
    for e in table:
        q = " | ".join(fmt(e["quick"].get(t)) for t in tasks)
        print(f"| {e['row']} | {count(e['stage1_tokens'])} / {count(e['stage2_tokens'])} | {fmt(e['wall_min'], 1)} | {fmt(e['l2'])} | "
              f"{fmt(e['kl'], 4)} | {fmt(e['ce'])} | {q} | {fmt(e['ratio'])} | {e['note']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
