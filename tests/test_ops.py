"""Chunked kernels equal the step-by-step recurrences: outputs, final states and gradients."""

import pytest
import torch
import torch.nn.functional as F

from radlads.ops import chunk_gla, chunk_rwkv7, recurrent_gla, recurrent_rwkv7


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    # Tiny shapes: threads only add fork/join cost, and on the shared CI cores they can stall.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rwkv7_inputs(B, T, H, K, V, min_log_decay, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    r, k = (torch.randn(B, T, H, K, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    w = min_log_decay * torch.rand(B, T, H, K, generator=g, dtype=dtype)
    kk = F.normalize(torch.randn(B, T, H, K, generator=g, dtype=dtype), dim=-1)
    rate = torch.rand(B, T, H, K, generator=g, dtype=dtype)
    return [r, w, k, v, -kk, kk * rate]  # a = -κ̂, b = κ̂ ⊙ a_rate, as the RWKV-7 time-mix calls it


def gla_inputs(B, T, H, K, V, min_log_decay, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    return [q, k, v, min_log_decay * torch.rand(B, T, H, K, generator=g, dtype=dtype)]


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


KERNELS = {
    "rwkv7": (chunk_rwkv7, recurrent_rwkv7, rwkv7_inputs, 1.0),
    "gla": (chunk_gla, recurrent_gla, gla_inputs, None),
}


def outputs_and_grads(fn, xs, s0, scale, **kw):
    """Output, final state and gradients wrt every input and the initial state of a fixed loss."""
    o, s = fn(*xs, scale=scale, initial_state=s0, output_final_state=True, **kw)
    weights = torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)
    loss = (o * weights).sum() + (s * s.detach().sin()).sum()
    return o, s, torch.autograd.grad(loss, xs + [s0])


@pytest.mark.parametrize("kind", KERNELS)
@pytest.mark.parametrize(
    "B,T,H,K,V",
    [(2, 1, 3, 16, 8), (1, 7, 2, 8, 16), (2, 16, 3, 16, 8), (1, 45, 2, 16, 16), (1, 70, 1, 32, 8)],
)
@pytest.mark.parametrize("min_log_decay", [-0.606531, -5.0])
def test_chunk_equals_recurrent_fp32_outputs_and_grads(kind, B, T, H, K, V, min_log_decay):
    chunk, recurrent, make, scale = KERNELS[kind]
    xs = [x.requires_grad_() for x in make(B, T, H, K, V, min_log_decay, torch.float32)]
    s0 = torch.randn(B, H, K, V, requires_grad=True)
    o_ref, s_ref, g_ref = outputs_and_grads(recurrent, xs, s0, scale)
    o, s, g = outputs_and_grads(chunk, xs, s0, scale)
    assert torch.isfinite(o).all() and all(torch.isfinite(x).all() for x in g)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    assert rel_err(o, o_ref) < 1e-4 and rel_err(s, s_ref) < 1e-4
    for i, (got, want) in enumerate(zip(g, g_ref)):
        assert got.shape == want.shape and rel_err(got, want) < 1e-4, f"gradient {i} (last: initial_state)"


@pytest.mark.parametrize("kind", KERNELS)
@pytest.mark.parametrize("chunk_size", [4, 16, 32])
def test_float64_matches_to_double_precision_for_any_chunk(kind, chunk_size):
    chunk, recurrent, make, scale = KERNELS[kind]
    xs = [x.requires_grad_() for x in make(1, 37, 2, 8, 4, -2.0, torch.float64)]
    s0 = torch.randn(1, 2, 8, 4, dtype=torch.float64, requires_grad=True)
    o_ref, s_ref, g_ref = outputs_and_grads(recurrent, xs, s0, scale)
    o, s, g = outputs_and_grads(chunk, xs, s0, scale, chunk_size=chunk_size)
    assert o.dtype == torch.float64 and s.dtype == torch.float64
    assert rel_err(o, o_ref) < 1e-11 and rel_err(s, s_ref) < 1e-11
    assert all(rel_err(got, want) < 1e-10 for got, want in zip(g, g_ref))
    with torch.no_grad():  # inference keeps no per-chunk states: a separate code path
        o_inf, s_inf = chunk(*xs, scale=scale, initial_state=s0, output_final_state=True, chunk_size=chunk_size)
    assert rel_err(o_inf, o_ref) < 1e-11 and rel_err(s_inf, s_ref) < 1e-11


@pytest.mark.parametrize("kind", KERNELS)
def test_state_carried_across_calls_equals_one_call_with_gradients(kind):
    chunk, _, make, scale = KERNELS[kind]
    xs = [x.requires_grad_() for x in make(1, 50, 2, 8, 8, -1.0, torch.float64)]
    s0 = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    whole, s_whole = chunk(*xs, scale=scale, initial_state=s0, output_final_state=True)
    # The split point is not a chunk boundary, and the second call starts from the first's state.
    first, s_mid = chunk(*(x[:, :21] for x in xs), scale=scale, initial_state=s0, output_final_state=True)
    second, s_end = chunk(*(x[:, 21:] for x in xs), scale=scale, initial_state=s_mid, output_final_state=True)
    split = torch.cat([first, second], dim=1)
    torch.testing.assert_close(split, whole, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s_end, s_whole, rtol=1e-10, atol=1e-10)
    weights = torch.randn_like(whole)
    grads_whole = torch.autograd.grad((whole * weights).sum() + s_whole.sum(), xs + [s0])
    grads_split = torch.autograd.grad((split * weights).sum() + s_end.sum(), xs + [s0])
    for got, want in zip(grads_split, grads_whole):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind", KERNELS)
def test_steepest_decays_stay_finite_over_long_sequences(kind):
    # Per-step log-decay -5 everywhere: cumulative decays reach e^-1000 over the sequence, and the
    # intra-chunk factors are as large as the scheme allows (e^40 for 16-step chunks).
    chunk, recurrent, make, scale = KERNELS[kind]
    xs = make(1, 200, 2, 16, 16, -5.0, torch.float32)
    xs[1 if kind == "rwkv7" else 3] = torch.full_like(xs[0], -5.0)
    xs = [x.requires_grad_() for x in xs]
    o, _ = chunk(*xs, scale=scale)
    o_ref, _ = recurrent(*xs, scale=scale)
    grads = torch.autograd.grad(o.square().sum(), xs)
    grads_ref = torch.autograd.grad(o_ref.square().sum(), xs)
    assert torch.isfinite(o).all() and rel_err(o, o_ref) < 1e-4
    for got, want in zip(grads, grads_ref):
        assert torch.isfinite(got).all() and rel_err(got, want) < 1e-4


@pytest.mark.parametrize("kind", KERNELS)
def test_bf16_inputs_accumulate_in_fp32_and_return_bf16(kind):
    chunk, _, make, scale = KERNELS[kind]
    xs = make(1, 40, 2, 16, 16, -0.606531, torch.float32)
    rounded = [x.bfloat16().float() for x in xs]  # what the bf16 kernel actually sees
    ref, ref_state = chunk(*rounded, scale=scale, output_final_state=True)
    leaves = [x.bfloat16().requires_grad_() for x in xs]
    out, state = chunk(*leaves, scale=scale, output_final_state=True)
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32
    assert rel_err(out, ref) < 1e-2  # only the output rounding: accumulation was fp32
    assert rel_err(state, ref_state) < 1e-5
    grads = torch.autograd.grad(out.float().sum(), leaves)
    assert all(g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("kind", KERNELS)
def test_bf16_autocast_region_does_not_lower_the_kernels_precision(kind):
    # Training runs the student under CPU bf16 autocast; the kernels keep fp32 arithmetic there.
    chunk, recurrent, make, scale = KERNELS[kind]
    xs = [x.requires_grad_() for x in make(1, 20, 2, 8, 8, -0.606531, torch.float32)]
    for fn in (chunk, recurrent):
        ref, ref_state = fn(*xs, scale=scale, output_final_state=True)
        ref_grads = torch.autograd.grad(ref.sum(), xs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, state = fn(*xs, scale=scale, output_final_state=True)
            # The chunked kernels' own backward also ignores the region (autograd's ops for the
            # step loop would not, as for any op: call backward outside autocast).
            inside = torch.autograd.grad(out.sum(), xs, retain_graph=True) if fn is chunk else ref_grads
        grads = torch.autograd.grad(out.sum(), xs)
        assert out.dtype == torch.float32 and state.dtype == torch.float32
        assert rel_err(out, ref) < 1e-6 and rel_err(state, ref_state) < 1e-6
        assert all(rel_err(g, want) < 1e-6 for g, want in zip(grads + inside, ref_grads + ref_grads))


@pytest.mark.parametrize("kind", KERNELS)
def test_scale_argument(kind):
    chunk, recurrent, make, _ = KERNELS[kind]
    xs = make(1, 9, 1, 16, 4, -0.5, torch.float64)
    for fn in (chunk, recurrent):
        torch.testing.assert_close(fn(*xs, scale=3.0)[0], 3.0 * fn(*xs, scale=1.0)[0])
    if kind == "gla":  # scale=None means K^-1/2
        torch.testing.assert_close(chunk(*xs)[0], chunk(*xs, scale=0.25)[0])
        torch.testing.assert_close(recurrent(*xs)[0], recurrent(*xs, scale=0.25)[0])
    else:
        torch.testing.assert_close(chunk(*xs)[0], chunk(*xs, scale=1.0)[0])


@pytest.mark.parametrize("kind", KERNELS)
def test_final_state_only_when_asked_and_threads_restored(kind):
    chunk, recurrent, make, scale = KERNELS[kind]
    xs = [x.requires_grad_() for x in make(1, 5, 1, 4, 4, -0.5, torch.float32)]
    torch.set_num_threads(2)
    assert chunk(*xs, scale=scale)[1] is None and recurrent(*xs, scale=scale)[1] is None
    o, s = chunk(*xs, scale=scale, output_final_state=True)
    assert s.shape == (1, 1, 4, 4)
    torch.autograd.grad(o.sum() + s.sum(), xs)
    assert torch.get_num_threads() == 2  # the loops run single-threaded, then restore


@pytest.mark.parametrize("kind", KERNELS)
@pytest.mark.parametrize("grad", [False, True])
def test_final_state_owns_its_memory(kind, grad):
    """The final state goes into the decoding cache, one per layer: a view into the kernel's
    per-chunk state buffer would keep that O(T) buffer alive for as long as the cache lives."""
    chunk, _, make, scale = KERNELS[kind]
    xs = [x.requires_grad_(grad) for x in make(1, 160, 2, 8, 8, -0.5, torch.float32)]
    with torch.set_grad_enabled(grad):
        _, s = chunk(*xs, scale=scale, output_final_state=True)
    assert s.untyped_storage().nbytes() == s.numel() * s.element_size()


@pytest.mark.parametrize("kind", KERNELS)
def test_non_contiguous_inputs_and_repeated_backward(kind):
    chunk, recurrent, make, scale = KERNELS[kind]
    xs = make(1, 24, 3, 8, 8, -1.0, torch.float64)
    # Same values through [B, H, T, D] storage, as a head-major projection would hand them over.
    strided = [x.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for x in xs]
    assert not strided[0].is_contiguous()
    o, _ = chunk(*strided, scale=scale)
    torch.testing.assert_close(o, recurrent(*xs, scale=scale)[0], rtol=1e-10, atol=1e-10)
    weights = torch.randn_like(o)
    first = torch.autograd.grad(o, strided, weights, retain_graph=True)
    second = torch.autograd.grad(o, strided, weights)  # backward must not consume saved tensors
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_delta_rule_removes_what_it_replaces():
    # With a = -κ̂, b = κ̂ (rate 1), no decay and k = κ̂, writing the same key twice replaces the
    # stored value instead of adding to it: the defining property of the delta rule.
    K = 4
    key = F.normalize(torch.randn(1, 1, 1, K), dim=-1).expand(1, 2, 1, K)
    v = torch.tensor([[[[1.0, 0, 0, 0]], [[0, 2.0, 0, 0]]]])
    zeros = torch.zeros(1, 2, 1, K)
    for fn in (chunk_rwkv7, recurrent_rwkv7):
        out, _ = fn(key, zeros, key, v, -key, key)
        torch.testing.assert_close(out[0, 1, 0], torch.tensor([0, 2.0, 0, 0]), rtol=1e-5, atol=1e-5)


def test_steep_decays_shrink_the_chunk_instead_of_overflowing():
    from radlads.model.ops_rwkv7 import safe_chunk_size

    assert safe_chunk_size(torch.full((4,), -0.606531), 32) == 32
    assert safe_chunk_size(torch.full((4,), -5.0), 64) == 16
    assert safe_chunk_size(torch.full((4,), -20.0), 64) == 4
    xs = rwkv7_inputs(1, 40, 2, 8, 8, -20.0, torch.float32)
    out, _ = chunk_rwkv7(*xs, chunk_size=64)
    ref, _ = recurrent_rwkv7(*xs)
    assert torch.isfinite(out).all() and rel_err(out, ref) < 1e-4


def test_cpu_dispatch_uses_the_pytorch_kernels():
    from radlads.model import ops, ops_gla, ops_rwkv7

    xs = rwkv7_inputs(1, 20, 2, 8, 8, -0.5, torch.float64)
    torch.testing.assert_close(ops.chunk_rwkv7(*xs)[0], ops_rwkv7.chunk_rwkv7(*xs)[0], rtol=0, atol=0)
    qs = gla_inputs(1, 20, 2, 8, 8, -0.5, torch.float64)
    torch.testing.assert_close(ops.recurrent_gla(*qs)[0], ops_gla.recurrent_gla(*qs)[0], rtol=0, atol=0)


def test_rwkv7_head_groups_on_threads_equal_one_group(monkeypatch):
    # Long inputs split their heads over threads (one per intra-op thread); forced here for a small
    # case: outputs, states and gradients must not depend on the split, also under inference mode.
    from radlads.model import ops_rwkv7

    xs = [x.requires_grad_() for x in rwkv7_inputs(2, 37, 5, 8, 4, -1.0, torch.float64)]
    s0 = torch.randn(2, 5, 8, 4, dtype=torch.float64, requires_grad=True)
    o_ref, s_ref, g_ref = outputs_and_grads(recurrent_rwkv7, xs, s0, 1.0)
    monkeypatch.setattr(ops_rwkv7, "PARALLEL_MIN_ELEMENTS", 0)
    for threads in (2, 3):
        torch.set_num_threads(threads)
        assert len(ops_rwkv7.head_groups(2, 37, 5, 8)) == threads
        o, s, g = outputs_and_grads(chunk_rwkv7, xs, s0, 1.0, chunk_size=8)
        assert torch.get_num_threads() == threads
        assert rel_err(o, o_ref) < 1e-11 and rel_err(s, s_ref) < 1e-11
        assert all(rel_err(got, want) < 1e-10 for got, want in zip(g, g_ref))
        with torch.inference_mode():
            o_inf, s_inf = chunk_rwkv7(*xs, initial_state=s0, output_final_state=True, chunk_size=8)
        assert rel_err(o_inf, o_ref) < 1e-11 and rel_err(s_inf, s_ref) < 1e-11
