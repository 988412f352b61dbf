"""Process setup: torch threads and seed, torchrun, compiled kernels, and how glibc hands memory back."""

from __future__ import annotations

import ctypes
import os
import sys


def setup_runtime(cfg) -> None:
    """Join torchrun's process group (if any), set torch's threads and the run's seed, and swap in
    the compiled RWKV-7 kernel when the run asks for it."""
    import torch

    from radlads import distributed as dist

    dist.init()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if cfg.compile:
        from radlads.compiled_kernels import compile_rwkv7_kernel

        compile_rwkv7_kernel()


def keep_freed_memory() -> None:
    """Let glibc reuse freed tensor memory instead of handing it back to the kernel.

    By default every tensor above 128 KiB is a fresh mmap, and the kernel zeroes its pages again on
    first touch: 10-25 ms of page faults per chunked time-mix forward at T=2048 (measured), i.e. a
    steady share of every training step and prefill. Keeping up to 1 GiB of freed heap and serving
    allocations below 32 MiB from it removes most of that. Same as MALLOC_TRIM_THRESHOLD_ /
    MALLOC_MMAP_THRESHOLD_ / MALLOC_ARENA_MAX in the environment, which win when set.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...): keep its defaults
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_mmap_threshold, 32 << 20)
    # The chunked kernel's worker threads would each get a fresh arena that starts cold (~5,500
    # extra page faults per layer fwd+bwd, measured); one shared arena keeps reusing warm memory.
    libc.mallopt(m_arena_max, 1)
