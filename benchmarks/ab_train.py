"""Interleaved A/B of benchmarks/bench_train.py: arms differ only in environment variables.

    PYTHONPATH=src .venv/bin/python benchmarks/ab_train.py --arm old:RADLADS_ONEDNN_MATMUL=0 \
        --arm new: --repeats 3 --json results/ab.json -- --stages 1,2 --threads 1 --steps 4 --dtypes fp32

Each repeat runs every arm once, as its own bench_train.py process (the order alternates between
repeats, so a drifting machine load hits every arm alike), and records the load average before and
after each run. Prints per arm and stage the median and the best tokens/s over the repeats.
Arguments after `--` go to bench_train.py unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_arm(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    env = {}
    for item in filter(None, assignments.split(",")):
        key, _, value = item.partition("=")
        env[key] = value
    return name, env


def main() -> None:
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arm", action="append", required=True, help="NAME:VAR=VALUE,VAR=VALUE (may be empty)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    arms = [parse_arm(a) for a in args.arm]
    runs = []
    for r in range(args.repeats):
        order = arms if r % 2 == 0 else arms[::-1]
        for name, env in order:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "row.json"
                load_before, t0 = os.getloadavg(), time.time()
                proc = subprocess.run([sys.executable, str(HERE / "bench_train.py"), *rest, "--json", str(out)],
                                      env={**os.environ, **env}, capture_output=True, text=True)
                load_after = os.getloadavg()
                if proc.returncode != 0:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"arm {name} failed")
                rows = json.loads(out.read_text())
            run = {"arm": name, "env": env, "repeat": r, "rows": rows, "wall_s": round(time.time() - t0, 1),
                   "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after]}
            runs.append(run)
            cells = " ".join(f"{k}={v:.1f}" for row in rows for k, v in row.items()
                             if k.endswith("_tok_s"))
            print(f"repeat {r} {name:10} {cells}  load {run['load_before']} -> {run['load_after']}", flush=True)
    summary = {}
    for name, _ in arms:
        keys = sorted({k for run in runs if run["arm"] == name for row in run["rows"] for k in row
                       if k.endswith("_tok_s")})
        for key in keys:
            values = [row[key] for run in runs if run["arm"] == name for row in run["rows"] if key in row]
            summary.setdefault(name, {})[key] = {"median": statistics.median(values), "max": max(values),
                                                 "min": min(values), "values": values}
    print()
    for name, row in summary.items():
        for key, s in row.items():
            print(f"{name:10} {key:22} median {s['median']:7.1f}  best {s['max']:7.1f}  worst {s['min']:7.1f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"bench_args": rest, "arms": dict(arms), "runs": runs,
                                               "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
