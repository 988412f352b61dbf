"""Gated linear attention (GLA) recurrence in pure PyTorch: the RAD-RWKV6 state update.

Convention (flash-linear-attention's): q, k, g are [B, T, H, K], v is [B, T, H, V], g is the
log-decay (<= 0), the state is [B, H, K, V]. Per step

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_tᵀ,      o_t = scale · S_tᵀ q_t      (scale None: K^-½)

This is RWKV-7's recurrence without the low-rank term, so the chunked form is the same
construction with a = b = 0: intra-chunk attention for all chunks at once, then one
decay-and-add per chunk.
"""

from __future__ import annotations

import torch

from .ops_rwkv7 import accumulation_dtype, initial_state_or_zeros, pad_time, safe_chunk_size, to_chunks


def recurrent_gla(q, k, v, g, scale=None, initial_state=None, output_final_state: bool = False):
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    dtype, acc = q.dtype, accumulation_dtype(q.dtype)
    state = initial_state_or_zeros(initial_state, (B, H, K, V), acc, q.device)
    outputs = []
    for q_t, k_t, v_t, d_t in zip(*(x.to(acc).unbind(1) for x in (q, k, v)), g.to(acc).exp().unbind(1)):
        state = d_t.unsqueeze(-1) * state + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        outputs.append((q_t.unsqueeze(-2) @ state).squeeze(-2))
    o = torch.stack(outputs, dim=1) * scale
    return o.to(dtype), (state if output_final_state else None)


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state: bool = False, chunk_size: int = 32):
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    C = safe_chunk_size(g, chunk_size)
    dtype, acc = q.dtype, accumulation_dtype(q.dtype)
    q, k, v, g = (to_chunks(x, C, acc) for x in pad_time([q, k, v, g], C))
    N = q.shape[2]

    g = g.cumsum(-2)
    g_last = g[..., -1:, :]
    # Split exp(Γ_i - Γ_j) around the chunk middle so no factor overflows (see ops_rwkv7).
    mid = g[..., (C - 1) // 2 : (C - 1) // 2 + 1, :]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(0)
    A = torch.where(causal, (q * (g - mid).exp()) @ (k * (mid - g).exp()).transpose(-1, -2), q.new_zeros(()))
    intra = A @ v  # [B, H, N, C, V]
    q_s0 = q * g.exp()
    chunk_decay = g_last.squeeze(-2).exp().unsqueeze(-1)  # [B, H, N, K, 1]
    added = (k * (g_last - g).exp()).transpose(-1, -2) @ v  # [B, H, N, K, V]

    state = initial_state_or_zeros(initial_state, (B, H, K, V), acc, q.device)
    starts = []
    for d_n, add_n in zip(chunk_decay.unbind(2), added.unbind(2)):
        starts.append(state)
        state = d_n * state + add_n
    o = q_s0 @ torch.stack(starts, dim=2) + intra
    o = (o * scale).permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return o.to(dtype), (state if output_final_state else None)
