"""Does MMLU take the one-forward-per-question path for a model's tokenizer?

`radlads eval` scores a question with one forward when every choice is a single token after the
context (radlads.eval_lm). For MMLU that holds when lm-eval's encoding of the continuations " A",
" B", " C", " D" after "...Answer:" is one token each. This prints, for the first N local MMLU
questions, how many have all four choices as single tokens, and the token ids.

    PYTHONPATH=src python benchmarks/mmlu_tokens.py smollm2-135m [--eval-data ../shared/data/eval] [-n 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    import torch

    from radlads.eval_lm import RadladsLM
    from radlads.eval_tasks import build_group, default_eval_data_dir
    from radlads.loading import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="student folder or teacher spec")
    p.add_argument("--eval-data", default=None)
    p.add_argument("-n", type=int, default=200, help="questions to check (from the start of the file)")
    args = p.parse_args()
    data = Path(args.eval_data) if args.eval_data else default_eval_data_dir()
    model, tok = load_model(args.model, torch.float32)
    lm = RadladsLM(model, tok, progress=False)
    _, tasks = build_group("mmlu", data)
    checked = single = 0
    ids = set()
    for task in tasks.values():
        task.set_config(key="num_fewshot", value=0)
        for doc in task.eval_docs:
            if checked >= args.n:
                break
            context = task.fewshot_context(doc, 0)
            encoded = [lm._encode_pair(context, " " + c)[1] for c in task.doc_to_choice(doc)]
            checked += 1
            single += all(len(e) == 1 for e in encoded)
            ids.update(tuple(e) for e in encoded)
    print(f"{args.model}: {single}/{checked} questions have four single-token choices; "
          f"continuation token ids: {sorted(ids)}")
    return 0 if single == checked else 1


if __name__ == "__main__":
    raise SystemExit(main())
