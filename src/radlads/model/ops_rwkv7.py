"""RWKV-7 recurrence (diagonal-plus-low-rank state update) in pure PyTorch.

Convention (flash-linear-attention's): r, w, k, a, b are [B, T, H, K], v is [B, T, H, V],
w is the log-decay (<= 0), the state is [B, H, K, V]. Per step

    S_t = diag(exp(w_t)) S_{t-1} + b_t (a_tᵀ S_{t-1}) + k_t v_tᵀ,      o_t = scale · S_tᵀ r_t

`recurrent_rwkv7` is the reference: a plain step loop. `chunk_rwkv7` computes the same thing C
steps at a time. Inside a chunk, with Γ_i the cumulative log-decay from the chunk start through
step i, the low-rank term is an extra key/value pair: key b_j, value u_j = S_{j-1}ᵀ a_j. The u's
of a chunk solve a unit-lower-triangular system,

    U = (I - A_ab)⁻¹ (ã S_0 + A_ak V) = W S_0 + Ū,      ã_j = a_j ⊙ exp(Γ_{j-1}),

where A_ab[j, m] = Σ_c a_jc b_mc exp(Γ_{j-1,c} - Γ_mc) (m < j) and A_ak likewise with k. So all
intra-chunk work (A's, the inverse, W, Ū) is batched over every chunk at once, and what is left
sequential is, per chunk,

    U_n = W_n S_n + Ū_n,      S_{n+1} = exp(Γ_C) ⊙ S_n + k_endᵀ V + b_endᵀ U_n,

two small matmuls. Outputs are then batched again: O = r̃ S_n + A_rk V + A_rb U_n.

The backward pass is written by hand (`_ChunkRWKV7`): autograd over the forward above records a
few hundred small ops and accumulates gradients of every intermediate, which costs more than
the arithmetic on a CPU; the hand-written pass reuses the forward's products and is again one
reverse sequential loop plus batched matmuls.
"""

from __future__ import annotations

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs; fp64 stays fp64 (tests compare in double precision)."""
    return torch.promote_types(dtype, torch.float32)


def initial_state_or_zeros(initial_state, shape, dtype, device) -> torch.Tensor:
    return initial_state.to(dtype) if initial_state is not None else torch.zeros(shape, dtype=dtype, device=device)


def recurrent_rwkv7(r, w, k, v, a, b, scale: float = 1.0, initial_state=None, output_final_state: bool = False):
    B, T, H, K = r.shape
    V = v.shape[-1]
    dtype, acc = r.dtype, accumulation_dtype(r.dtype)
    state = initial_state_or_zeros(initial_state, (B, H, K, V), acc, r.device)
    decay = w.to(acc).exp()
    outputs = []
    steps = zip(*(x.to(acc).unbind(1) for x in (r, k, v, a, b)), decay.unbind(1))
    for r_t, k_t, v_t, a_t, b_t, d_t in steps:
        removed = a_t.unsqueeze(-2) @ state  # a_tᵀ S_{t-1}: [B, H, 1, V]
        state = d_t.unsqueeze(-1) * state + b_t.unsqueeze(-1) * removed + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        outputs.append((r_t.unsqueeze(-2) @ state).squeeze(-2))
    o = torch.stack(outputs, dim=1) * scale
    return o.to(dtype), (state if output_final_state else None)


# ---------------------------------------------------------------------------------------------
# Shared chunk machinery (ops_gla uses it too)

# exp() overflows fp32 just above 88, and intra-chunk products multiply two factors referenced to
# the chunk middle, so each factor (half a chunk of cumulative decay) is kept below e^40.
MAX_HALF_CHUNK_LOG_DECAY = 40.0


def safe_chunk_size(w: torch.Tensor, chunk_size: int) -> int:
    """The largest chunk <= chunk_size whose half-chunk cumulative decay stays below exp's range.

    16-step chunks cover per-step log-decays down to -5 (RAD-RWKV6's floor); RAD-RWKV7 decays are
    >= -0.61 and would allow far longer chunks. Steeper decays get smaller chunks, not infs.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    steepest = float(-w.detach().min()) if w.numel() else 0.0
    while chunk_size > 1 and (chunk_size / 2) * steepest > MAX_HALF_CHUNK_LOG_DECAY:
        chunk_size //= 2
    return chunk_size


def to_chunks(x: torch.Tensor, C: int, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T, H, D] -> [N, B, H, C, D] (chunk-major), zero-padded to N·C steps, in `dtype`.

    Chunk-major so that the sequential loop reads and writes contiguous [B·H, ...] blocks; zero
    log-decay, keys, values, a and b on padded steps leave the state untouched. `out` may be a
    strided view (two inputs stacked into one buffer), which saves a copy later.
    """
    B, T, H, D = x.shape
    full, rem = divmod(T, C)
    if out is None:
        out = torch.empty((full + (rem > 0), B, H, C, D), dtype=dtype, device=x.device)
    if full:
        out[:full].copy_(x[:, : full * C].reshape(B, full, C, H, D).permute(1, 0, 3, 2, 4))
    if rem:
        out[full, :, :, :rem].copy_(x[:, full * C :].permute(0, 2, 1, 3))
        out[full, :, :, rem:].zero_()
    return out


def from_chunks(y: torch.Tensor, B: int, T: int, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of to_chunks: [N, B·H, C, D] -> [B, T, H, D] in `dtype` (one copy)."""
    N, BH, C, D = y.shape
    H = BH // B
    y = y.view(N, B, H, C, D)
    out = torch.empty((B, T, H, D), dtype=dtype, device=y.device)
    full, rem = divmod(T, C)
    if full:
        out[:, : full * C].view(B, full, C, H, D).copy_(y[:full].permute(1, 0, 3, 2, 4))
    if rem:
        out[:, full * C :].copy_(y[full, :, :, :rem].permute(0, 2, 1, 3))
    return out


def chunk_decay_factors(w: torch.Tensor, with_prev: bool = True):
    """Exponentials of a chunk's cumulative log-decay, all referenced to the chunk middle.

    w: [N, BH, C, K] log-decays. With Γ_i = Σ_{j<=i} w_j and m = Γ at the middle step returns
        up      exp(Γ_i - m)          [N, BH, C, K]   (<= e^40 by safe_chunk_size)
        down    exp(m - Γ_i)          [N, BH, C, K]   (<= e^40)
        up_prev exp(Γ_{i-1} - m)      [N, BH, C, K]   (None unless with_prev)
        mid     exp(m)                [N, BH, 1, K]
        to_end  exp(Γ_C - m)          [N, BH, 1, K]
    Intra-chunk decays exp(Γ_i - Γ_j) = up_i · down_j are only ever formed as such products, so
    no factor overflows even at log-decay -5 per step. m cancels out of every result, so the
    backward passes treat it as a constant.
    """
    C = w.shape[-2]
    g = w.cumsum(-2)
    m = g[..., (C - 1) // 2 : (C - 1) // 2 + 1, :]
    up = (g - m).exp_()
    up_prev = (g - w).sub_(m).exp_() if with_prev else None
    return up, up.reciprocal(), up_prev, m.exp(), (g[..., -1:, :] - m).exp_()


def decay_grad(d_g: torch.Tensor, d_g_prev: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient wrt w given gradients wrt Γ_i (inclusive cumsum) and Γ_{i-1} (exclusive one).

    dw_j = Σ_{i>=j} d_g_i + Σ_{i>j} d_g_prev_i, a reverse cumulative sum along the chunk.
    """
    if d_g_prev is None:
        return d_g.flip(-2).cumsum(-2).flip(-2)
    total = d_g + d_g_prev
    return total.flip(-2).cumsum(-2).flip(-2).sub_(d_g_prev)


def causal_masks(C: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    ones = torch.ones(C, C, dtype=torch.bool, device=device)
    return ones.tril(0), ones.tril(-1)


def unit_lower_inverse(L: torch.Tensor) -> torch.Tensor:
    """(I - L)⁻¹ for strictly lower-triangular L [..., C, C].

    L is nilpotent, so (I - L)⁻¹ = (I + L)(I + L²)(I + L⁴)…: 2·log2(C) batched matmuls, much
    faster on CPU than a batched triangular solve of many tiny systems, and exact up to rounding.
    """
    C = L.shape[-1]
    eye = torch.eye(C, dtype=L.dtype, device=L.device)
    inverse, power = L + eye, L
    while C > 2:
        power = power @ power
        inverse = torch.baddbmm(inverse.flatten(0, -3), inverse.flatten(0, -3), power.flatten(0, -3)).view_as(L)
        C = (C + 1) // 2
    return inverse


def flat(x: torch.Tensor) -> torch.Tensor:
    """[N, BH, ...] -> [N·BH, ...] for baddbmm (a view: every buffer here is contiguous)."""
    return x.flatten(0, 1)


# ---------------------------------------------------------------------------------------------
# RWKV-7


class _ChunkRWKV7(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, w, k, v, a, b, initial_state, scale: float, C: int):
        B, T, H, K = r.shape
        V = v.shape[-1]
        acc, device = accumulation_dtype(r.dtype), r.device
        N, BH = -(-T // C), B * H
        ctx.dtypes = (r.dtype, w.dtype, k.dtype, v.dtype, a.dtype, b.dtype)

        # r and a share left-hand roles, k and b right-hand ones: stacking each pair along the
        # chunk axis turns the four intra-chunk score matrices into one [2C, 2C] matmul.
        ra = torch.empty((N, B, H, 2, C, K), dtype=acc, device=device)
        kb = torch.empty((N, B, H, 2, C, K), dtype=acc, device=device)
        vu = torch.empty((N, B, H, 2, C, V), dtype=acc, device=device)  # [V; U], U filled by the scan
        for x, buf in ((r, ra[..., 0, :, :]), (a, ra[..., 1, :, :]), (k, kb[..., 0, :, :]), (b, kb[..., 1, :, :])):
            to_chunks(x, C, acc, out=buf)
        to_chunks(v, C, acc, out=vu[..., 0, :, :])
        w = to_chunks(w, C, acc).view(N, BH, C, K)
        ra, kb, vu = ra.view(N, BH, 2, C, K), kb.view(N, BH, 2, C, K), vu.view(N, BH, 2 * C, V)

        up, down, up_prev, mid, to_end = chunk_decay_factors(w)
        ra_scale = torch.stack([up, up_prev], dim=2)
        ra.mul_(ra_scale)  # [r_i exp(Γ_i - m); a_j exp(Γ_{j-1} - m)]
        kb.mul_(down.unsqueeze(2))  # [k_j exp(m - Γ_j); b_j exp(m - Γ_j)]
        ra, kb = ra.view(N, BH, 2 * C, K), kb.view(N, BH, 2 * C, K)
        r_in, a_in = ra[:, :, :C], ra[:, :, C:]

        causal, strict = causal_masks(C, device)
        mask = torch.cat([torch.cat([causal, causal], 1), torch.cat([strict, strict], 1)], 0)
        A = (ra @ kb.mT).masked_fill_(~mask, 0.0)  # masked entries may be inf at steep decays
        A_top, A_ak, A_ab = A[:, :, :C], A[:, :, C:, :C], A[:, :, C:, C:]

        T_inv = unit_lower_inverse(A_ab.contiguous())
        a_tilde = a_in * mid  # a_j exp(Γ_{j-1})
        W = T_inv @ a_tilde
        X = A_ak @ vu[:, :, :C]
        U_bar = T_inv @ X
        kb_end = kb * to_end  # [k_j exp(Γ_C - Γ_j); b_j exp(Γ_C - Γ_j)]
        k_end, b_end = kb_end[:, :, :C], kb_end[:, :, C:]
        N_add = k_end.mT @ vu[:, :, :C]
        decay = (mid * to_end).mT.contiguous()  # exp(Γ_C): [N, BH, K, 1]

        S0 = initial_state_or_zeros(initial_state, (B, H, K, V), acc, device).reshape(BH, K, V)
        states = torch.empty((N + 1, BH, K, V), dtype=acc, device=device)
        states[0] = S0
        for n in range(N):
            U_n = torch.baddbmm(U_bar[n], W[n], states[n])
            vu[n, :, C:] = U_n
            torch.baddbmm(torch.addcmul(N_add[n], decay[n], states[n]), b_end[n].mT, U_n, out=states[n + 1])

        r_tilde = r_in * mid  # r_i exp(Γ_i)
        O = torch.baddbmm(flat(r_tilde @ states[:N]), flat(A_top), flat(vu)).view(N, BH, C, V)
        if scale != 1.0:
            O.mul_(scale)
        ctx.save_for_backward(ra, kb, ra_scale, down, mid, to_end, A, T_inv, W, X, U_bar, vu, kb_end, decay, states)
        ctx.shape, ctx.scale = (B, T, H, K, V, C), scale
        ctx.state_dtype = initial_state.dtype if initial_state is not None else None
        final_state = states[N].view(B, H, K, V)
        return from_chunks(O, B, T, r.dtype), final_state

    @staticmethod
    def backward(ctx, d_o, d_final):
        ra, kb, ra_scale, down, mid, to_end, A, T_inv, W, X, U_bar, vu, kb_end, decay, states = ctx.saved_tensors
        B, T, H, K, V, C = ctx.shape
        acc = ra.dtype
        N, BH = ra.shape[0], ra.shape[1]
        r_in, a_in = ra[:, :, :C], ra[:, :, C:]
        b_end = kb_end[:, :, C:]
        A_top = A[:, :, :C]
        S = states[:N]

        dO = to_chunks(d_o, C, acc).view(N, BH, C, V)
        if ctx.scale != 1.0:
            dO.mul_(ctx.scale)
        # Outputs O = r̃ S_n + [A_rk A_rb] [V; U]
        d_r_tilde = dO @ S.mT
        dS_out = (r_in * mid).mT @ dO
        dA = torch.empty_like(A)
        causal, strict = causal_masks(C, ra.device)
        dA[:, :, :C] = dO @ vu.mT
        dA[:, :, :C, :C].masked_fill_(~causal, 0.0)
        dA[:, :, :C, C:].masked_fill_(~causal, 0.0)
        d_vu = A_top.mT @ dO  # [dV (part); dU from the outputs]

        # The sequential part in reverse: G_n = dL/dS_n.
        G = torch.empty_like(states)
        if d_final is None:
            G[N].zero_()
        else:
            G[N] = d_final.reshape(BH, K, V)
        dU = torch.empty_like(U_bar)
        d_decay = torch.empty_like(decay)
        for n in range(N - 1, -1, -1):
            torch.baddbmm(d_vu[n, :, C:], b_end[n], G[n + 1], out=dU[n])
            d_decay[n] = torch.linalg.vecdot(G[n + 1], states[n]).unsqueeze(-1)
            torch.baddbmm(torch.addcmul(dS_out[n], decay[n], G[n + 1]), W[n].mT, dU[n], out=G[n])
        dN = G[1:]
        dW = dU @ S.mT
        d_kb_end = vu @ dN.mT  # [dk_end; db_end]
        d_vu[:, :, :C] += kb_end[:, :, :C] @ dN

        # U_bar = T_inv X and W = T_inv ã with T_inv = (I - A_ab)⁻¹
        dX = T_inv.mT @ dU
        d_a_tilde = T_inv.mT @ dW
        dA_ab = dA[:, :, C:, C:]
        dA_ab.copy_(torch.baddbmm(flat(dX @ U_bar.mT), flat(d_a_tilde), flat(W.mT)).view(N, BH, C, C))
        dA_ab.masked_fill_(~strict, 0.0)
        dA[:, :, C:, :C] = (dX @ vu[:, :, :C].mT).masked_fill_(~strict, 0.0)
        d_vu[:, :, :C] += A[:, :, C:, :C].mT @ dX

        # Scores A = ra kbᵀ
        d_ra = dA @ kb
        d_kb = dA.mT @ ra
        d_ra[:, :, :C].addcmul_(d_r_tilde, mid)
        d_ra[:, :, C:].addcmul_(d_a_tilde, mid)
        d_kb.addcmul_(d_kb_end, to_end)

        # Decays: every scaled tensor x · exp(±(Γ - m)) contributes ±dx·x to dΓ.
        g_ra = d_ra * ra
        g_kb = d_kb * kb
        d_g = g_ra[:, :, :C] - g_kb[:, :, :C] - g_kb[:, :, C:]
        d_g_last = (d_kb_end * kb_end).sum(-2) + (d_decay * decay).squeeze(-1)
        d_g[:, :, -1] += d_g_last
        d_w = decay_grad(d_g, g_ra[:, :, C:])

        d_ra.view(N, BH, 2, C, K).mul_(ra_scale)
        d_kb.view(N, BH, 2, C, K).mul_(down.unsqueeze(2))
        dr_dt, dw_dt, dk_dt, dv_dt, da_dt, db_dt = ctx.dtypes
        grads = (
            from_chunks(d_ra[:, :, :C], B, T, dr_dt),
            from_chunks(d_w, B, T, dw_dt),
            from_chunks(d_kb[:, :, :C], B, T, dk_dt),
            from_chunks(d_vu[:, :, :C], B, T, dv_dt),
            from_chunks(d_ra[:, :, C:], B, T, da_dt),
            from_chunks(d_kb[:, :, C:], B, T, db_dt),
        )
        d_state = G[0].view(B, H, K, V).to(ctx.state_dtype) if ctx.state_dtype is not None else None
        return (*grads, d_state, None, None)


def chunk_rwkv7(
    r, w, k, v, a, b, scale: float = 1.0, initial_state=None, output_final_state: bool = False, chunk_size: int = 16
):
    C = safe_chunk_size(w, chunk_size)
    o, final_state = _ChunkRWKV7.apply(r, w, k, v, a, b, initial_state, float(scale), C)
    return o, (final_state if output_final_state else None)
