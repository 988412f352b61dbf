"""fp32 matrix products through oneDNN instead of MKL on CPUs where oneDNN keeps fp32 accuracy.

PyTorch's CPU build sends fp32 mm/addmm to MKL's sgemm. On this project's machine (AMD EPYC with
AVX-512) MKL runs its AVX2 code: 55-110 GFLOP/s on one core at the training shapes, where oneDNN
(also inside PyTorch) reaches 230-260 — 2.2-4.1x faster for every Linear of the teacher and the
student, forward and backward (benchmarks/bench_matmul.py). The only switch PyTorch has for that
route is `torch.backends.mkldnn.matmul.fp32_precision = "bf16"`, which *allows* oneDNN to round
the inputs to bf16: it does so on CPUs with AMX (Sapphire Rapids and later), and not on CPUs
without (this one: results agree with MKL to fp32 rounding, relative error ~4e-7 against fp64).
So the switch is only turned on after a probe at training shapes shows fp32 accuracy; otherwise
it stays off with one warning, and the results are MKL's.

RADLADS_ONEDNN_MATMUL=0 in the environment turns it off.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings

import torch

ENV = "RADLADS_ONEDNN_MATMUL"
# fp32 products of these sizes are off by ~3e-7 (relative, against fp64); bf16 inputs give ~3e-3.
FP32_TOLERANCE = 1e-5


def _relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm())


@functools.cache
def onednn_keeps_fp32() -> bool:
    """Whether fp32 products under the oneDNN route are still fp32-accurate on this CPU (probed once:
    plain, transposed and batched products at training-like shapes, ~10 ms)."""
    if not torch.backends.mkldnn.is_available():
        return False
    g = torch.Generator().manual_seed(0)
    cases = [(torch.randn(256, 576, generator=g), torch.randn(576, 192, generator=g)),
             (torch.randn(576, 256, generator=g).t(), torch.randn(192, 576, generator=g).t()),
             (torch.randn(4, 32, 64, generator=g), torch.randn(4, 64, 64, generator=g))]
    previous = torch.backends.mkldnn.matmul.fp32_precision
    try:
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        return all(_relative_error(a @ b, a.double() @ b.double()) < FP32_TOLERANCE for a, b in cases)
    except Exception:  # noqa: BLE001 - an unusual build: keep the default route
        return False
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = previous


def wanted() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@functools.cache
def _warn_unavailable() -> None:
    warnings.warn("radlads: oneDNN would not keep fp32 accuracy for matrix products on this CPU (or is not "
                  "built in); fp32 products stay on the default BLAS route", RuntimeWarning, stacklevel=3)


@contextlib.contextmanager
def onednn_matmul(enabled: bool | None = None):
    """Route fp32 matrix products through oneDNN inside the block when that is fp32-accurate here.

    enabled=None reads RADLADS_ONEDNN_MATMUL (default on). The previous setting is restored after.
    """
    if enabled is None:
        enabled = wanted()
    if not enabled or torch.backends.mkldnn.matmul.fp32_precision == "bf16":
        yield False
        return
    if not onednn_keeps_fp32():
        _warn_unavailable()
        yield False
        return
    previous = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        yield True
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = previous


def with_onednn_matmul(fn):
    """Decorator: run fn inside `onednn_matmul()`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with onednn_matmul():
            return fn(*args, **kwargs)

    return wrapper
