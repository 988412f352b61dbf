"""MMLU items/s of `radlads eval`'s scoring paths, paired: robust on a shared, loaded machine.

One process loads the model once and scores the same MMLU questions (lm-eval's requests for a
slice of the local file) by each path in turn, for several rounds, so background load hits every
path alike; it prints each path's median items/s and its median per-round speedup over the first.

- `shared`: the path MMLU took before the one-token path: per question, one forward of the
  context through a fresh cache, last position through the head (`_score_shared_context`).
- `batch:R:T`: the one-token path (`_loglikelihood_tokens` today) with at most R rows and T
  tokens (rows x width) per forward.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/mmlu_speed.py smollm2-135m --items 8000:8096 \
        --paths shared,batch:1:100000,batch:8:256,batch:8:512,batch:8:2048 --rounds 3 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def requests_for(lm, items: tuple[int, int], data: Path):
    """lm-eval's loglikelihood requests (key, context tokens, continuation tokens) for MMLU items A:B."""
    from radlads.evaluate import _build_task

    group = _build_task("mmlu", data)["mmlu"]
    reqs = []
    for name, idx in group.select(items).items():
        task = group.tasks[name]
        for i in idx:
            doc = task.eval_docs[i]
            context = task.fewshot_context(doc, 0)
            for choice in task.doc_to_choice(doc):
                ctx, cont = lm._encode_pair(context, " " + choice)
                reqs.append(((context, " " + choice), ctx, cont))
    return reqs


def main() -> int:
    import torch

    from radlads.cpu_matmul import with_onednn_matmul
    from radlads.eval_lm import RadladsLM
    from radlads.eval_tasks import default_eval_data_dir
    from radlads.loading import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--items", default="8000:8096")
    p.add_argument("--paths", default="shared,batch:1:100000,batch:8:256,batch:8:2048")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--eval-data", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    a, b = (int(x) for x in args.items.split(":"))
    data = Path(args.eval_data) if args.eval_data else default_eval_data_dir()
    model, tok = load_model(args.model, torch.float32)
    lm = RadladsLM(model, tok, progress=False)
    reqs = requests_for(lm, (a, b), data)
    n_items = len(reqs) // 4
    by_question = [reqs[i : i + 4] for i in range(0, len(reqs), 4)]

    @with_onednn_matmul
    def run(path: str) -> list[float]:
        if path == "shared":
            out = []
            for q in by_question:
                out += [lp for lp, _ in lm._score_shared_context(list(q[0][1]), [list(r[2]) for r in q])]
            return out
        _, rows, budget = path.split(":")
        lm.batch_size, lm.single_token_batch_tokens = int(rows), int(budget)
        return [lp for lp, _ in lm._loglikelihood_tokens(reqs)]

    paths = args.paths.split(",")
    reference = run(paths[0])  # warm-up, and the log-probs every path must reproduce
    times: dict[str, list[float]] = {path: [] for path in paths}
    load = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for path in paths:
            t = time.perf_counter()
            got = run(path)
            times[path].append(time.perf_counter() - t)
            worst = max(abs(x - y) for x, y in zip(got, reference))
            assert worst < 1e-3, (path, worst)
        load.append(os.getloadavg()[0])
    base = paths[0]
    report = {"model": args.model, "items": args.items, "n_items": n_items,
              "tokens": sum(len(q[0][1]) for q in by_question), "threads": torch.get_num_threads(),
              "load_1min": load, "paths": {}}
    for path in paths:
        speedups = [tb / tp for tb, tp in zip(times[base], times[path])]
        report["paths"][path] = {"seconds": times[path], "items_per_second": n_items / statistics.median(times[path]),
                                 "speedup_vs_" + base: statistics.median(speedups)}
        print(f"{path:>20}: {n_items / statistics.median(times[path]):6.2f} items/s  "
              f"x{statistics.median(speedups):.2f} vs {base}")
    print(f"{n_items} items, {report['tokens']} context tokens, {report['threads']} thread(s), "
          f"load {' '.join(f'{x:.1f}' for x in load)}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
