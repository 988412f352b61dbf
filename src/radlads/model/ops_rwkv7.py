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
intra-chunk work (the A's, the inverse, W, Ū) is batched over every chunk at once, and what is
left sequential is, per chunk n with incoming state S_n,

    [W S_n; r̃ S_n] = [W_n; r̃_n] S_n,   U_n = Ū_n + W S_n,   S_{n+1} = exp(Γ_C) ⊙ S_n + [k_end; b_end]ᵀ [V_n; U_n]

(r̃_i = r_i exp(Γ_i) is folded in because S_n is in cache there). Outputs are then batched
again: O = r̃ S_n + A_rk V + A_rb U_n.

The backward pass is written by hand (`_ChunkRWKV7`): autograd over the forward above records a
few hundred small ops and accumulates gradients of every intermediate, which costs more than
the arithmetic on a CPU; the hand-written pass reuses the forward's products and is again one
reverse sequential loop plus batched matmuls. Both passes run per group of heads, one group per
core on its own thread (`run_in_threads`), rather than splitting each small op over the cores.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs; fp64 stays fp64 (tests compare in double precision)."""
    return torch.promote_types(dtype, torch.float32)


def initial_state_or_zeros(initial_state, shape, dtype, device) -> torch.Tensor:
    return initial_state.to(dtype) if initial_state is not None else torch.zeros(shape, dtype=dtype, device=device)


@contextlib.contextmanager
def one_thread():
    """Run a loop of small ops on one intra-op thread, restoring the setting afterwards.

    A step or chunk loop issues hundreds of ops of ~10-50 µs each. Splitting each over threads
    gains little even on idle cores (fork/join per op), and on shared, oversubscribed cores every
    parallel op waits for a descheduled sibling thread — measured here at ~16 ms per op instead of
    ~70 µs single-threaded. Toggling the thread count costs well under a microsecond.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def step_rows(x: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """[B, T, H, D] -> T views [B, H, 1, D], in `dtype`: a step loop's operands, unbound once."""
    x = x.to(dtype)
    return [x.transpose(1, 2)] if x.shape[1] == 1 else list(x.unsqueeze(-2).unbind(1))


def step_columns(x: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """[B, T, H, D] -> T views [B, H, D, 1], in `dtype`."""
    x = x.to(dtype)
    return [x.permute(0, 2, 3, 1)] if x.shape[1] == 1 else list(x.unsqueeze(-1).unbind(1))


def step_outputs(outputs: list[torch.Tensor], scale: float) -> torch.Tensor:
    """A step loop's T outputs [B, H, 1, V] -> scale · o [B, T, H, V] (no copy when T = 1)."""
    o = (torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]).transpose(1, 2)
    return o * scale if scale != 1.0 else o


def autocast_off(device_type: str):
    """Autocast disabled inside; a no-op context when it is off already (decoding calls this per
    layer and token, and entering a real autocast context costs several microseconds)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def recurrent_rwkv7(r, w, k, v, a, b, scale: float = 1.0, initial_state=None, output_final_state: bool = False):
    B, T, H, K = r.shape
    V = v.shape[-1]
    dtype, acc = r.dtype, accumulation_dtype(r.dtype)
    state = initial_state_or_zeros(initial_state, (B, H, K, V), acc, r.device)
    # Every operand is shaped once, before the loop, for the step's three fused ops: one
    # decay-multiply and two rank-1 addcmuls write the new state (S·d + b (aᵀS) + k vᵀ). This is
    # also the decoding path (T = 1), where per-op overhead is most of the cost.
    r_, a_, v_ = (step_rows(x, acc) for x in (r, a, v))  # [B, H, 1, ·]
    b_, k_ = (step_columns(x, acc) for x in (b, k))  # [B, H, K, 1]
    decay = step_columns(w.to(acc).exp(), acc)
    outputs = []
    with one_thread(), autocast_off(r.device.type):  # fp32 state, as documented
        for r_t, k_t, v_t, a_t, b_t, d_t in zip(r_, k_, v_, a_, b_, decay):
            state = torch.addcmul(torch.addcmul(state * d_t, b_t, a_t @ state), k_t, v_t)
            outputs.append(r_t @ state)  # [B, H, 1, V]
    return step_outputs(outputs, scale).to(dtype), (state if output_final_state else None)


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


def chunked(x: torch.Tensor, C: int) -> torch.Tensor:
    """[B, T, H, D] -> [N, B, H, C, D] chunk-major view (T a multiple of C; no copy).

    Splitting the time axis is always a view. The kernels then read inputs through these views in
    their first elementwise op, which writes contiguous chunk-major buffers (so the sequential
    loop reads contiguous [B·H, ...] blocks), and write gradients back the same way.
    """
    B, T, H, D = x.shape
    return x.unflatten(1, (T // C, C)).permute(1, 0, 3, 2, 4)


def pad_to_chunks(xs: list[torch.Tensor], C: int) -> list[torch.Tensor]:
    """Zero-pad the time axis to a multiple of C (zero log-decay, keys, values, a and b leave the
    state untouched; padded outputs are dropped by the caller)."""
    pad = (-xs[0].shape[1]) % C
    if pad == 0:
        return xs
    return [torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)) for x in xs]


def new_like_input(x_shape, C: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """An empty [B, T, H, D] tensor and its chunk-major view, to be written through the view."""
    out = torch.empty(x_shape, dtype=dtype, device=device)
    return out, chunked(out, C)


def chunk_decay_factors(w: torch.Tensor, dtype: torch.dtype, with_prev: bool = False):
    """Exponentials of each chunk's cumulative log-decay, all referenced to the chunk middle.

    w: [N, B, H, C, K] log-decays (a chunked() view). With Γ_i = Σ_{j<=i} w_j within the chunk
    and m = Γ at the middle step, returns (contiguous, [N, B·H, ...], in `dtype`)
        up      exp(Γ_i - m)          [N, BH, C, K]   (<= e^40 by safe_chunk_size)
                or, with_prev, [N, BH, 2, C, K] stacking exp(Γ_i - m) and exp(Γ_{i-1} - m)
        down    exp(m - Γ_i)          [N, BH, C, K]   (<= e^40)
        mid     exp(m)                [N, BH, 1, K]
        to_end  exp(Γ_C - m)          [N, BH, 1, K]
    Intra-chunk decays exp(Γ_i - Γ_j) = up_i · down_j are only ever formed as such products, so
    no factor overflows even at log-decay -5 per step. m cancels out of every result, so the
    backward passes treat it as a constant.
    """
    N, B, H, C, K = w.shape
    # Copy to chunk-major first: a cumsum over the strided view costs twice the copy plus an
    # in-place cumsum (2.0 vs 1.0 ms at T=2048, H=9, K=64, one thread).
    g = torch.empty((N, B, H, C, K), dtype=dtype, device=w.device)
    g.copy_(w)
    g = g.cumsum_(dim=-2).view(N, B * H, C, K)
    m = g[:, :, (C - 1) // 2 : (C - 1) // 2 + 1]
    if with_prev:
        stacked = torch.empty((N, B * H, 2, C, K), dtype=dtype, device=w.device)
        up = torch.sub(g, m, out=stacked[:, :, 0]).exp_()
        # exp(Γ_{i-1} - m) is the previous step's exp(Γ - m): a shifted copy, no second exp.
        stacked[:, :, 1, 1:] = up[:, :, :-1]
        stacked[:, :, 1, :1] = m.neg().exp_()
    else:
        up = stacked = (g - m).exp_()
    return stacked, up.reciprocal(), m.exp(), (g[:, :, -1:] - m).exp_()


def decay_grad(d_g: torch.Tensor, with_prev: bool = False) -> torch.Tensor:
    """Gradient wrt the log-decays w of one chunk, from gradients wrt its cumulative sums.

    d_g: [N, BH, C, K], gradients wrt Γ_i = Σ_{j<=i} w_j; or, with_prev, [N, BH, 2C, K] stacking
    those and the gradients wrt Γ_{i-1}. Then dw_j = Σ_{i>=j} dΓ_i + Σ_{i>j} dΓ_prev_i: a reverse
    cumulative sum, done as one matmul with a 0/1 upper-triangular matrix (faster on CPU than
    flip-cumsum-flip and free of the cancellation in total-minus-prefix).
    """
    C = d_g.shape[-2] // (2 if with_prev else 1)
    ones = torch.ones(C, C, dtype=d_g.dtype, device=d_g.device)
    suffix = torch.cat([ones.triu(), ones.triu(1)], dim=1) if with_prev else ones.triu()
    return suffix @ d_g


def causal_masks(C: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    ones = torch.ones(C, C, dtype=torch.bool, device=device)
    return ones.tril(0), ones.tril(-1)


def score_mask(C: int, device) -> torch.Tensor:
    """True where the stacked [[A_rk, A_rb], [A_ak, A_ab]] scores are zero: r_i reads steps j <= i,
    the removal a_j only steps m < j."""
    ones = torch.ones(C, C, dtype=torch.bool, device=device)
    keep = torch.cat([ones.tril(0).repeat(1, 2), ones.tril(-1).repeat(1, 2)], dim=0)
    return ~keep


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


def without_autocast(method):
    """For autograd.Function forward/backward: run with autocast off on the first tensor's device.

    The kernels choose their own precision (fp32 accumulation, outputs in the input dtype); under
    a bf16 autocast region their matmuls would otherwise come out bf16 and mix with fp32 buffers.
    """

    @functools.wraps(method)
    def wrapper(ctx, *args):
        device_type = next(x.device.type for x in args if isinstance(x, torch.Tensor))
        with torch.autocast(device_type=device_type, enabled=False):
            return method(ctx, *args)

    return wrapper


def flat(x: torch.Tensor) -> torch.Tensor:
    """[N, BH, ...] -> [N·BH, ...] for baddbmm (a view: N and B·H are mergeable in every buffer here)."""
    return x.flatten(0, 1)


# ---------------------------------------------------------------------------------------------
# RWKV-7


def _rwkv7_forward(r, w, k, v, a, b, initial_state, o, scale: float, C: int, keep_states: bool):
    """The forward pass for some heads: r..b [B, T, H, K] (views are fine), initial_state
    [B, H, K, V] or None; writes the output into o [B, T, H, V] (a view) and returns the tensors
    the backward pass needs (None without keep_states) and the final state."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    acc, device = accumulation_dtype(r.dtype), r.device
    N, BH = T // C, B * H

    ra_scale, down, mid, to_end = chunk_decay_factors(chunked(w, C), acc, with_prev=True)
    # r and a play the same (left) role in the scores, k and b the same (right) one; stacking
    # each pair along the chunk axis makes the four score blocks one [2C, 2C] matmul, and
    # stacking [V; U] lets one matmul apply both value blocks. Scaling and re-layout happen
    # in the same elementwise op.
    ra = torch.empty((N, B, H, 2, C, K), dtype=acc, device=device)
    kb = torch.empty((N, B, H, 2, C, K), dtype=acc, device=device)
    vu = torch.empty((N, B, H, 2, C, V), dtype=acc, device=device)  # [V; Ū], later [V; U]
    ra_scale_5d = ra_scale.view(N, B, H, 2, C, K)
    torch.mul(chunked(r, C), ra_scale_5d[:, :, :, 0], out=ra[:, :, :, 0])  # r_i exp(Γ_i - m)
    torch.mul(chunked(a, C), ra_scale_5d[:, :, :, 1], out=ra[:, :, :, 1])  # a_j exp(Γ_{j-1} - m)
    down_5d = down.view(N, B, H, C, K)
    torch.mul(chunked(k, C), down_5d, out=kb[:, :, :, 0])  # k_j exp(m - Γ_j)
    torch.mul(chunked(b, C), down_5d, out=kb[:, :, :, 1])  # b_j exp(m - Γ_j)
    vu[:, :, :, 0] = chunked(v, C)
    ra, kb, vu = ra.view(N, BH, 2 * C, K), kb.view(N, BH, 2 * C, K), vu.view(N, BH, 2 * C, V)

    # Scores [[A_rk, A_rb], [A_ak, A_ab]]: r reads steps <= i, a (the removal) steps < j.
    mask = score_mask(C, device)
    A = (ra @ kb.mT).masked_fill_(mask, 0.0)  # masked entries may be inf at steep decays
    # u_j = S_{j-1}ᵀ a_j solves U = A_ab U + ã S_n + A_ak V, so U = W S_n + Ū with
    # W = T ã, Ū = (T A_ak) V, T = (I - A_ab)⁻¹ and ã_j = a_j exp(Γ_{j-1}); one matmul gives
    # W and T A_ak together.
    T_inv = unit_lower_inverse(A[:, :, C:, C:].contiguous())
    rhs = torch.empty((N, BH, C, K + C), dtype=acc, device=device)
    torch.mul(ra[:, :, C:], mid, out=rhs[..., :K])
    rhs[..., K:] = A[:, :, C:, :C]
    W_TA_ak = T_inv @ rhs
    # [W; r̃] with r̃_i = r_i exp(Γ_i): the loop reads the incoming state with both at once.
    wr = torch.empty((N, BH, 2 * C, K), dtype=acc, device=device)
    W, r_tilde = wr[:, :, :C], wr[:, :, C:]
    W.copy_(W_TA_ak[..., :K])
    torch.mul(ra[:, :, :C], mid, out=r_tilde)
    vu[:, :, C:] = W_TA_ak[..., K:] @ vu[:, :, :C]  # Ū
    kb_end = kb * to_end  # [k_j exp(Γ_C - Γ_j); b_j exp(Γ_C - Γ_j)]
    decay = (mid * to_end).mT.contiguous()  # exp(Γ_C): [N, BH, K, 1]

    # The sequential part, per chunk n with incoming state S_n:
    #   [W S_n; r̃ S_n] = [W; r̃] S_n,   U_n = Ū + W S_n,   S_{n+1} = exp(Γ_C) S_n + [k_end; b_end]ᵀ [V; U_n].
    # Every matmul writes a contiguous block (a strided output sends bmm down a per-matrix path,
    # ~10x slower). Every chunk's state is kept for the backward pass; without one (inference)
    # two buffers take turns, which keeps the loop in cache.
    states = torch.empty((N + 1 if keep_states else 2, BH, K, V), dtype=acc, device=device)
    states[0] = initial_state_or_zeros(initial_state, (B, H, K, V), acc, device).reshape(BH, K, V)
    S = states.unbind(0) if keep_states else [states[n % 2] for n in range(N + 1)]
    ws_rs = torch.empty((N, BH, 2 * C, V), dtype=acc, device=device)  # [W S_n; r̃ S_n]
    ws_rs_n, ws_n, u_n = ws_rs.unbind(0), ws_rs[:, :, :C].unbind(0), vu[:, :, C:].unbind(0)
    wr_n, kb_end_T, vu_n = wr.unbind(0), kb_end.mT.unbind(0), vu.unbind(0)
    with one_thread():
        for n, d_n in enumerate(decay.unbind(0)):
            torch.bmm(wr_n[n], S[n], out=ws_rs_n[n])
            u_n[n].add_(ws_n[n])  # vu holds [V; U] from here on
            torch.mul(S[n], d_n, out=S[n + 1])
            torch.baddbmm(S[n + 1], kb_end_T[n], vu_n[n], out=S[n + 1])

    # O = r̃ S_n + A_rk V + A_rb U
    O = torch.baddbmm(flat(ws_rs[:, :, C:]), flat(A[:, :, :C]), flat(vu))
    torch.mul(O.view(N, B, H, C, V), scale, out=chunked(o, C))
    saved = (ra, kb, wr, ra_scale, down, mid, to_end, A, T_inv, vu, kb_end, decay, states)
    return (saved if keep_states else None), S[N].view(B, H, K, V)


def _rwkv7_backward(saved, d_o, d_final, grads, scale: float, C: int):
    """The backward pass for the heads `saved` came from: d_o [B, T, H, V], d_final [B, H, K, V]
    or None; writes the input gradients into `grads` (six [B, T, H, ·] views, r w k v a b) and
    returns the initial state's gradient."""
    ra, kb, wr, ra_scale, down, mid, to_end, A, T_inv, vu, kb_end, decay, states = saved
    B, T, H, V = d_o.shape
    K = ra.shape[-1]
    N, BH, acc, device = ra.shape[0], ra.shape[1], ra.dtype, ra.device
    S = states[:N]

    # [dO; λ], with λ = Tᵀ dU the adjoint of the u-system: everything that multiplied [V; U]
    # or S_n gets its gradient from one matmul with this stack.
    d_ol = torch.empty((N, B, H, 2, C, V), dtype=acc, device=device)
    torch.mul(chunked(d_o, C), scale, out=d_ol[:, :, :, 0])
    d_ol = d_ol.view(N, BH, 2 * C, V)
    dO = d_ol[:, :, :C]
    # dU_out = A_rbᵀ dO, stacked over dO for the matmul with [W; r̃] below.
    dU_dO = torch.empty((N, BH, 2 * C, V), dtype=acc, device=device)
    dU_dO[:, :, :C] = A[:, :, :C, C:].mT @ dO  # (a strided out= would take bmm's slow path)
    dU_dO[:, :, C:] = dO

    # The sequential part in reverse; G_n = dL/dS_n. With dU_n = dU_out + b_end G_{n+1},
    #   G_n = exp(Γ_C) G_{n+1} + [W; r̃]ᵀ [dU_out; dO] + Wᵀ b_end G_{n+1},
    # the middle term batched over all chunks beforehand, written where G_n goes.
    G = torch.empty_like(states)
    torch.matmul(wr.mT, dU_dO, out=G[:N])
    if d_final is None:
        G[N].zero_()
    else:
        G[N] = d_final.reshape(BH, K, V)
    bG = torch.empty((N, BH, C, V), dtype=acc, device=device)  # b_end G_{n+1}
    Gs, bGs, b_end, W_T = G.unbind(0), bG.unbind(0), kb_end[:, :, C:].unbind(0), wr[:, :, :C].mT.unbind(0)
    with one_thread():
        for n in range(N - 1, -1, -1):
            torch.bmm(b_end[n], Gs[n + 1], out=bGs[n])
            Gs[n].addcmul_(Gs[n + 1], decay[n])
            torch.baddbmm(Gs[n], W_T[n], bGs[n], out=Gs[n])
    dU = bG.add_(dU_dO[:, :, :C])
    dN = G[1:]  # gradient wrt the state each chunk produced

    d_ol[:, :, C:] = T_inv.mT @ dU  # λ
    dA = (d_ol @ vu.mT).masked_fill_(score_mask(C, device), 0.0)
    d_ra = (dA @ kb).addcmul_(d_ol @ S.mT, mid)  # [r̃; ã] = ra · exp(m)
    d_kb = dA.mT @ ra
    d_kb_end = vu @ dN.mT
    d_kb.addcmul_(d_kb_end, to_end)  # kb_end = kb · exp(Γ_C - m)
    dv = A[:, :, :, :C].mT @ d_ol  # A_rkᵀ dO + A_akᵀ λ
    flat(dv).baddbmm_(flat(kb_end[:, :, :C]), flat(dN))

    # The inputs' gradients: undo the decay scaling and the chunk layout in one op per input.
    dr, dw, dk, dv_out, da, db = grads
    d_ra6, d_kb6 = d_ra.view(N, B, H, 2, C, K), d_kb.view(N, B, H, 2, C, K)
    ra_scale, down = ra_scale.view(N, B, H, 2, C, K), down.view(N, B, H, C, K)
    torch.mul(d_ra6[:, :, :, 0], ra_scale[:, :, :, 0], out=chunked(dr, C))
    torch.mul(d_kb6[:, :, :, 0], down, out=chunked(dk, C))
    chunked(dv_out, C).copy_(dv.view(N, B, H, C, V))
    torch.mul(d_ra6[:, :, :, 1], ra_scale[:, :, :, 1], out=chunked(da, C))
    torch.mul(d_kb6[:, :, :, 1], down, out=chunked(db, C))

    # Log-decays. A tensor scaled by exp(±(Γ - m)) contributes ±(its grad · itself) to dΓ;
    # r_in and the k/b terms go to Γ_i, a_in to Γ_{i-1} (rows C.. of d_g). In place: d_ra and
    # d_kb are not needed any more.
    d_g = d_ra.mul_(ra)
    g_kb = d_kb.mul_(kb)
    d_g[:, :, :C] -= g_kb[:, :, :C]
    d_g[:, :, :C] -= g_kb[:, :, C:]
    d_decay = torch.empty((N, BH, K), dtype=acc, device=device)
    with one_thread():  # blocks keep the temporaries small
        for i in range(0, N, 8):
            torch.linalg.vecdot(dN[i : i + 8], S[i : i + 8], out=d_decay[i : i + 8])
    d_g[:, :, C - 1] += d_kb_end.mul_(kb_end).sum(-2) + d_decay * decay.squeeze(-1)  # Γ_C
    chunked(dw, C).copy_(decay_grad(d_g, with_prev=True).view(N, B, H, C, K))
    return G[0].view(B, H, K, V)


# Below this many B·T·H·K input elements a call runs as one piece. Measured with SmolLM2 shapes
# (9 heads of 64, 2 threads, shared CPU): at T=2048 (1.2M elements) the head split wins, at T=512
# (0.3M) it made stage 1 training ~20% slower (148-158 vs 181-189 tokens/s) and stage 2 no faster.
PARALLEL_MIN_ELEMENTS = 1 << 20


def head_groups(B: int, T: int, H: int, K: int, device_type: str = "cpu") -> list[tuple[int, int]]:
    """Contiguous head ranges, one per intra-op thread, for `run_in_threads`; [(0, H)] when
    there is one thread, one head, little work or the tensors are not on the CPU."""
    n = min(torch.get_num_threads(), H)
    if n < 2 or B * T * H * K < PARALLEL_MIN_ELEMENTS or device_type != "cpu":
        return [(0, H)]
    bounds = [round(i * H / n) for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def run_in_threads(fn, argss: list[tuple]) -> list:
    """[fn(*args) for args in argss], each on its own Python thread with one intra-op thread.

    Heads are independent, so the kernels split them into groups, one per core, instead of
    splitting every op over the cores: an op split over threads ends in a join that waits for the
    slowest thread, and on shared cores (other processes, even at nice 19) a descheduled thread
    stalls each of the few hundred ops of a kernel call by milliseconds. Independent groups only
    meet once, at the end. Torch ops release the GIL. Grad mode, inference mode and autocast are
    thread-local, so the caller's grad-free, autocast-free setting is re-established in each
    thread (inference mode as the caller has it, so its tensors may be written in place).
    """
    if len(argss) == 1:
        return [fn(*argss[0])]
    inference = torch.is_inference_mode_enabled()
    results, errors = [None] * len(argss), []

    def work(i: int) -> None:
        try:
            torch.set_num_threads(1)  # this thread's OpenMP setting; the caller's is 1 already
            with torch.inference_mode(inference), torch.no_grad(), contextlib.ExitStack() as stack:
                for device_type in {x.device.type for x in argss[i] if isinstance(x, torch.Tensor)}:
                    stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
                results[i] = fn(*argss[i])
        except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(e)

    with one_thread():
        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(1, len(argss))]
        for t in threads:
            t.start()
        work(0)
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return results


class _ChunkRWKV7(torch.autograd.Function):
    """chunk_rwkv7 with a hand-written backward pass; T is a multiple of C here.

    Tensors inside are chunk-major [N, B·H, ...]. Naming: x_in is x scaled by its decay relative to
    the chunk middle (r_in = r·exp(Γ - m), k_in = k·exp(m - Γ), ...), so A = r_in k_inᵀ is the
    decayed score matrix; x_end is scaled to the chunk end; r̃, ã are scaled from the chunk start
    (they read the incoming state S_n). Groups of heads run on separate threads (`run_in_threads`).
    """

    @staticmethod
    @without_autocast
    def forward(ctx, r, w, k, v, a, b, initial_state, scale: float, C: int):
        B, T, H, K = r.shape
        V = v.shape[-1]
        acc = accumulation_dtype(r.dtype)
        ctx.dtypes = (r.dtype, w.dtype, k.dtype, v.dtype, a.dtype, b.dtype)
        ctx.state_dtype = initial_state.dtype if initial_state is not None else None
        ctx.scale, ctx.C, ctx.groups = scale, C, head_groups(B, T, H, K, r.device.type)
        keep_states = any(ctx.needs_input_grad)
        o = torch.empty((B, T, H, V), dtype=r.dtype, device=r.device)
        s0 = initial_state.to(acc) if initial_state is not None else None
        results = run_in_threads(_rwkv7_forward, [
            (*(x[:, :, h0:h1] for x in (r, w, k, v, a, b)), None if s0 is None else s0[:, h0:h1],
             o[:, :, h0:h1], scale, C, keep_states)
            for h0, h1 in ctx.groups
        ])
        if keep_states:
            ctx.save_for_backward(*(x for saved, _ in results for x in saved))
        final = [state for _, state in results]
        # Each is a view into its group's state buffer (every chunk's, when training); the cache
        # must not keep those alive, so the final state is always a fresh tensor (cat copies).
        return o, (final[0].clone() if len(final) == 1 else torch.cat(final, dim=1))

    @staticmethod
    @without_autocast
    def backward(ctx, d_o, d_final):
        saved = ctx.saved_tensors
        per_group = len(saved) // len(ctx.groups)
        B, T, H, V = d_o.shape
        K = saved[0].shape[-1]
        grads = [torch.empty((B, T, H, V if i == 3 else K), dtype=dtype, device=d_o.device)
                 for i, dtype in enumerate(ctx.dtypes)]
        d_states = run_in_threads(_rwkv7_backward, [
            (saved[i * per_group : (i + 1) * per_group], d_o[:, :, h0:h1],
             None if d_final is None else d_final[:, h0:h1], [g[:, :, h0:h1] for g in grads], ctx.scale, ctx.C)
            for i, (h0, h1) in enumerate(ctx.groups)
        ])
        d_state = None
        if ctx.state_dtype is not None:
            d_state = (d_states[0] if len(d_states) == 1 else torch.cat(d_states, dim=1)).to(ctx.state_dtype)
        return (*grads, d_state, None, None)


def chunk_rwkv7(
    r, w, k, v, a, b, scale: float = 1.0, initial_state=None, output_final_state: bool = False, chunk_size: int = 16
):
    T = r.shape[1]
    C = safe_chunk_size(w, chunk_size)
    o, final_state = _ChunkRWKV7.apply(*pad_to_chunks([r, w, k, v, a, b], C), initial_state, float(scale), C)
    return o[:, :T], (final_state if output_final_state else None)
