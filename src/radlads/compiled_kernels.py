"""Optional torch.compile (inductor, C++ on the CPU) of the RWKV-7 chunked kernel's two passes.

Applied from outside the model, as torchtitan applies parallelism: the exported model folder
keeps the plain PyTorch kernel, and nothing changes unless a run asks for `compile: true`.
It is off by default because on this project's 2-core CPU it made stages 1 and 2 no faster
(docs/recipe.md, "Training speed on this CPU").

Only training asks for it (`compile` is a run-config key): a training run has one sequence
length, so each pass compiles once and is reused for thousands of calls; evaluation and
generation see a new length per item and would recompile for each.

Without a working C++ compiler (or any other inductor failure) the first call raises inside the
compiled function; the wrapper then warns once and runs the eager function from then on. The
passes write only into buffers they are given, so re-running a failed call eagerly is safe.

Head groups call the passes from several threads at once (`ops_rwkv7.run_in_threads`); dynamo
must not compile from two threads together, so a call whose inputs' `signature` has not been
seen yet holds a lock until its graph exists, and only calls with known signatures run concurrently.
"""

from __future__ import annotations

import threading
import warnings

import torch

from radlads.model import ops_rwkv7

PASSES = ("_rwkv7_forward", "_rwkv7_backward")  # the ops_rwkv7 functions that get swapped


def signature(x):
    """What dynamo specialises a call on here: tensor shapes, strides and dtypes, and plain values."""
    if isinstance(x, torch.Tensor):
        return (tuple(x.shape), x.stride(), x.dtype)
    if isinstance(x, (tuple, list)):
        return tuple(signature(y) for y in x)
    return x


class CompiledOrEager:
    """Call `torch.compile(fn)`; after its first failure, warn once and call `fn` itself."""

    def __init__(self, fn):
        self.eager = fn
        self.compiled = torch.compile(fn, dynamic=False)
        self.failed = False
        self.seen: set[tuple] = set()
        self.lock = threading.Lock()

    def __call__(self, *args):
        if not self.failed:
            try:
                key = signature(args)
                if key in self.seen:
                    return self.compiled(*args)
                with self.lock:
                    out = self.compiled(*args)
                    self.seen.add(key)
                    return out
            except Exception as e:  # noqa: BLE001 - compiler missing, inductor bug: all mean "run eager"
                self.failed = True
                first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
                warnings.warn(f"radlads: compiled RWKV-7 kernel unavailable, running it eagerly "
                              f"({type(e).__name__}: {first_line[:200]})", RuntimeWarning, stacklevel=2)
        return self.eager(*args)


def compile_rwkv7_kernel() -> None:
    """Swap the chunked RWKV-7 forward and backward passes for compiled ones (idempotent)."""
    for name in PASSES:
        fn = getattr(ops_rwkv7, name)
        if not isinstance(fn, CompiledOrEager):
            setattr(ops_rwkv7, name, CompiledOrEager(fn))


def eager_rwkv7_kernel() -> None:
    """Undo `compile_rwkv7_kernel` (for tests)."""
    for name in PASSES:
        fn = getattr(ops_rwkv7, name)
        if isinstance(fn, CompiledOrEager):
            setattr(ops_rwkv7, name, fn.eager)
