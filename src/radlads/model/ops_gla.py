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
    autocast_off,
    causal_masks,
    chunk_decay_factors,
    chunked,
    decay_grad,
    initial_state_or_zeros,
    new_like_input,
    one_thread,
    pad_to_chunks,
    safe_chunk_size,
    step_columns,
    step_outputs,
    step_rows,
    without_autocast,
)


def recurrent_gla(q, k, v, g, scale=None, initial_state=None, output_final_state: bool = False):
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    dtype, acc = q.dtype, accumulation_dtype(q.dtype)
    state = initial_state_or_zeros(initial_state, (B, H, K, V), acc, q.device)
    # Operands shaped once before the loop; one fused multiply-add per step (S·d + k vᵀ), as in
    # ops_rwkv7.recurrent_rwkv7.
    q_, v_ = step_rows(q, acc), step_rows(v, acc)  # [B, H, 1, ·]
    k_, decay = step_columns(k, acc), step_columns(g.to(acc).exp(), acc)  # [B, H, K, 1]
    outputs = []
    with one_thread(), autocast_off(q.device.type):  # fp32 state, as documented
        for q_t, k_t, v_t, d_t in zip(q_, k_, v_, decay):
            state = torch.addcmul(state * d_t, k_t, v_t)
            outputs.append(q_t @ state)  # [B, H, 1, V]
    return step_outputs(outputs, scale).to(dtype), (state if output_final_state else None)


class _ChunkGLA(torch.autograd.Function):
    """chunk_gla with a hand-written backward pass; T is a multiple of C here. Layout and naming as
    in ops_rwkv7._ChunkRWKV7."""

    @staticmethod
    @without_autocast
    def forward(ctx, q, k, v, g, initial_state, scale: float, C: int):
        B, T, H, K = q.shape
        V = v.shape[-1]
        acc, device = accumulation_dtype(q.dtype), q.device
        N, BH = T // C, B * H
        ctx.dtypes = (q.dtype, k.dtype, v.dtype, g.dtype)
        ctx.state_dtype = initial_state.dtype if initial_state is not None else None
        ctx.shape, ctx.scale = (B, T, H, K, V, C), scale

        up, down, mid, to_end = chunk_decay_factors(chunked(g, C), acc)
        q_in = torch.empty((N, B, H, C, K), dtype=acc, device=device)
        k_in = torch.empty((N, B, H, C, K), dtype=acc, device=device)
        v_c = torch.empty((N, B, H, C, V), dtype=acc, device=device)
        torch.mul(chunked(q, C), up.view(N, B, H, C, K), out=q_in)  # q_i exp(Γ_i - m)
        torch.mul(chunked(k, C), down.view(N, B, H, C, K), out=k_in)  # k_j exp(m - Γ_j)
        v_c.copy_(chunked(v, C))
        q_in, k_in, v = q_in.view(N, BH, C, K), k_in.view(N, BH, C, K), v_c.view(N, BH, C, V)

        causal, _ = causal_masks(C, device)
        A = (q_in @ k_in.mT).masked_fill_(~causal, 0.0)  # masked entries may be inf at steep decays
        k_end = k_in * to_end  # k_j exp(Γ_C - Γ_j)
        N_add = k_end.mT @ v
        decay = (mid * to_end).mT.contiguous()  # exp(Γ_C): [N, BH, K, 1]

        states = torch.empty((N + 1, BH, K, V), dtype=acc, device=device)
        states[0] = initial_state_or_zeros(initial_state, (B, H, K, V), acc, device).reshape(BH, K, V)
        S = states.unbind(0)
        with one_thread():
            for n, (d_n, N_n) in enumerate(zip(decay.unbind(0), N_add.unbind(0))):
                torch.addcmul(N_n, d_n, S[n], out=S[n + 1])

        q_tilde = q_in * mid  # q_i exp(Γ_i)
        O = torch.baddbmm((q_tilde @ states[:N]).flatten(0, 1), A.flatten(0, 1), v.flatten(0, 1))
        o, o_chunked = new_like_input((B, T, H, V), C, ctx.dtypes[0], device)
        torch.mul(O.view(N, B, H, C, V), scale, out=o_chunked)
        ctx.save_for_backward(q_in, k_in, q_tilde, v, up, down, mid, to_end, A, k_end, decay, states)
        # A copy: a view would keep all N + 1 chunk states alive in the decoding cache.
        return o, states[N].view(B, H, K, V).clone()

    @staticmethod
    @without_autocast
    def backward(ctx, d_o, d_final):
        q_in, k_in, q_tilde, v, up, down, mid, to_end, A, k_end, decay, states = ctx.saved_tensors
        B, T, H, K, V, C = ctx.shape
        N, BH, acc, device = q_in.shape[0], q_in.shape[1], q_in.dtype, q_in.device
        S = states[:N]

        dO = torch.empty((N, B, H, C, V), dtype=acc, device=device)
        torch.mul(chunked(d_o, C), ctx.scale, out=dO)
        dO = dO.view(N, BH, C, V)
        dS_out = q_tilde.mT @ dO
        causal, _ = causal_masks(C, device)
        dA = (dO @ v.mT).masked_fill_(~causal, 0.0)
        dv = A.mT @ dO

        G = torch.empty_like(states)  # G_n = dL/dS_n, filled in reverse
        if d_final is None:
            G[N].zero_()
        else:
            G[N] = d_final.reshape(BH, K, V)
        Gs = G.unbind(0)
        with one_thread():
            for n in range(N - 1, -1, -1):
                torch.addcmul(dS_out[n], decay[n], Gs[n + 1], out=Gs[n])
        dN = G[1:]
        d_decay = torch.empty((N, BH, K), dtype=acc, device=device)
        with one_thread():  # blocks keep the temporaries small
            for i in range(0, N, 8):
                torch.linalg.vecdot(dN[i : i + 8], S[i : i + 8], out=d_decay[i : i + 8])
        d_k_end = v @ dN.mT
        dv.flatten(0, 1).baddbmm_(k_end.flatten(0, 1), dN.flatten(0, 1))

        d_q_in = (dA @ k_in).addcmul_(dO @ S.mT, mid)  # q_tilde = q_in · exp(m)
        d_k_in = (dA.mT @ q_in).addcmul_(d_k_end, to_end)  # k_end = k_in · exp(Γ_C - m)
        d_g = d_q_in * q_in
        d_g -= d_k_in * k_in
        d_g[:, :, C - 1] += d_k_end.mul_(k_end).sum(-2) + d_decay * decay.squeeze(-1)  # Γ_C
        d_w = decay_grad(d_g)

        dq_dt, dk_dt, dv_dt, dg_dt = ctx.dtypes
        grads = []
        for grad, factor, dtype in ((d_q_in, up, dq_dt), (d_k_in, down, dk_dt), (dv, None, dv_dt), (d_w, None, dg_dt)):
            out, out_chunked = new_like_input((B, T, H, grad.shape[-1]), C, dtype, device)
            grad = grad.view(N, B, H, C, grad.shape[-1])
            if factor is None:
                out_chunked.copy_(grad)
            else:
                torch.mul(grad, factor.view_as(grad), out=out_chunked)
            grads.append(out)
        d_state = G[0].view(B, H, K, V).to(ctx.state_dtype) if ctx.state_dtype is not None else None
        return (*grads, d_state, None, None)


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state: bool = False, chunk_size: int = 16):
    T = q.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    C = safe_chunk_size(g, chunk_size)
    o, final_state = _ChunkGLA.apply(*pad_to_chunks([q, k, v, g], C), initial_state, float(scale), C)
    return o[:, :T], (final_state if output_final_state else None)
