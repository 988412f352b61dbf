"""Kernel dispatch: flash-linear-attention's Triton kernels for CUDA tensors when `fla` imports,
the PyTorch forms of ops_rwkv7 / ops_gla everywhere else.

Both follow fla's conventions ([B, T, H, K] layout, log-decays, [B, H, K, V] states,
`(output, final_state)` returns), so this file only chooses; it never converts, except that the
final state is always returned in fp32 (recent fla returns it in the input dtype). It cannot run
on CPU-only machines, which is why it is kept this thin.
"""

from __future__ import annotations

import inspect

from .ops_gla import chunk_gla as torch_chunk_gla
from .ops_gla import recurrent_gla as torch_recurrent_gla
from .ops_rwkv7 import chunk_rwkv7 as torch_chunk_rwkv7
from .ops_rwkv7 import recurrent_rwkv7 as torch_recurrent_rwkv7

try:  # optional: pip install flash-linear-attention (CUDA + Triton)
    from fla.ops.gla import chunk_gla as fla_chunk_gla
    from fla.ops.gla import fused_recurrent_gla as fla_recurrent_gla
    from fla.ops.rwkv7 import chunk_rwkv7 as fla_chunk_rwkv7
    from fla.ops.rwkv7 import fused_recurrent_rwkv7 as fla_recurrent_rwkv7
except Exception:  # noqa: BLE001 - any import failure (no triton, no CUDA build) means "not available"
    fla_chunk_gla = fla_recurrent_gla = fla_chunk_rwkv7 = fla_recurrent_rwkv7 = None


def _layout_kwargs(kernel) -> dict:
    """fla releases before 0.2 defaulted to head_first=True ([B, H, T, K]); ask for [B, T, H, K]."""
    try:
        param = inspect.signature(kernel).parameters.get("head_first")
    except (TypeError, ValueError):
        return {}
    return {"head_first": False} if param is not None and param.default is True else {}


def _use_fla(x, kernel) -> bool:
    return kernel is not None and x.is_cuda


def _fp32_state(result):
    o, state = result
    return o, (state.float() if state is not None else None)


def chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, chunk_size=16):
    if _use_fla(r, fla_chunk_rwkv7):
        return _fp32_state(fla_chunk_rwkv7(r, w, k, v, a, b, scale=scale, initial_state=initial_state,
                                           output_final_state=output_final_state, **_layout_kwargs(fla_chunk_rwkv7)))
    return torch_chunk_rwkv7(r, w, k, v, a, b, scale, initial_state, output_final_state, chunk_size)


def recurrent_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False):
    if _use_fla(r, fla_recurrent_rwkv7):  # decoding; fla's fused recurrent kernel is forward-only
        return _fp32_state(fla_recurrent_rwkv7(r, w, k, v, a, b, scale=scale, initial_state=initial_state,
                                               output_final_state=output_final_state,
                                               **_layout_kwargs(fla_recurrent_rwkv7)))
    return torch_recurrent_rwkv7(r, w, k, v, a, b, scale, initial_state, output_final_state)


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, chunk_size=16):
    if _use_fla(q, fla_chunk_gla):
        return _fp32_state(fla_chunk_gla(q, k, v, g, scale=scale, initial_state=initial_state,
                                         output_final_state=output_final_state, **_layout_kwargs(fla_chunk_gla)))
    return torch_chunk_gla(q, k, v, g, scale, initial_state, output_final_state, chunk_size)


def recurrent_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
    if _use_fla(q, fla_recurrent_gla):  # fla's fused recurrent GLA takes the key-wise decay as gk
        return _fp32_state(fla_recurrent_gla(q, k, v, gk=g, scale=scale, initial_state=initial_state,
                                             output_final_state=output_final_state,
                                             **_layout_kwargs(fla_recurrent_gla)))
    return torch_recurrent_gla(q, k, v, g, scale, initial_state, output_final_state)
