"""Loss curves from a run's metrics.jsonl: one panel per stage, training loss (and its moving
average) and held-out loss against tokens, learning rate on a second axis.

    .venv/bin/python benchmarks/plot_metrics.py runs/smollm2-rwkv7/metrics.jsonl [-o curves.png] [--smooth 20]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a training box
import matplotlib.pyplot as plt

LOSS_NAMES = {1: "attention L2", 2: "KL(teacher || student)", 3: "loss (CE / KL mix)"}


def read(path: Path) -> dict[int, list[dict]]:
    stages: dict[int, list[dict]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            stages.setdefault(row["stage"], []).append(row)
    if not stages:
        raise SystemExit(f"{path} holds no metrics")
    return stages


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot(stages: dict[int, list[dict]], out: Path, smooth: int) -> Path:
    fig, axes = plt.subplots(1, len(stages), figsize=(5.5 * len(stages), 4), squeeze=False)
    for ax, (stage, rows) in zip(axes[0], sorted(stages.items())):
        tokens = [r["tokens"] / 1e6 for r in rows]
        loss = [r["loss"] for r in rows]
        ax.plot(tokens, loss, color="tab:blue", alpha=0.3, lw=1, label="train")
        if len(rows) > smooth:
            ax.plot(tokens, moving_average(loss, smooth), color="tab:blue", lw=2, label=f"train ({smooth}-step mean)")
        val = [(r["tokens"] / 1e6, r["val_loss"]) for r in rows if "val_loss" in r]
        if val:
            ax.plot(*zip(*val), "o-", color="tab:orange", lw=2, ms=4, label="held-out")
        ax.set_yscale("log")
        ax.set_xlabel("tokens (M)")
        ax.set_ylabel(LOSS_NAMES.get(stage, "loss"))
        ax.set_title(f"stage {stage}: {len(rows)} steps, {rows[-1]['elapsed_s'] / 60:.0f} min")
        ax.grid(alpha=0.3, which="both")
        lr_ax = ax.twinx()
        lrs = [r["lr"] for r in rows]
        lr_ax.plot(tokens, lrs, color="gray", ls="--", lw=1)
        lr_ax.set_ylim(0, max(lrs) * 1.15)  # from zero, so a flat schedule reads as flat
        lr_ax.set_ylabel("learning rate", color="gray")
        lr_ax.tick_params(axis="y", colors="gray")
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("metrics", type=Path, help="metrics.jsonl (or a run folder holding one)")
    p.add_argument("-o", "--out", type=Path, help="PNG to write (default: loss_curves.png beside the metrics)")
    p.add_argument("--smooth", type=int, default=20, help="moving-average window in steps")
    args = p.parse_args()
    path = args.metrics / "metrics.jsonl" if args.metrics.is_dir() else args.metrics
    out = plot(read(path), args.out or path.with_name("loss_curves.png"), max(1, args.smooth))
    print(out)


if __name__ == "__main__":
    main()
