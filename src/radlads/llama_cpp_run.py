"""Run a GGUF in llama.cpp through llama-cpp-python: per-position logits, greedy decoding, timing.

The one place radlads talks to llama.cpp (export-gguf's parity checks, `bench --backend llama.cpp`,
the measurement scripts). llama-cpp-python is the optional `gguf` extra; without it these raise
RadladsError saying how to install it.
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

from radlads.errors import RadladsError


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise RadladsError("llama.cpp runs need llama-cpp-python: pip install -e '.[gguf]' "
                           "(builds llama.cpp from source, about 6 minutes on 2 cores)") from None
    return llama_cpp


@contextlib.contextmanager
def _quiet_stderr():
    """llama.cpp logs model loading to fd 2 even with verbose=False in some paths; keep it off the terminal."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def load(path, n_ctx: int = 4096, threads: int = 1, logits_all: bool = False, n_batch: int = 512,
         flash_attn: bool = False):
    """A llama_cpp.Llama for the GGUF at `path` (CPU, `threads` threads for decode and prefill)."""
    llama_cpp = import_llama_cpp()
    with _quiet_stderr():
        try:
            return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                                   n_threads=threads, n_threads_batch=threads, logits_all=logits_all,
                                   n_gpu_layers=0, flash_attn=flash_attn, verbose=False)
        except ValueError as e:
            raise RadladsError(f"llama.cpp cannot load {path}: {e}") from e


def eval_logits(llm, ids, reset: bool = True) -> np.ndarray:
    """[len(ids), vocab] float32 logits of every position (the Llama must have logits_all=True)."""
    if reset:
        llm.reset()
    start = llm.n_tokens
    llm.eval(list(map(int, ids)))
    return np.array(llm.scores[start : llm.n_tokens], dtype=np.float32)


def last_logits(llm) -> np.ndarray:
    """The logits of the last evaluated token (works with logits_all=False)."""
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def greedy(llm, ids, steps: int) -> list[int]:
    """Greedy continuation of `ids` for `steps` tokens (argmax of the raw logits, no sampler)."""
    llm.reset()
    llm.eval(list(map(int, ids)))
    out = []
    for _ in range(steps):
        nxt = int(np.argmax(last_logits(llm)))
        out.append(nxt)
        llm.eval([nxt])
    return out


# --------------------------------------------------------------------------------------------
# Timing (radlads bench --backend llama.cpp)
# --------------------------------------------------------------------------------------------

RECURRENT_ARCHS = ("arwkv7", "rwkv6qwen2", "rwkv7", "rwkv6")


def model_info(llm) -> dict:
    import llama_cpp

    meta = llm.metadata
    arch = meta.get("general.architecture")
    recurrent = arch in RECURRENT_ARCHS
    n_ctx_train = int(meta.get(f"{arch}.context_length", 0)) or None
    return {"recurrent": recurrent, "model_type": arch, "context_limit": None if recurrent else n_ctx_train,
            "parameters": int(llama_cpp.llama_model_n_params(llm.model)),
            "weight_bytes": int(llama_cpp.llama_model_size(llm.model)),
            "file_type": meta.get("general.file_type"), "backend": "llama.cpp",
            "llama_cpp_python": llama_cpp.__version__}


def state_bytes(llm) -> int:
    """Bytes of sequence 0's state (RWKV: the recurrent state; a transformer: the K/V of its tokens)."""
    import llama_cpp

    return int(llama_cpp.llama_state_seq_get_size(llm.ctx, 0))


def timed_step(llm, token: int) -> tuple[float, int]:
    """One decode step: (milliseconds, the greedy next token)."""
    import time

    t0 = time.perf_counter()
    llm.eval([token])
    nxt = int(np.argmax(last_logits(llm)))
    return (time.perf_counter() - t0) * 1000, nxt


def prefill(llm, ids) -> tuple[float, int]:
    """(seconds, greedy next token) for reading `ids` from a fresh state, n_batch tokens per decode call."""
    import time

    llm.reset()
    t0 = time.perf_counter()
    llm.eval(list(map(int, ids)))
    nxt = int(np.argmax(last_logits(llm)))
    return time.perf_counter() - t0, nxt
