"""Kernel speed on this CPU at SmolLM2-135M layer shapes: chunked vs step loop vs the layer's matmuls.

    .venv/bin/python benchmarks/bench_kernels.py [--T 2048] [--threads 2] [--json results/kernels.json]

One time-mix layer: B=1, T=2048, H=9, K=V=64 (hidden 576, 3 KV heads -> k/v projections
576->192), fp32. Reports forward (no_grad) and forward+backward times for chunk_rwkv7,
recurrent_rwkv7, chunk_gla, recurrent_gla, the layer's four projection matmuls (r, k, v, o) and
causal softmax SDPA (9 query heads, 3 KV heads). Each time is the median of --repeats runs after
one warm-up run, with the cases interleaved round by round; the minimum is reported too, because
on a shared machine the median mostly measures the neighbours (the load average before and after
is printed for that reason).
Targets: chunked <= projections, forward and forward+backward; chunked >= 10x faster than the
step loop for forward+backward.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from radlads.runtime import keep_freed_memory
from radlads.ops import chunk_gla, chunk_rwkv7, recurrent_gla, recurrent_rwkv7

B, H, K, HIDDEN, KV_HEADS = 1, 9, 64, 576, 3


def timed_round_robin(cases: dict, repeats: int) -> dict:
    """{name: {phase: fn}} -> {name: {phase: stats}}, each fn run once (warm-up) then `repeats` times.

    Round-robin rather than case after case: on a shared machine the load drifts over a run, and
    interleaving makes every case see the same drift, so their ratios stay meaningful.
    """
    runs = {name: {phase: [] for phase in phases} for name, phases in cases.items()}
    for round_ in range(repeats + 1):
        for name, phases in cases.items():
            for phase, fn in phases.items():
                t0 = time.perf_counter()
                fn()
                if round_:  # round 0 is the warm-up: allocator, thread pool, first-touch pages
                    runs[name][phase].append((time.perf_counter() - t0) * 1000)
    return {name: {phase: {"median_ms": statistics.median(t), "min_ms": min(t), "runs_ms": t}
                   for phase, t in phases.items()} for name, phases in runs.items()}


def rwkv7_inputs(T: int, gen: torch.Generator) -> list[torch.Tensor]:
    """RAD-RWKV7's ranges: log-decay -0.606531·σ(·) in (-0.61, 0), a = -κ̂, b = κ̂·rate."""
    r, k, v = (torch.randn(B, T, H, K, generator=gen) for _ in range(3))
    w = -0.606531 * torch.sigmoid(torch.randn(B, T, H, K, generator=gen))
    kk = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    rate = torch.sigmoid(torch.randn(B, T, H, K, generator=gen))
    return [r, w, k, v, -kk, kk * rate]


def gla_inputs(T: int, gen: torch.Generator) -> list[torch.Tensor]:
    """RAD-RWKV6's range: log-decay -exp(·) clamped at -5."""
    q, k, v = (torch.randn(B, T, H, K, generator=gen) for _ in range(3))
    g = (-torch.exp(torch.randn(B, T, H, K, generator=gen) - 2)).clamp(min=-5)
    return [q, k, v, g]


def kernel_case(kernel, inputs: list[torch.Tensor], scale):
    """(forward, forward+backward) closures; backward is driven by a fixed random output gradient."""
    leaves = [x.clone().requires_grad_() for x in inputs]
    grad_out = torch.randn(inputs[0].shape)  # here K = V, so the output has the inputs' shape

    def forward():
        with torch.no_grad():
            kernel(*inputs, scale=scale)

    def forward_backward():
        o, _ = kernel(*leaves, scale=scale)
        torch.autograd.grad(o, leaves, grad_out)

    return forward, forward_backward


def projections_case(T: int):
    x = torch.randn(B, T, HIDDEN, requires_grad=True)
    r_proj, o_proj = torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.Linear(HIDDEN, HIDDEN)
    k_proj, v_proj = torch.nn.Linear(HIDDEN, HIDDEN // H * KV_HEADS), torch.nn.Linear(HIDDEN, HIDDEN // H * KV_HEADS)
    params = [x, *(p for m in (r_proj, k_proj, v_proj, o_proj) for p in m.parameters())]

    def run():
        # o_proj acts on the time-mix output, an [B, T, 576] tensor like r.
        return o_proj(r_proj(x)), k_proj(x), v_proj(x)

    grads = [torch.randn(B, T, HIDDEN), torch.randn(B, T, 192), torch.randn(B, T, 192)]

    def forward():
        with torch.no_grad():
            run()

    def forward_backward():
        torch.autograd.grad(run(), params, grads)

    return forward, forward_backward


def sdpa_case(T: int):
    q = torch.randn(B, H, T, K, requires_grad=True)
    k, v = (torch.randn(B, KV_HEADS, T, K, requires_grad=True) for _ in range(2))
    grad_out = torch.randn(B, H, T, K)

    def run():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def forward():
        with torch.no_grad():
            run()

    def forward_backward():
        torch.autograd.grad(run(), [q, k, v], grad_out)

    return forward, forward_backward


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--loop-repeats", type=int, default=2, help="repeats for the slow step loops")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    keep_freed_memory()  # as the radlads CLI does: training and prefill run with it
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    T = args.T
    load_before = os.getloadavg()

    rwkv7_x, gla_x = rwkv7_inputs(T, gen), gla_inputs(T, gen)
    cases = {
        "chunk_rwkv7": kernel_case(chunk_rwkv7, rwkv7_x, 1.0),
        "recurrent_rwkv7": kernel_case(recurrent_rwkv7, rwkv7_x, 1.0),
        "chunk_gla": kernel_case(chunk_gla, gla_x, None),
        "recurrent_gla": kernel_case(recurrent_gla, gla_x, None),
        "projections (r,k,v,o)": projections_case(T),
        "softmax SDPA (causal)": sdpa_case(T),
    }
    def phases(name: str) -> dict:
        forward, forward_backward = cases[name]
        return {"forward": forward, "forward_backward": forward_backward}

    loops = [name for name in cases if name.startswith("recurrent")]
    rows = timed_round_robin({name: phases(name) for name in cases if name not in loops}, args.repeats)
    rows.update(timed_round_robin({name: phases(name) for name in loops}, args.loop_repeats))
    rows = {name: rows[name] for name in cases}
    for name, row in rows.items():
        fwd, both = row["forward"], row["forward_backward"]
        print(f"{name:24s} fwd {fwd['median_ms']:8.1f} ms (min {fwd['min_ms']:7.1f})   "
              f"fwd+bwd {both['median_ms']:8.1f} ms (min {both['min_ms']:7.1f})", flush=True)
    load_after = os.getloadavg()

    def ratio(a: str, b: str, phase: str, stat: str = "median_ms") -> float:
        return rows[a][phase][stat] / rows[b][phase][stat]

    proj = "projections (r,k,v,o)"
    summary = {}
    for kind in ("rwkv7", "gla"):
        for phase in ("forward", "forward_backward"):
            for stat in ("median_ms", "min_ms"):
                summary[f"chunk_{kind}_over_projections_{phase}_{stat[:-3]}"] = ratio(f"chunk_{kind}", proj, phase, stat)
        for stat in ("median_ms", "min_ms"):
            summary[f"recurrent_over_chunk_{kind}_forward_backward_{stat[:-3]}"] = ratio(
                f"recurrent_{kind}", f"chunk_{kind}", "forward_backward", stat)

    print(f"\n| B=1, T={T}, H={H}, K=V={K}, fp32, {args.threads} threads | forward ms (median / min) "
          f"| fwd+bwd ms (median / min) |")
    print("|---|---:|---:|")
    for name, row in rows.items():
        f, fb = row["forward"], row["forward_backward"]
        print(f"| {name} | {f['median_ms']:.1f} / {f['min_ms']:.1f} | {fb['median_ms']:.1f} / {fb['min_ms']:.1f} |")
    print()
    for kind in ("rwkv7", "gla"):
        s = {k.replace(f"_{kind}", ""): v for k, v in summary.items() if f"_{kind}_" in k}
        print(f"chunk_{kind} / projections: forward {s['chunk_over_projections_forward_median']:.2f} "
              f"(min-based {s['chunk_over_projections_forward_min']:.2f}), fwd+bwd "
              f"{s['chunk_over_projections_forward_backward_median']:.2f} "
              f"(min-based {s['chunk_over_projections_forward_backward_min']:.2f})   [target <= 1.0]")
        print(f"recurrent_{kind} / chunk_{kind} fwd+bwd: {s['recurrent_over_chunk_forward_backward_median']:.1f}x "
              f"(min-based {s['recurrent_over_chunk_forward_backward_min']:.1f}x)   [target >= 10x]")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"on {os.cpu_count()} CPUs (well above 0 means shared cores: numbers are noisy)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({
                "shape": dict(B=B, T=T, H=H, K=K, V=K, dtype="float32"),
                "threads": args.threads, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                "load_average_before": load_before, "load_average_after": load_after,
                "rows": rows, "summary": summary,
            }, f, indent=2)


if __name__ == "__main__":
    main()
