"""Kernel speed on this CPU at SmolLM2-135M layer shapes: chunked vs step loop vs the layer's matmuls.

    .venv/bin/python benchmarks/bench_kernels.py [--T 2048] [--threads 2] [--json results/kernels.json]

One time-mix layer: B=1, T=2048, H=9, K=V=64 (hidden 576, 3 KV heads -> k/v projections
576->192). Reports forward and forward+backward medians for chunk_rwkv7, recurrent_rwkv7,
chunk_gla, recurrent_gla, the four projection matmuls (r, k, v, o) and causal softmax SDPA.
Targets (issue 2): chunked <= projections, fwd and fwd+bwd; chunked >= 10x faster than the step
loop for fwd+bwd.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from radlads.ops import chunk_gla, chunk_rwkv7, recurrent_gla, recurrent_rwkv7


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, thread pool)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--loop-repeats", type=int, default=2, help="repeats for the slow step loops")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, T, H, K, D, KV = 1, args.T, 9, 64, 576, 192

    def rwkv7_args():
        r, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
        v = torch.randn(B, T, H, K)
        w = -0.606531 * torch.sigmoid(torch.randn(B, T, H, K))  # RAD-RWKV7 decay range
        kk = F.normalize(torch.randn(B, T, H, K), dim=-1)
        a = torch.sigmoid(torch.randn(B, T, H, K))
        return [x.requires_grad_() for x in (r, w, k, v, -kk, kk * a)]

    def gla_args():
        q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, K)
        g = -torch.exp(torch.randn(B, T, H, K) - 2).clamp(max=5)
        return [x.requires_grad_() for x in (q, k, v, g)]

    x = torch.randn(B, T, D, requires_grad=True)
    proj = [torch.nn.Linear(D, D), torch.nn.Linear(D, KV), torch.nn.Linear(D, KV), torch.nn.Linear(D, D)]

    def projections():
        r, k, v = proj[0](x), proj[1](x), proj[2](x)
        return proj[3](r) + k.sum() + v.sum()  # o_proj applied to an [B, T, D] tensor, as in the layer

    q_s, k_s, v_s = (torch.randn(B, H, T, K, requires_grad=True) for _ in range(3))

    cases = {
        "chunk_rwkv7": (lambda a: chunk_rwkv7(*a)[0], rwkv7_args),
        "recurrent_rwkv7": (lambda a: recurrent_rwkv7(*a)[0], rwkv7_args),
        "chunk_gla": (lambda a: chunk_gla(*a)[0], gla_args),
        "recurrent_gla": (lambda a: recurrent_gla(*a)[0], gla_args),
        "projections (r,k,v,o)": (lambda a: projections(), lambda: None),
        "softmax SDPA (causal)": (lambda a: F.scaled_dot_product_attention(q_s, k_s, v_s, is_causal=True), lambda: None),
    }
    rows = {}
    for name, (fn, make) in cases.items():
        inputs = make()
        repeats = args.loop_repeats if name.startswith("recurrent") else args.repeats
        with torch.no_grad():
            fwd = timed(lambda: fn(inputs), repeats)
        fwd_bwd = timed(lambda: fn(inputs).sum().backward(), repeats)
        rows[name] = {"forward_ms": fwd, "forward_backward_ms": fwd_bwd}
        print(f"{name:24s} fwd {fwd:8.1f} ms   fwd+bwd {fwd_bwd:8.1f} ms", flush=True)

    proj_row = rows["projections (r,k,v,o)"]
    summary = {
        "chunk_rwkv7_vs_projections_fwd": rows["chunk_rwkv7"]["forward_ms"] / proj_row["forward_ms"],
        "chunk_rwkv7_vs_projections_fwd_bwd": rows["chunk_rwkv7"]["forward_backward_ms"] / proj_row["forward_backward_ms"],
        "rwkv7_loop_over_chunk_fwd_bwd": rows["recurrent_rwkv7"]["forward_backward_ms"] / rows["chunk_rwkv7"]["forward_backward_ms"],
        "gla_loop_over_chunk_fwd_bwd": rows["recurrent_gla"]["forward_backward_ms"] / rows["chunk_gla"]["forward_backward_ms"],
    }
    print(f"\n| kernel (B=1, T={T}, H=9, K=V=64, {args.threads} threads) | forward ms | fwd+bwd ms |")
    print("|---|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['forward_ms']:.1f} | {row['forward_backward_ms']:.1f} |")
    print()
    for key, value in summary.items():
        print(f"{key}: {value:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shape": dict(B=B, T=T, H=H, K=K), "threads": args.threads, "rows": rows, "summary": summary},
                      f, indent=2)


if __name__ == "__main__":
    main()
