"""Kernel dispatch: flash-linear-attention's Triton kernels for CUDA tensors when `fla` is
installed, the PyTorch forms of ops_rwkv7 / ops_gla everywhere else.

Both follow fla's conventions ([B, T, H, K] layout, log-decays, [B, H, K, V] states,
`(output, final_state)` returns), so this file only chooses; it never converts. The CUDA branch
cannot run on CPU-only machines, which is why it is kept this thin.
"""

from __future__ import annotations

from .ops_gla import chunk_gla as torch_chunk_gla
from .ops_gla import recurrent_gla as torch_recurrent_gla
from .ops_rwkv7 import chunk_rwkv7 as torch_chunk_rwkv7
from .ops_rwkv7 import recurrent_rwkv7 as torch_recurrent_rwkv7

try:  # optional: pip install flash-linear-attention (CUDA + Triton)
    from fla.ops.gla import chunk_gla as fla_chunk_gla
    from fla.ops.rwkv7 import chunk_rwkv7 as fla_chunk_rwkv7
except Exception:  # noqa: BLE001 - any import failure (no triton, no CUDA build) means "not available"
    fla_chunk_gla = fla_chunk_rwkv7 = None


def _use_fla(x, kernel) -> bool:
    return kernel is not None and x.is_cuda


def chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, chunk_size=32):
    if _use_fla(r, fla_chunk_rwkv7):
        return fla_chunk_rwkv7(r, w, k, v, a, b, scale=scale, initial_state=initial_state,
                               output_final_state=output_final_state)
    return torch_chunk_rwkv7(r, w, k, v, a, b, scale, initial_state, output_final_state, chunk_size)


def recurrent_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False):
    if _use_fla(r, fla_chunk_rwkv7):  # fla's chunk kernel handles T = 1 decode steps too
        return fla_chunk_rwkv7(r, w, k, v, a, b, scale=scale, initial_state=initial_state,
                               output_final_state=output_final_state)
    return torch_recurrent_rwkv7(r, w, k, v, a, b, scale, initial_state, output_final_state)


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, chunk_size=32):
    if _use_fla(q, fla_chunk_gla):
        return fla_chunk_gla(q, k, v, g, scale=scale, initial_state=initial_state,
                             output_final_state=output_final_state)
    return torch_chunk_gla(q, k, v, g, scale, initial_state, output_final_state, chunk_size)


def recurrent_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
    if _use_fla(q, fla_chunk_gla):
        return fla_chunk_gla(q, k, v, g, scale=scale, initial_state=initial_state,
                             output_final_state=output_final_state)
    return torch_recurrent_gla(q, k, v, g, scale, initial_state, output_final_state)
