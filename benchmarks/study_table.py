"""The recipe study's table: one row per configuration, from run folders and yardstick files.

    .venv/bin/python benchmarks/study_table.py configs/study/rows.yaml --runs ../runs/study \
        --yardstick results/study/yardstick-*.json [--quick results/study/quick-*.json] \
        [--copy-metrics results/study/metrics] [--json results/study/table.json]

rows.yaml lists rows as {row, stage1: RUN, stage2: RUN or null, note}. A row's wall minutes are
the sum of its stages' training time (metrics.jsonl `elapsed_s` at the stage's last step; stage 1
shared by several rows is counted in each, as each row would have to run it). Held-out L2 is the
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


def stage_summary(run: Path) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    out = {}
    for r in rows:
        s = out.setdefault(r["stage"], {"tokens": 0, "seconds": 0.0, "steps": 0})
        s["tokens"], s["steps"] = max(s["tokens"], r["tokens"]), max(s["steps"], r["step"])
        s["seconds"] = max(s["seconds"], r["elapsed_s"])  # resumed runs restart the clock: see note
        if "val_loss" in r:
            s["val_loss"] = r["val_loss"]
    return out


def load_many(patterns: list[str], key: str) -> dict:
    merged = {}
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            data = json.loads(Path(path).read_text())
            for name, value in data.get(key, {}).items():
                merged[Path(name).name] = value
    return merged


def quick_scores(patterns: list[str]) -> dict:
    """model name -> {task: accuracy} from `radlads eval --json` files (acc_norm for hellaswag)."""
    scores: dict[str, dict] = {}
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            data = json.loads(Path(path).read_text())
            for label, model in data.get("models", {}).items():
                name = Path(model.get("spec") or label).name
                for task, result in model.get("tasks", {}).items():
                    metric = "acc_norm" if task == "hellaswag" else "acc"
                    if metric in result.get("metrics", {}):
                        scores.setdefault(name, {})[task] = result["metrics"][metric]["value"]
    return scores


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows")
    p.add_argument("--runs", required=True)
    p.add_argument("--yardstick", nargs="+", default=[])
    p.add_argument("--quick", nargs="+", default=[])
    p.add_argument("--copy-metrics")
    p.add_argument("--json")
    args = p.parse_args(argv)
    runs = Path(args.runs)
    yard = load_many(args.yardstick, "students")
    quick = quick_scores(args.quick)
    table = []
    for row in yaml.safe_load(Path(args.rows).read_text()):
        s1 = stage_summary(runs / row["stage1"])[1]
        final = row.get("stage2") or row["stage1"]
        s2 = stage_summary(runs / row["stage2"]).get(2) if row.get("stage2") else None
        entry = {"row": row["row"], "stage1": row["stage1"], "stage2": row.get("stage2"),
                 "stage1_tokens": s1["tokens"], "stage2_tokens": s2["tokens"] if s2 else 0,
                 "wall_min": round((s1["seconds"] + (s2["seconds"] if s2 else 0)) / 60, 1),
                 "l2": yard.get(row["stage1"], {}).get("l2"), "kl": yard.get(final, {}).get("kl"),
                 "ce": yard.get(final, {}).get("ce"), "quick": quick.get(final, {}), "note": row.get("note", "")}
        table.append(entry)
        if args.copy_metrics:
            Path(args.copy_metrics).mkdir(parents=True, exist_ok=True)
            for run in {row["stage1"], row.get("stage2")} - {None}:
                shutil.copyfile(runs / run / "metrics.jsonl", Path(args.copy_metrics) / f"{run}.jsonl")

    def fmt(x, digits=3):
        return "—" if x is None else f"{x:.{digits}f}"

    tasks = ["lambada_openai", "hellaswag", "piqa", "arc_easy"]
    print("| row | stage 1 / stage 2 tokens | wall min | held-out L2 | held-out KL | CE | "
          + " | ".join(tasks) + " | note |")
    print("|---|---|---:|---:|---:|---:|" + "---:|" * len(tasks) + "---|")
    for e in table:
        q = " | ".join(fmt(e["quick"].get(t)) for t in tasks)
        print(f"| {e['row']} | {e['stage1_tokens']:,} / {e['stage2_tokens']:,} | {e['wall_min']} | {fmt(e['l2'])} | "
              f"{fmt(e['kl'], 4)} | {fmt(e['ce'])} | {q} | {e['note']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
