"""Gated linear attention (GLA) recurrence in pure PyTorch: the RAD-RWKV6 state update.

Convention (flash-linear-attention's): q, k, g are [B, T, H, K], v is [B, T, H, V], g is the
log-decay (<= 0), the state is [B, H, K, V]. Per step

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_tᵀ,      o_t = scale · S_tᵀ q_t      (scale None: K^-½)

This is RWKV-7's recurrence without the low-rank term, so the chunked form is the same
construction (see ops_rwkv7) with a = b = 0: intra-chunk attention for all chunks at once, then
one decay-and-add per chunk, and a hand-written backward pass of the same shape.
"""

from __future__ import annotations

import torch

from .ops_rwkv7 import (
    accumulation_dtype,
    causal_masks,
    chunk_decay_factors,
    decay_grad,
    from_chunks,
    initial_state_or_zeros,
    safe_chunk_size,
    to_chunks,
)


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


class _ChunkGLA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, initial_state, scale: float, C: int):
        B, T, H, K = q.shape
        V = v.shape[-1]
        acc, device = accumulation_dtype(q.dtype), q.device
        N, BH = -(-T // C), B * H
        ctx.dtypes = (q.dtype, k.dtype, v.dtype, g.dtype)
        q, k, v, g = (to_chunks(x, C, acc).view(N, BH, C, x.shape[-1]) for x in (q, k, v, g))

        up, down, _, mid, to_end = chunk_decay_factors(g, with_prev=False)
        q_in, k_in = q.mul_(up), k.mul_(down)  # q_i exp(Γ_i - m), k_j exp(m - Γ_j)
        causal, _ = causal_masks(C, device)
        A = (q_in @ k_in.mT).masked_fill_(~causal, 0.0)  # masked entries may be inf at steep decays
        k_end = k_in * to_end  # k_j exp(Γ_C - Γ_j)
        N_add = k_end.mT @ v
        decay = (mid * to_end).mT.contiguous()  # exp(Γ_C): [N, BH, K, 1]

        states = torch.empty((N + 1, BH, K, V), dtype=acc, device=device)
        states[0] = initial_state_or_zeros(initial_state, (B, H, K, V), acc, device).reshape(BH, K, V)
        for n in range(N):
            torch.addcmul(N_add[n], decay[n], states[n], out=states[n + 1])

        q_tilde = q_in * mid  # q_i exp(Γ_i)
        O = torch.baddbmm((q_tilde @ states[:N]).flatten(0, 1), A.flatten(0, 1), v.flatten(0, 1)).view(N, BH, C, V)
        if scale != 1.0:
            O.mul_(scale)
        ctx.save_for_backward(q_in, k_in, v, up, down, mid, to_end, A, k_end, decay, states)
        ctx.shape, ctx.scale = (B, T, H, K, V, C), scale
        ctx.state_dtype = initial_state.dtype if initial_state is not None else None
        return from_chunks(O, B, T, ctx.dtypes[0]), states[N].view(B, H, K, V)

    @staticmethod
    def backward(ctx, d_o, d_final):
        q_in, k_in, v, up, down, mid, to_end, A, k_end, decay, states = ctx.saved_tensors
        B, T, H, K, V, C = ctx.shape
        N, BH = q_in.shape[0], q_in.shape[1]
        S = states[:N]

        dO = to_chunks(d_o, C, q_in.dtype).view(N, BH, C, V)
        if ctx.scale != 1.0:
            dO.mul_(ctx.scale)
        d_q_in = (dO @ S.mT).mul_(mid)
        dS_out = (q_in * mid).mT @ dO
        causal, _ = causal_masks(C, q_in.device)
        dA = (dO @ v.mT).masked_fill_(~causal, 0.0)
        dv = A.mT @ dO

        G = torch.empty_like(states)  # G_n = dL/dS_n, filled in reverse
        if d_final is None:
            G[N].zero_()
        else:
            G[N] = d_final.reshape(BH, K, V)
        for n in range(N - 1, -1, -1):
            torch.addcmul(dS_out[n], decay[n], G[n + 1], out=G[n])
        dN = G[1:]
        d_decay = torch.linalg.vecdot(dN, S)  # [N, BH, K]
        d_k_end = v @ dN.mT
        dv += k_end @ dN

        d_q_in += dA @ k_in
        d_k_in = dA.mT @ q_in
        d_k_in.addcmul_(d_k_end, to_end)
        d_g = d_q_in * q_in - d_k_in * k_in
        d_g[:, :, -1] += (d_k_end * k_end).sum(-2) + d_decay * decay.squeeze(-1)
        dq_dt, dk_dt, dv_dt, dg_dt = ctx.dtypes
        grads = (
            from_chunks(d_q_in.mul_(up), B, T, dq_dt),
            from_chunks(d_k_in.mul_(down), B, T, dk_dt),
            from_chunks(dv, B, T, dv_dt),
            from_chunks(decay_grad(d_g), B, T, dg_dt),
        )
        d_state = G[0].view(B, H, K, V).to(ctx.state_dtype) if ctx.state_dtype is not None else None
        return (*grads, d_state, None, None)


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state: bool = False, chunk_size: int = 16):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    C = safe_chunk_size(g, chunk_size)
    o, final_state = _ChunkGLA.apply(q, k, v, g, initial_state, float(scale), C)
    return o, (final_state if output_final_state else None)
