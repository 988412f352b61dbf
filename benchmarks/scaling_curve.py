"""The scaling curve of the recipe study's best settings: held-out KL and quick-eval ratio against
training tokens (log axis), with the budget a straight-line fit puts at ratio 0.9.

    .venv/bin/python benchmarks/scaling_curve.py configs/scaling/points.yaml --runs ../runs \
        --yardstick 'results/scaling/yardstick-*.json' \
        --quick results/eval-smollm2-final.json results/study/quick-smollm2-135m.lambada-hellaswag.json \
                'results/scaling/quick-*.json' \
        --copy-metrics results/scaling/metrics --json results/scaling/curve.json --png docs/scaling.png

points.yaml lists {point, stage1: RUN, stage2: RUN or null} with RUN relative to --runs. Tokens are
the run's own (metrics.jsonl, or its kept copy under --copy-metrics once the folder is gone). The
ratio is study_table's average ratio over hellaswag / piqa / arc_easy; its error bar is the
students' sampling error only (the teacher's is shared by every point, so it moves the curve, not
its slope). The fit is least squares of ratio on log10(tokens); the budget for a target ratio is
given at the fitted slope and at slope ± one standard error, which is how uncertain a
straight-line extrapolation from a handful of noisy points is.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import yaml

from study_table import RATIO_TASKS, average_ratio, load_many, metrics_path, quick_scores, stage_summary

TARGET_RATIO = 0.9


def ratio_stderr(student_se: dict, teacher: dict, chance: dict) -> float | None:
    if not all(student_se.get(t) is not None and t in teacher and t in chance for t in RATIO_TASKS):
        return None
    return math.sqrt(sum((student_se[t] / (teacher[t] - chance[t])) ** 2 for t in RATIO_TASKS)) / len(RATIO_TASKS)


def line_fit(xs: list[float], ys: list[float]) -> dict | None:
    """Least squares y = a + b·x with the slope's standard error and the means the line passes
    through (None with fewer than 3 points)."""
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    residual = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    return {"intercept": a, "slope": b, "slope_se": math.sqrt(residual / (n - 2) / sxx), "x_mean": mx, "y_mean": my}


def tokens_at(fit: dict, target: float, slope: float) -> float | None:
    """Where the line through the fit's centre with `slope` reaches `target` (None if it never rises)."""
    if slope <= 0:
        return None
    return 10 ** (fit["x_mean"] + (target - fit["y_mean"]) / slope)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("points")
    p.add_argument("--runs", required=True)
    p.add_argument("--yardstick", nargs="+", default=[])
    p.add_argument("--quick", nargs="+", default=[])
    p.add_argument("--teacher", default="smollm2-135m", help="model name of the teacher in the --quick files")
    p.add_argument("--copy-metrics")
    p.add_argument("--json")
    p.add_argument("--png")
    args = p.parse_args(argv)
    runs, kept = Path(args.runs), Path(args.copy_metrics) if args.copy_metrics else None

    yard = load_many(args.yardstick, "students")
    quick, chance, stderr = quick_scores(args.quick)
    teacher = quick.get(args.teacher, {})
    points = []
    for row in yaml.safe_load(Path(args.points).read_text()):
        runs_of_point = [r for r in (row["stage1"], row.get("stage2")) if r]
        summaries = {}
        for run in runs_of_point:
            metrics = metrics_path(runs, kept, run)
            if metrics is None:
                print(f"scaling_curve: {row['point']}: no metrics for {run}; point left out", file=sys.stderr)
                break
            summaries.update(stage_summary(metrics))
            if kept and metrics.parent != kept:
                kept.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(metrics, kept / f"{Path(run).name}.jsonl")
        else:
            final = Path(runs_of_point[-1]).name
            points.append({
                "point": row["point"], "stage1": row["stage1"], "stage2": row.get("stage2"),
                "stage1_tokens": summaries[1]["tokens"], "stage2_tokens": summaries.get(2, {}).get("tokens", 0),
                "tokens": summaries[1]["tokens"] + summaries.get(2, {}).get("tokens", 0),
                "train_minutes": round(sum(s["seconds"] for s in summaries.values()) / 60, 1),
                "kl": yard.get(final, {}).get("kl"), "ce": yard.get(final, {}).get("ce"),
                "quick": quick.get(final, {}),
                "ratio": average_ratio(quick.get(final, {}), teacher, chance),
                "ratio_se": ratio_stderr(stderr.get(final, {}), teacher, chance),
            })

    rated = [q for q in points if q["ratio"] is not None]
    fit = line_fit([math.log10(q["tokens"]) for q in rated], [q["ratio"] for q in rated])
    if fit:
        fit["target_ratio"] = TARGET_RATIO
        fit["tokens_at_target"] = {
            "fitted": tokens_at(fit, TARGET_RATIO, fit["slope"]),
            "slope_plus_se": tokens_at(fit, TARGET_RATIO, fit["slope"] + fit["slope_se"]),
            "slope_minus_se": tokens_at(fit, TARGET_RATIO, fit["slope"] - fit["slope_se"]),
        }

    def fmt(x, digits=3):
        return "—" if x is None else f"{x:.{digits}f}"

    print("| point | stage 1 + stage 2 tokens | train min | held-out KL | CE | "
          + " | ".join(["lambada_openai", *RATIO_TASKS]) + " | avg ratio ± se |")
    print("|---|---|---:|---:|---:|" + "---:|" * (len(RATIO_TASKS) + 2))
    for q in points:
        tasks = " | ".join(fmt(q["quick"].get(t)) for t in ["lambada_openai", *RATIO_TASKS])
        ratio = "—" if q["ratio"] is None else f"{q['ratio']:.3f} ± {fmt(q['ratio_se'])}"
        print(f"| {q['point']} | {q['stage1_tokens']:,} + {q['stage2_tokens']:,} | {q['train_minutes']} | "
              f"{fmt(q['kl'], 4)} | {fmt(q['ce'])} | {tasks} | {ratio} |")
    if fit:
        at = fit["tokens_at_target"]
        print(f"\nratio = {fit['intercept']:.3f} + {fit['slope']:.3f} (± {fit['slope_se']:.3f}) · log10(tokens); "
              f"ratio {TARGET_RATIO} at " + ", ".join(f"{k} {'never' if v is None else f'{v:.3g}'}" for k, v in at.items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"points": points, "fit": fit}, indent=1) + "\n")
    if args.png:
        plot(points, fit, args.png)
    return 0


def plot(points: list[dict], fit: dict | None, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    with_kl = [q for q in points if q["kl"] is not None]
    left.plot([q["tokens"] for q in with_kl], [q["kl"] for q in with_kl], "o-")
    left.set(xscale="log", xlabel="training tokens (stage 1 + stage 2)", ylabel="held-out KL(teacher‖student), nats/token",
             title="yardstick KL (16,384 held-out tokens)")
    rated = [q for q in points if q["ratio"] is not None]
    right.errorbar([q["tokens"] for q in rated], [q["ratio"] for q in rated],
                   yerr=[q["ratio_se"] or 0 for q in rated], fmt="o", capsize=3, label="measured (± 1 se)")
    right.axhline(TARGET_RATIO, color="grey", ls=":", label=f"ratio {TARGET_RATIO}")
    if fit:
        top = fit["tokens_at_target"]["fitted"] or max(q["tokens"] for q in rated) * 10
        xs = [min(q["tokens"] for q in rated) * 10 ** (i / 20) for i in range(200)]
        xs = [x for x in xs if x <= top * 1.5]
        right.plot(xs, [fit["intercept"] + fit["slope"] * math.log10(x) for x in xs], "--",
                   label=f"fit: {fit['slope']:.3f} ± {fit['slope_se']:.3f} per decade")
    for q in with_kl:
        left.annotate(f"{q['stage2_tokens'] // 2048}", (q["tokens"], q["kl"]), textcoords="offset points", xytext=(4, 4))
    right.set(xscale="log", xlabel="training tokens (stage 1 + stage 2)", ylabel="average ratio (hellaswag, piqa, arc_easy)",
              title="quick-eval quality ratio vs the teacher")
    right.legend(loc="upper left", fontsize=8)
    left.text(0.98, 0.95, "labels: stage-2 steps", transform=left.transAxes, ha="right", va="top", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
