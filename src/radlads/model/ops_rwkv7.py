"""RWKV-7 recurrence (diagonal-plus-low-rank state update) in pure PyTorch.

Convention (flash-linear-attention's): r, w, k, a, b are [B, T, H, K], v is [B, T, H, V],
w is the log-decay (<= 0), the state is [B, H, K, V]. Per step

    S_t = diag(exp(w_t)) S_{t-1} + b_t (a_tᵀ S_{t-1}) + k_t v_tᵀ,      o_t = scale · S_tᵀ r_t

`recurrent_rwkv7` is the reference: a plain step loop. `chunk_rwkv7` computes the same thing a
chunk of C steps at a time. Inside a chunk the low-rank term is treated as an extra key/value
pair, key b_j and value u_j = S_{j-1}ᵀ a_j; the u's solve a unit-lower-triangular system, so
every chunk's intra-chunk work is a handful of batched matmuls done for all chunks at once.
What is left sequential is one small affine map per chunk, S_{n+1} = M_n S_n + N_n.
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


def to_chunks(x: torch.Tensor, chunk: int, acc: torch.dtype) -> torch.Tensor:
    """[B, T, H, D] (T a multiple of chunk) -> contiguous [B, H, N, C, D] in the accumulation dtype.

    Contiguous matters: elementwise work on the permuted view is several times slower on CPU.
    """
    B, T, H, D = x.shape
    return x.to(acc).view(B, T // chunk, chunk, H, D).permute(0, 3, 1, 2, 4).contiguous()


def unit_lower_inverse_powers(L: torch.Tensor) -> list[torch.Tensor]:
    """[L, L², L⁴, …] for strictly lower-triangular L of size C: enough factors for (I - L)⁻¹.

    L is nilpotent, so (I - L)⁻¹ = (I + L)(I + L²)(I + L⁴)…: log2(C) batched matmuls with
    ordinary autograd instead of C sequential substitution steps.
    """
    powers = [L]
    for _ in range((L.shape[-1] - 1).bit_length() - 1):
        powers.append(powers[-1] @ powers[-1])
    return powers


def solve_unit_lower(powers: list[torch.Tensor], rhs: torch.Tensor) -> torch.Tensor:
    """(I - L)⁻¹ rhs, given unit_lower_inverse_powers(L)."""
    for p in powers:
        rhs = rhs + p @ rhs
    return rhs


def run_chunks(M: torch.Tensor, N_add: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The only sequential part: S_{n+1} = M_n S_n + N_n for chunks n = 0, 1, ….

    M [B, H, N, K, K], N_add [B, H, N, K, V], state [B, H, K, V]. Returns the state at the start
    of every chunk, [B, H, N, K, V], and the final state.
    """
    B, H, N, K, V = N_add.shape
    # Chunk-major contiguous copies make every step one fused baddbmm on contiguous memory.
    M = M.permute(2, 0, 1, 3, 4).reshape(N, B * H, K, K)
    N_add = N_add.permute(2, 0, 1, 3, 4).reshape(N, B * H, K, V)
    state = state.reshape(B * H, K, V)
    starts = []
    for M_n, N_n in zip(M.unbind(0), N_add.unbind(0)):
        starts.append(state)
        state = torch.baddbmm(N_n, M_n, state)
    starts = torch.stack(starts, dim=0).view(N, B, H, K, V).permute(1, 2, 0, 3, 4)
    return starts, state.view(B, H, K, V)


# exp() overflows fp32 just above 88, and backward multiplies two split factors together, so
# each factor (half a chunk of cumulative decay) is kept below e^40.
MAX_HALF_CHUNK_LOG_DECAY = 40.0


def safe_chunk_size(w: torch.Tensor, chunk_size: int) -> int:
    """The largest chunk <= chunk_size whose half-chunk cumulative decay stays below exp's range.

    RAD-RWKV7 decays are >= -0.61 per step, so this is chunk_size itself; steeper decays (RWKV-6
    allows -5) get smaller chunks instead of infs.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    steepest = float(-w.detach().min()) if w.numel() else 0.0
    while chunk_size > 1 and (chunk_size / 2) * steepest > MAX_HALF_CHUNK_LOG_DECAY:
        chunk_size //= 2
    return chunk_size


def pad_time(xs, multiple: int):
    T = xs[0].shape[1]
    pad = (-T) % multiple
    if pad == 0:
        return xs
    # Zero log-decay, keys, values, a, b on padded steps leave the state untouched.
    return [torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)) for x in xs]


def chunk_rwkv7(
    r, w, k, v, a, b, scale: float = 1.0, initial_state=None, output_final_state: bool = False, chunk_size: int = 32
):
    B, T, H, K = r.shape
    V = v.shape[-1]
    C = safe_chunk_size(w, chunk_size)
    dtype, acc = r.dtype, accumulation_dtype(r.dtype)
    r, w, k, v, a, b = (to_chunks(x, C, acc) for x in pad_time([r, w, k, v, a, b], C))

    g = w.cumsum(-2)  # Γ_i: log-decay from the chunk start through step i
    mid = g[..., (C - 1) // 2 : (C - 1) // 2 + 1, :]
    g_last = g[..., -1:, :]
    # Intra-chunk products exp(Γ_i - Γ_j) are split into two factors around the chunk middle, so
    # neither factor exceeds exp(C/2 · max|w|) <= e^40 (safe_chunk_size): no overflow in fp32,
    # forward or backward.
    # The one-sided factors (chunk start -> i, j -> chunk end) are products of these and <= 1.
    up = (g - mid).exp()  # exp(Γ_i - mid)
    down = up.reciprocal()  # exp(mid - Γ_j)
    up_prev = (g - w - mid).exp()  # exp(Γ_{i-1} - mid)
    mid_exp, last_exp = mid.exp(), (g_last - mid).exp()
    r_in, a_in = r * up, a * up_prev
    k_in, b_in = k * down, b * down
    r_s0, a_s0 = r_in * mid_exp, a_in * mid_exp  # r_i exp(Γ_i), a_i exp(Γ_{i-1})
    k_end, b_end = k_in * last_exp, b_in * last_exp  # k_j exp(Γ_C - Γ_j)

    strict = torch.ones(C, C, dtype=torch.bool, device=r.device).tril(-1)
    causal = torch.ones(C, C, dtype=torch.bool, device=r.device).tril(0)
    zero = r.new_zeros(())
    A_ab = torch.where(strict, a_in @ b_in.transpose(-1, -2), zero)
    A_ak = torch.where(strict, a_in @ k_in.transpose(-1, -2), zero)
    A_rk = torch.where(causal, r_in @ k_in.transpose(-1, -2), zero)
    A_rb = torch.where(causal, r_in @ b_in.transpose(-1, -2), zero)

    # u_j = S_{j-1}ᵀ a_j for every step, written as U = W S_0 + Ū.
    powers = unit_lower_inverse_powers(A_ab)
    W = solve_unit_lower(powers, a_s0)
    U_bar = solve_unit_lower(powers, A_ak @ v)
    # Per chunk: O = P S_0 + Q and S_next = M S_0 + N_add.
    P = r_s0 + A_rb @ W
    Q = A_rk @ v + A_rb @ U_bar
    M = torch.diag_embed(last_exp.squeeze(-2) * mid_exp.squeeze(-2)) + b_end.transpose(-1, -2) @ W
    N_add = k_end.transpose(-1, -2) @ v + b_end.transpose(-1, -2) @ U_bar

    state = initial_state_or_zeros(initial_state, (B, H, K, V), acc, r.device)
    starts, state = run_chunks(M, N_add, state)
    o = P @ starts + Q  # [B, H, N, C, V]
    o = (o * scale).permute(0, 2, 3, 1, 4).reshape(B, -1, H, V)[:, :T]
    return o.to(dtype), (state if output_final_state else None)
