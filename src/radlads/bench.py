"""Prefill speed, decode speed, peak memory and cache size per context length (`radlads bench`).

For each model and context length L:
  - prefill: L random token ids (seeded; the content does not change the cost of either kind of
    model) go through the model, in one forward by default or in --prefill-chunk pieces through
    the cache; reported as tokens/s.
  - decode: --decode-tokens greedy steps, each one token through the cache (the student's
    recurrent state, the teacher's KV cache) left by that prefill; reported as the median ms/token.
  - state bytes: the size of that cache after prefill (student: the fixed recurrent state plus
    the KV of any softmax layers it kept; teacher: every layer's K and V tensors).
  - peak RSS: the process's resident-set high-water mark (Linux VmHWM) over prefill + decode.
    Each (model, context) runs in a fresh worker process that loads the model, warms it up, and
    resets VmHWM (`echo 5 > /proc/self/clear_refs`) just before measuring, so the peak includes
    the resident weights but neither the load nor any other context. Where the reset is not
    allowed, a thread samples RSS every millisecond instead (it can miss very short spikes).
    --in-process measures every context in this process instead: faster, but memory the allocator
    keeps from one context may show up in the next one's peak.

A teacher is not run on contexts longer than its max_position_embeddings (noted, not an error).

--backend llama.cpp measures GGUF files (`radlads export-gguf`, or a teacher's GGUF) in llama.cpp
through llama-cpp-python instead, the same way: fresh worker per context, the same random ids,
prefill through llama.cpp's batched decode (n_batch 512), decode one token per call, greedy on the
raw logits; the state is llama.cpp's per-sequence state size (recurrent state, or the K/V cache of
the tokens read).

--paired (with --vs) adds one more worker that loads both models and takes their decode steps in
turn at the largest context both ran (`paired_decode`): the speedup from such pairs is what to
trust on a shared machine, where the two separate per-context runs see different background load.
"""

from __future__ import annotations

import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from radlads.dtypes import torch_dtype
from radlads.errors import RadladsError
from radlads.loading import load_model
from radlads.scoring import context_limit, forward_cached, is_recurrent, skip_reason

FLATNESS_TARGET = 1.15  # student decode max/min across contexts: within 15%
SPEEDUP_TARGET = 5.0  # student decode speedup over the teacher at the largest context
# llama.cpp rows (issue #13): decode flat within ±10% (max/min <= 1.10 is the strict reading) and
# >= 3x the teacher's decode speed at the largest context, at equal weight type.
LLAMA_CPP_TARGETS = (1.10, 3.0)
WARMUP_TOKENS = 16  # a short forward before measuring, so one-time initialisation is not timed
CONTEXT_SEED = 0


# --------------------------------------------------------------------------------------------
# Cache size
# --------------------------------------------------------------------------------------------


def cache_nbytes(cache) -> int:
    """Bytes held by a decoding cache: RadladsCache.nbytes(), or a transformers cache's K/V tensors."""
    if cache is None:
        return 0
    if callable(getattr(cache, "nbytes", None)):
        return int(cache.nbytes())
    if hasattr(cache, "layers"):
        total = 0
        for layer in cache.layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total
    if isinstance(cache, (tuple, list)):  # legacy tuple-of-tuples KV cache
        return sum(cache_nbytes(x) if not isinstance(x, torch.Tensor) else x.numel() * x.element_size() for x in cache)
    raise TypeError(f"cannot size a cache of type {type(cache).__name__}")


# --------------------------------------------------------------------------------------------
# Memory: resident-set high-water mark
# --------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def current_rss() -> int:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil

    return psutil.Process().memory_info().rss


class PeakRSS:
    """Resident-set high-water mark over a `with` block (see the module docstring for the method)."""

    def __init__(self, sample_interval: float = 0.001):
        self.interval = sample_interval
        self.method = ""
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        gc.collect()
        self.start_rss = current_rss()
        if self._reset_hwm():
            self.method = "VmHWM reset via /proc/self/clear_refs"
        else:
            self.method = f"RSS sampled every {self.interval * 1000:g} ms"
            self.peak = self.start_rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, current_rss())
        else:
            self.peak = (_status_kb("VmHWM") or 0) * 1024
        return False

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # 5 = reset the peak resident set size (Linux >= 4.0)
        except OSError:
            return False
        hwm, rss = _status_kb("VmHWM"), _status_kb("VmRSS")
        # A successful reset leaves the high-water mark at (about) the current RSS.
        return hwm is not None and rss is not None and hwm <= rss * 1.05 + 1024

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss())


# --------------------------------------------------------------------------------------------
# One measurement
# --------------------------------------------------------------------------------------------


def random_context(vocab_size: int, length: int, seed: int = CONTEXT_SEED) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (1, length), generator=g)


def _vocab_size(model) -> int:
    return int(model.get_input_embeddings().num_embeddings)


@torch.no_grad()
def measure_context(model, context: int, decode_tokens: int, prefill_chunk: int = 0) -> dict:
    """Prefill `context` random tokens, then decode greedily; timings, cache size and peak RSS."""
    vocab = _vocab_size(model)
    forward_cached(model, random_context(vocab, WARMUP_TOKENS, seed=CONTEXT_SEED + 1))  # warm-up
    ids = random_context(vocab, context)
    chunk = prefill_chunk if prefill_chunk > 0 else context
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        next_id, cache = _prefill(model, ids, chunk)
        prefill_s = time.perf_counter() - t0
        state_bytes = cache_nbytes(cache)
        step_ms = []
        for _ in range(decode_tokens):
            ms, next_id, cache = _timed_step(model, next_id, cache)
            step_ms.append(ms)
        del cache
    return {
        "context": context,
        "prefill_s": prefill_s,
        "prefill_tokens_per_s": context / prefill_s,
        "decode_ms_per_token": statistics.median(step_ms),
        "decode_ms": step_ms,
        "state_bytes": state_bytes,
        "peak_rss_bytes": mem.peak,
        "rss_before_bytes": mem.start_rss,
        "memory_method": mem.method,
        "skipped": None,
    }


def _prefill(model, ids: torch.Tensor, chunk: int):
    """(greedy next token, cache) after reading `ids` in pieces of `chunk` tokens."""
    cache = None
    for c0 in range(0, ids.shape[1], chunk):
        logits, cache = forward_cached(model, ids[:, c0 : c0 + chunk], cache)
    return logits[:, -1:].argmax(-1), cache


def _timed_step(model, next_id: torch.Tensor, cache):
    """One greedy decode step: (milliseconds, the token it picked, the cache)."""
    t0 = time.perf_counter()
    logits, cache = forward_cached(model, next_id, cache)
    next_id = logits[:, -1:].argmax(-1)
    return (time.perf_counter() - t0) * 1000, next_id, cache


@torch.no_grad()
def paired_decode(model, other, context: int, steps: int, prefill_chunk: int = 0) -> dict:
    """Decode speedup of `model` over `other` from steps taken in turn, in one process.

    Both read the same random context, then take `steps` pairs of greedy steps, one of each model
    per pair (which goes first alternates, so neither always follows the other). The speedup is
    the median over pairs of other_ms / model_ms. On a shared machine the slowdowns from other
    processes last far longer than one step, so they hit both halves of a pair alike and mostly
    cancel in the ratio; two medians measured minutes apart (the per-context runs) do not pair up
    like that, and their ratio moves with whatever else ran in each window.
    """
    ids = random_context(_vocab_size(model), context)
    chunk = prefill_chunk if prefill_chunk > 0 else context
    for m in (model, other):
        forward_cached(m, random_context(_vocab_size(m), WARMUP_TOKENS, seed=CONTEXT_SEED + 1))
    states = [list(_prefill(m, ids, chunk)) for m in (model, other)]  # [next_id, cache] each
    ms = [[], []]
    for step in range(steps):
        for i in ((0, 1) if step % 2 == 0 else (1, 0)):
            t, states[i][0], states[i][1] = _timed_step((model, other)[i], *states[i])
            ms[i].append(t)
    ratios = [b / a for a, b in zip(*ms)]
    return {
        "context": context,
        "steps": steps,
        "decode_ms": ms[0],
        "vs_decode_ms": ms[1],
        "ratios": ratios,
        "decode": statistics.median(ratios),
        "decode_ms_per_token": statistics.median(ms[0]),
        "vs_decode_ms_per_token": statistics.median(ms[1]),
    }


def bench_model(model, contexts: list[int], decode_tokens: int, prefill_chunk: int = 0,
                past_limit: bool = False) -> list[dict]:
    """Every context for one already-loaded model (the --in-process path)."""
    limit = context_limit(model)
    rows = []
    for context in contexts:
        reason = skip_reason(limit, context, past_limit)
        if reason:
            rows.append({"context": context, "skipped": reason})
            continue
        rows.append(_mark_past_limit(measure_context(model, context, decode_tokens, prefill_chunk), limit))
        gc.collect()
    return rows


def _mark_past_limit(row: dict, limit: int | None) -> dict:
    row["past_context_limit"] = limit is not None and row["context"] > limit
    return row


@torch.no_grad()
def measure_context_llama(llm, context: int, decode_tokens: int) -> dict:
    """measure_context for a llama_cpp.Llama (see radlads.llama_cpp_run)."""
    from radlads import llama_cpp_run

    vocab = llm.n_vocab()
    llama_cpp_run.prefill(llm, random_context(vocab, WARMUP_TOKENS, seed=CONTEXT_SEED + 1)[0].tolist())  # warm-up
    ids = random_context(vocab, context)[0].tolist()
    with PeakRSS() as mem:
        prefill_s, next_id = llama_cpp_run.prefill(llm, ids)
        state = llama_cpp_run.state_bytes(llm)
        step_ms = []
        for _ in range(decode_tokens):
            ms, next_id = llama_cpp_run.timed_step(llm, next_id)
            step_ms.append(ms)
    return {
        "context": context, "prefill_s": prefill_s, "prefill_tokens_per_s": context / prefill_s,
        "decode_ms_per_token": statistics.median(step_ms), "decode_ms": step_ms, "state_bytes": state,
        "peak_rss_bytes": mem.peak, "rss_before_bytes": mem.start_rss, "memory_method": mem.method,
        "skipped": None,
    }


def paired_decode_llama(llm, other, context: int, steps: int) -> dict:
    """paired_decode for two llama_cpp.Llama models."""
    from radlads import llama_cpp_run

    ids = random_context(llm.n_vocab(), context)[0].tolist()
    states = [llama_cpp_run.prefill(m, ids)[1] for m in (llm, other)]
    ms = [[], []]
    for step in range(steps):
        for i in ((0, 1) if step % 2 == 0 else (1, 0)):
            t, states[i] = llama_cpp_run.timed_step((llm, other)[i], states[i])
            ms[i].append(t)
    ratios = [b / a for a, b in zip(*ms)]
    return {"context": context, "steps": steps, "decode_ms": ms[0], "vs_decode_ms": ms[1], "ratios": ratios,
            "decode": statistics.median(ratios), "decode_ms_per_token": statistics.median(ms[0]),
            "vs_decode_ms_per_token": statistics.median(ms[1])}


def _load_llama(spec: str, context: int, decode_tokens: int, threads: int | None, flash_attn: bool):
    from radlads import llama_cpp_run

    n_ctx = context + decode_tokens + WARMUP_TOKENS + 16
    return llama_cpp_run.load(spec, n_ctx=n_ctx, threads=threads or 1, flash_attn=flash_attn)


def _model_info(model) -> dict:
    return {
        "recurrent": is_recurrent(model),
        "model_type": getattr(model.config, "model_type", None),
        "context_limit": context_limit(model),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


# --------------------------------------------------------------------------------------------
# Worker processes: one per (model, context)
# --------------------------------------------------------------------------------------------


def _worker(job_file: str) -> int:
    """Entry point of `python -m radlads.bench JOB.json`: measure one context, write the result."""
    job = json.loads(Path(job_file).read_text())
    try:
        if job.get("backend") == "llama.cpp":
            return _worker_llama(job)
        if job.get("threads"):
            torch.set_num_threads(job["threads"])
        model, _ = load_model(job["spec"], torch_dtype(job["dtype"]), quiet=True)
        if job.get("paired_with"):
            other, _ = load_model(job["paired_with"], torch_dtype(job["dtype"]), quiet=True)
            paired = paired_decode(model, other, job["context"], job["decode_tokens"], job["prefill_chunk"])
            Path(job["out"]).write_text(json.dumps({"paired": paired}))
            return 0
        result = {"info": _model_info(model), "threads": torch.get_num_threads()}
        limit = result["info"]["context_limit"]
        reason = skip_reason(limit, job["context"], job.get("past_limit", False))
        if reason:
            result["row"] = {"context": job["context"], "skipped": reason}
        else:
            result["row"] = _mark_past_limit(
                measure_context(model, job["context"], job["decode_tokens"], job["prefill_chunk"]), limit)
    except RadladsError as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    Path(job["out"]).write_text(json.dumps(result))
    return 0


def _worker_llama(job: dict) -> int:
    from radlads import llama_cpp_run

    args = (job["context"], job["decode_tokens"], job.get("threads"), job.get("flash_attn", False))
    llm = _load_llama(job["spec"], *args)
    if job.get("paired_with"):
        other = _load_llama(job["paired_with"], *args)
        paired = paired_decode_llama(llm, other, job["context"], job["decode_tokens"])
        Path(job["out"]).write_text(json.dumps({"paired": paired}))
        return 0
    result = {"info": llama_cpp_run.model_info(llm), "threads": job.get("threads") or 1}
    result["info"]["flash_attn"] = job.get("flash_attn", False)
    limit = result["info"]["context_limit"]
    reason = skip_reason(limit, job["context"], job.get("past_limit", False))
    if reason:
        result["row"] = {"context": job["context"], "skipped": reason}
    else:
        result["row"] = _mark_past_limit(measure_context_llama(llm, job["context"], job["decode_tokens"]), limit)
    Path(job["out"]).write_text(json.dumps(result))
    return 0


def _run_worker(spec: str, context: int, settings: BenchSettings, paired_with: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="radlads-bench-") as tmp:
        job = {
            "spec": spec, "context": context, "decode_tokens": settings.decode_tokens, "dtype": settings.dtype,
            "threads": settings.threads, "prefill_chunk": settings.prefill_chunk,
            "past_limit": settings.past_context_limit, "paired_with": paired_with,
            "backend": settings.backend, "flash_attn": settings.flash_attn,
            "out": str(Path(tmp) / "result.json"),
        }
        job_file = Path(tmp) / "job.json"
        job_file.write_text(json.dumps(job))
        proc = subprocess.run([sys.executable, "-m", "radlads.bench", str(job_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            last = lines[-1] if lines else f"exit code {proc.returncode}"
            if proc.returncode == RadladsError.exit_code:
                raise RadladsError(last)
            raise RuntimeError(f"bench worker for {spec} at context {context} failed: {last}")
        return json.loads(Path(job["out"]).read_text())


def bench_spec_subprocess(spec: str, settings: BenchSettings) -> tuple[dict, list[dict], int]:
    """(model info, rows, threads) for one model spec, each context in a fresh worker process."""
    info, rows, threads = None, [], None
    for context in settings.contexts:  # ascending: the first worker tells us the teacher's limit
        reason = skip_reason(info["context_limit"], context, settings.past_context_limit) if info else None
        if reason:
            rows.append({"context": context, "skipped": reason})
            continue
        result = _run_worker(spec, context, settings)
        info, threads = result["info"], result["threads"]
        rows.append(result["row"])
    return info, rows, threads


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f}"


def markdown_table(models: list[dict]) -> str:
    lines = [
        "| model | context | prefill tok/s | decode ms/token | peak RSS MiB | state/KV MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in models:
        for r in m["rows"]:
            if r.get("skipped"):
                lines.append(f"| {m['label']} | {r['context']} | – | – | – | skipped: {r['skipped']} |")
                continue
            past = " (past its context limit)" if r.get("past_context_limit") else ""
            lines.append(
                f"| {m['label']} | {r['context']}{past} | {r['prefill_tokens_per_s']:,.0f} | "
                f"{r['decode_ms_per_token']:.2f} | {_mib(r['peak_rss_bytes'])} | {_mib(r['state_bytes'])} |"
            )
    return "\n".join(lines)


def _measured(rows: list[dict]) -> dict[int, dict]:
    return {r["context"]: r for r in rows if not r.get("skipped")}


def summarize(models: list[dict], backend: str = "torch") -> dict:
    """Decode flatness (max/min ms/token across contexts) per model; speedup of MODEL over --vs."""
    flat_target, speed_target = LLAMA_CPP_TARGETS if backend == "llama.cpp" else (FLATNESS_TARGET, SPEEDUP_TARGET)
    summary = {"flatness": {}, "flatness_target": flat_target, "speedup_target": speed_target}
    for m in models:
        ms = [r["decode_ms_per_token"] for r in _measured(m["rows"]).values()]
        if len(ms) >= 2:
            summary["flatness"][m["label"]] = max(ms) / min(ms)
    if len(models) == 2:
        main, other = (_measured(m["rows"]) for m in models)
        common = sorted(set(main) & set(other))
        if common:
            c = common[-1]
            summary["speedup"] = {
                "context": c,
                "decode": other[c]["decode_ms_per_token"] / main[c]["decode_ms_per_token"],
                "prefill": main[c]["prefill_tokens_per_s"] / other[c]["prefill_tokens_per_s"],
                "state_bytes_ratio": other[c]["state_bytes"] / max(main[c]["state_bytes"], 1),
            }
    return summary


def summary_lines(models: list[dict], summary: dict, contexts: list[int]) -> list[str]:
    FLATNESS_TARGET, SPEEDUP_TARGET = summary["flatness_target"], summary["speedup_target"]  # noqa: N806
    lines = []
    for m in models:
        flat = summary["flatness"].get(m["label"])
        if flat is None:
            continue
        target = ""
        if m["recurrent"]:
            ok = "ok" if flat <= FLATNESS_TARGET else "MISSED"
            target = f" (target <= {FLATNESS_TARGET:.2f}: {ok})"
        lines.append(f"{m['label']}: decode ms/token max/min across contexts = {flat:.2f}{target}")
    sp = summary.get("speedup")
    if sp:
        note = "" if sp["context"] == max(contexts) else f" (largest context both ran; {max(contexts)} was skipped for one)"
        ok = "ok" if sp["decode"] >= SPEEDUP_TARGET else "MISSED"
        lines.append(
            f"{models[0]['label']} vs {models[1]['label']} at context {sp['context']}{note}: decode "
            f"speedup {sp['decode']:.2f}x (target >= {SPEEDUP_TARGET:g}x: {ok}), prefill speedup {sp['prefill']:.2f}x, "
            f"state/KV bytes {sp['state_bytes_ratio']:.1f}x smaller"
        )
    elif len(models) == 2:
        lines.append("no context was measured for both models: no speedup to report")
    paired = summary.get("paired")
    if paired:
        ok = "ok" if paired["decode"] >= SPEEDUP_TARGET else "MISSED"
        lines.append(
            f"paired decode at context {paired['context']} ({paired['steps']} steps of each, taken in turn in one "
            f"process): speedup {paired['decode']:.2f}x (target >= {SPEEDUP_TARGET:g}x: {ok}); "
            f"{paired['decode_ms_per_token']:.2f} vs {paired['vs_decode_ms_per_token']:.2f} ms/token"
        )
    return lines


def plot(models: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ms, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    for m in models:
        rows = sorted(_measured(m["rows"]).values(), key=lambda r: r["context"])
        if not rows:
            continue
        x = [r["context"] for r in rows]
        ax_ms.plot(x, [r["decode_ms_per_token"] for r in rows], marker="o", label=m["label"])
        ax_mem.plot(x, [r["state_bytes"] / 2**20 for r in rows], marker="o", label=m["label"])
    for ax, title, ylabel in ((ax_ms, "decode time per token", "ms / token"),
                              (ax_mem, "state / KV cache after prefill", "MiB")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_mem.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# The whole measurement
# --------------------------------------------------------------------------------------------


@dataclass
class BenchSettings:
    contexts: list[int]  # ascending
    decode_tokens: int = 32
    prefill_chunk: int = 0
    dtype: str = "fp32"
    threads: int | None = None
    past_context_limit: bool = False
    in_process: bool = False
    paired: bool = False
    backend: str = "torch"  # or "llama.cpp": GGUF files through llama-cpp-python
    flash_attn: bool = False  # llama.cpp only: flash attention for transformer GGUFs


def load_average() -> str:
    """1/5/15-minute load averages: other processes competing for the cores skew every timing."""
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def check_spec(spec: str, backend: str = "torch") -> None:
    """Fail fast on a model that does not exist, before any (slow) worker starts."""
    from radlads.loading import is_student_dir

    if backend == "llama.cpp":
        if not (Path(spec).is_file() and Path(spec).suffix.lower() == ".gguf"):
            raise RadladsError(f"--backend llama.cpp measures .gguf files (make one with radlads export-gguf); "
                               f"{spec} is not one")
        from radlads.llama_cpp_run import import_llama_cpp

        import_llama_cpp()
        return

    if not is_student_dir(spec):
        from radlads.teachers import resolve_teacher

        resolve_teacher(spec)


def _load_in_process(spec: str, settings: BenchSettings):
    if settings.threads:
        torch.set_num_threads(settings.threads)
    return load_model(spec, torch_dtype(settings.dtype), quiet=True)[0]


def run_bench(specs: list[str], settings: BenchSettings) -> dict:
    """Every context for each model (the first is the one measured, a second the one it is compared
    with), the summary, and with `paired` the paired decode run: the report `--json` writes."""
    from radlads.loading import model_label

    for spec in specs:
        check_spec(spec, settings.backend)
    if settings.backend == "llama.cpp" and settings.in_process:
        raise RadladsError("--in-process is for the torch backend; llama.cpp rows always run one process per context")
    models = []
    for spec in specs:
        if settings.in_process:
            model = _load_in_process(spec, settings)
            rows = bench_model(model, settings.contexts, settings.decode_tokens, settings.prefill_chunk,
                               settings.past_context_limit)
            info, threads = _model_info(model), torch.get_num_threads()
            del model
            gc.collect()
        else:
            info, rows, threads = bench_spec_subprocess(spec, settings)
        models.append({"label": model_label(spec), "spec": spec, **info, "threads": threads, "rows": rows})
        for r in rows:
            if r.get("skipped"):
                print(f"note: {model_label(spec)} skipped at {r['context']}: {r['skipped']}", file=sys.stderr)

    summary = summarize(models, settings.backend)
    if settings.paired and "speedup" in summary:
        context = summary["speedup"]["context"]
        if settings.in_process:
            model, other = (_load_in_process(spec, settings) for spec in specs)
            summary["paired"] = paired_decode(model, other, context, settings.decode_tokens, settings.prefill_chunk)
            del model, other
        else:
            summary["paired"] = _run_worker(specs[0], context, settings, paired_with=specs[1])["paired"]
    method = next((r["memory_method"] for m in models for r in m["rows"] if not r.get("skipped")), None)
    return {
        "contexts": settings.contexts, "decode_tokens": settings.decode_tokens, "dtype": settings.dtype,
        "prefill_chunk": settings.prefill_chunk, "isolation": "in-process" if settings.in_process else "subprocess",
        "memory_method": method, "context_tokens": f"random ids, seed {CONTEXT_SEED}",
        "load_average_after": load_average(), "cpu_count": os.cpu_count(), "backend": settings.backend,
        "models": models, "summary": summary,
    }


def _backend_text(report: dict) -> str:
    if report.get("backend") == "llama.cpp":
        import gguf

        def name(t):
            try:
                return gguf.LlamaFileType(int(t)).name
            except (TypeError, ValueError):
                return str(t)

        types = ", ".join(f"{m['label']} {name(m.get('file_type'))}" for m in report["models"])
        return f"llama.cpp ({types})"
    return f"dtype {report['dtype']}"


def report_text(report: dict) -> str:
    """The table, the line saying how it was measured, and the targets met or missed."""
    models = report["models"]
    lines = [markdown_table(models), "",
             f"context = random token ids (seed {CONTEXT_SEED}); decode = median of {report['decode_tokens']} greedy "
             f"steps; {_backend_text(report)}; threads {models[0]['threads']}; peak RSS: "
             f"{'one process per context' if report['isolation'] == 'subprocess' else 'in-process'}, "
             f"{report['memory_method']}; load average {report['load_average_after']} (timings are noisy on a busy "
             f"machine)"]
    return "\n".join(lines + summary_lines(models, report["summary"], report["contexts"]))


if __name__ == "__main__":
    raise SystemExit(_worker(sys.argv[1]))
