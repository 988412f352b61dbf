"""llama.cpp vs PyTorch logits of an exported student on held-out text, and each GGUF's perplexity.

    PYTHONPATH=src python benchmarks/gguf_parity.py STUDENT_FOLDER A.gguf B.gguf ... \
        --data ../shared/data/corpus/wikipedia_en_2015/valid.jsonl.gz --docs 8 --tokens 512 --json out.json

Each of the first --docs documents is cut to --tokens tokens (after a BOS/EOS prefix, as
`radlads ppl` does), read in one pass by the PyTorch student (fp32) and by llama.cpp for each
GGUF; reported per GGUF: max and mean |Δlogit|, max |Δ| relative to the logits' max magnitude,
top-1 agreement, and the token perplexity of each over the same positions. The position of the
largest |Δ| is kept too (to tell one outlier from a general drift).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time

import numpy as np
import torch


def read_docs(path: str, n: int) -> list[str]:
    """The first n documents of a held-out data spec, read as `radlads ppl` reads them."""
    from radlads.data import read_texts

    return [text.strip() for text in itertools.islice(read_texts(path), n)]


def nll_sum(logits: np.ndarray, ids: list[int]) -> float:
    """Sum of -log p(ids[t+1] | ..t) over the positions, from [T, V] logits (float64 log-softmax)."""
    x = torch.from_numpy(logits[:-1]).double()
    target = torch.tensor(ids[1:])
    return float(-torch.log_softmax(x, -1).gather(1, target[:, None]).sum())


def main() -> int:
    from radlads import llama_cpp_run
    from radlads.loading import load_model
    from radlads.ppl import prefix_token_id

    p = argparse.ArgumentParser()
    p.add_argument("student")
    p.add_argument("ggufs", nargs="+")
    p.add_argument("--data", required=True)
    p.add_argument("--docs", type=int, default=8)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = load_model(args.student, torch.float32, quiet=True)
    prefix = prefix_token_id(tok)
    seqs = [[prefix] + tok.encode(d, add_special_tokens=False)[: args.tokens] for d in read_docs(args.data, args.docs)]
    reference = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for ids in seqs:
            reference.append(model(torch.tensor([ids])).logits[0].float().numpy())
    torch_s = time.perf_counter() - t0
    n_scored = sum(len(s) - 1 for s in seqs)
    report = {"student": args.student, "data": args.data, "docs": len(seqs), "tokens_per_doc": args.tokens,
              "scored_tokens": n_scored, "load_average": "/".join(f"{x:.1f}" for x in os.getloadavg()),
              "torch": {"token_perplexity": math.exp(sum(nll_sum(r, s) for r, s in zip(reference, seqs)) / n_scored),
                        "seconds": torch_s},
              "ggufs": {}}
    print(f"PyTorch fp32: token ppl {report['torch']['token_perplexity']:.3f} over {n_scored} tokens")
    for path in args.ggufs:
        llm = llama_cpp_run.load(path, n_ctx=args.tokens + 8, threads=args.threads, logits_all=True)
        max_abs, sum_abs, count, agree, nll, worst = 0.0, 0.0, 0, 0, 0.0, None
        scale = max(float(np.abs(r).max()) for r in reference)
        t0 = time.perf_counter()
        for d, (ids, ref) in enumerate(zip(seqs, reference)):
            got = llama_cpp_run.eval_logits(llm, ids)
            diff = np.abs(got - ref)
            i = np.unravel_index(int(diff.argmax()), diff.shape)
            if float(diff[i]) > max_abs:
                max_abs = float(diff[i])
                worst = {"doc": d, "position": int(i[0]), "token": int(i[1]), "llama_cpp": float(got[i]),
                         "torch": float(ref[i]), "row_max_abs_torch": float(np.abs(ref[i[0]]).max()),
                         "row_mean_abs_diff": float(diff[i[0]].mean())}
            sum_abs += float(diff.sum())
            count += diff.size
            agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
            nll += nll_sum(got, ids)
        row = {"max_abs_diff": max_abs, "mean_abs_diff": sum_abs / count, "max_abs_logit": scale,
               "max_rel_diff": max_abs / scale, "top1_agreement": agree / sum(len(s) for s in seqs),
               "token_perplexity": math.exp(nll / n_scored), "seconds": time.perf_counter() - t0,
               "file_bytes": os.path.getsize(path), "worst": worst}
        report["ggufs"][os.path.basename(path)] = row
        print(f"{os.path.basename(path)}: max|Δ| {max_abs:.4g} ({row['max_rel_diff']:.2g} x max {scale:.3g}), "
              f"mean|Δ| {row['mean_abs_diff']:.4g}, top-1 agreement {row['top1_agreement']:.4f}, "
              f"token ppl {row['token_perplexity']:.3f}; worst {worst}")
        del llm
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
