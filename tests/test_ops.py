"""Chunked kernels equal the step-by-step recurrences: outputs, final states and gradients."""

import pytest
import torch
import torch.nn.functional as F

from radlads.ops import chunk_gla, chunk_rwkv7, recurrent_gla, recurrent_rwkv7


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
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


KERNELS = {
    "rwkv7": (chunk_rwkv7, recurrent_rwkv7, rwkv7_inputs, 1.0),
    "gla": (chunk_gla, recurrent_gla, gla_inputs, None),
}


@pytest.mark.parametrize("kind", KERNELS)
@pytest.mark.parametrize("T", [1, 7, 16, 45])
@pytest.mark.parametrize("min_log_decay", [-0.606531, -5.0])
def test_chunk_equals_recurrent_fp32_outputs_and_grads(kind, T, min_log_decay):
    chunk, recurrent, make, scale = KERNELS[kind]
    xs = [x.requires_grad_() for x in make(2, T, 3, 16, 8, min_log_decay, torch.float32)]
    s0 = torch.randn(2, 3, 16, 8, requires_grad=True)
    results = []
    for fn in (recurrent, chunk):
        o, s = fn(*xs, scale=scale, initial_state=s0, output_final_state=True)
        loss = (o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() + (s**2).sum()
        results.append((o, s, torch.autograd.grad(loss, xs + [s0])))
    (o_ref, s_ref, g_ref), (o, s, g) = results
    assert torch.isfinite(o).all() and all(torch.isfinite(x).all() for x in g)
    assert rel_err(o, o_ref) < 1e-4 and rel_err(s, s_ref) < 1e-4
    for got, want in zip(g, g_ref):
        assert rel_err(got, want) < 1e-4


@pytest.mark.parametrize("kind", KERNELS)
def test_state_carried_across_calls_equals_one_call(kind):
    chunk, _, make, scale = KERNELS[kind]
    xs = make(1, 50, 2, 8, 8, -1.0, torch.float64)
    whole, s_whole = chunk(*xs, scale=scale, output_final_state=True)
    first, s_mid = chunk(*(x[:, :21] for x in xs), scale=scale, output_final_state=True)
    second, s_end = chunk(*(x[:, 21:] for x in xs), scale=scale, initial_state=s_mid, output_final_state=True)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s_end, s_whole, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", KERNELS)
def test_float64_matches_to_double_precision(kind):
    chunk, recurrent, make, scale = KERNELS[kind]
    xs = make(1, 33, 2, 8, 4, -5.0, torch.float64)
    o_ref, _ = recurrent(*xs, scale=scale)
    o, _ = chunk(*xs, scale=scale)
    assert o.dtype == torch.float64 and rel_err(o, o_ref) < 1e-12


@pytest.mark.parametrize("kind", KERNELS)
def test_bf16_inputs_run_in_fp32_and_return_bf16(kind):
    chunk, _, make, scale = KERNELS[kind]
    xs = make(1, 40, 2, 16, 16, -0.606531, torch.float32)
    ref, _ = chunk(*xs, scale=scale)
    out, state = chunk(*(x.bfloat16() for x in xs), scale=scale, output_final_state=True)
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32
    assert rel_err(out.float(), ref) < 3e-2  # only the inputs were rounded to bf16


def test_scale_is_applied_and_gla_default_is_inverse_sqrt_k():
    xs = gla_inputs(1, 9, 1, 16, 4, -0.5, torch.float64)
    default, _ = chunk_gla(*xs)
    explicit, _ = chunk_gla(*xs, scale=0.25)
    torch.testing.assert_close(default, explicit)
    r = rwkv7_inputs(1, 9, 1, 8, 4, -0.5, torch.float64)
    torch.testing.assert_close(chunk_rwkv7(*r, scale=3.0)[0], 3.0 * chunk_rwkv7(*r)[0])


def test_final_state_only_when_asked():
    xs = rwkv7_inputs(1, 5, 1, 4, 4, -0.5, torch.float32)
    assert chunk_rwkv7(*xs)[1] is None and recurrent_rwkv7(*xs)[1] is None
    assert chunk_rwkv7(*xs, output_final_state=True)[1].shape == (1, 1, 4, 4)


def test_delta_rule_removes_what_it_replaces():
    # With a = -κ̂, b = κ̂ (rate 1), no decay and k = κ̂, writing the same key twice replaces the
    # stored value instead of adding to it: the defining property of the delta rule.
    K = 4
    key = F.normalize(torch.randn(1, 1, 1, K), dim=-1).expand(1, 2, 1, K)
    v = torch.tensor([[[[1.0, 0, 0, 0]], [[0, 2.0, 0, 0]]]])
    zeros = torch.zeros(1, 2, 1, K)
    out, _ = chunk_rwkv7(key, zeros, key, v, -key, key)
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
