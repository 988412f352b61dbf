"""`compile: true` swaps in a torch.compile'd RWKV-7 kernel that computes what the eager one does,
and falls back to eager with one warning where inductor cannot build it."""

import warnings

import pytest
import torch

from radlads import compiled_kernels
from radlads.config import load_config
from radlads.model import ops_rwkv7
from radlads.ops import chunk_rwkv7, recurrent_rwkv7
from radlads.runtime import setup_runtime
from tests.test_ops import outputs_and_grads, rel_err, rwkv7_inputs


@pytest.fixture(autouse=True)
def eager_afterwards():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    compiled_kernels.eager_rwkv7_kernel()
    torch._dynamo.reset()
    torch.set_num_threads(threads)


def case(seed=0):
    xs = [x.requires_grad_() for x in rwkv7_inputs(1, 32, 2, 8, 8, -1.0, torch.float32, seed=seed)]
    s0 = torch.randn(1, 2, 8, 8, requires_grad=True)
    return xs, s0


def test_compiled_kernel_equals_the_reference_and_the_eager_kernel():
    xs, s0 = case()
    o_ref, s_ref, g_ref = outputs_and_grads(recurrent_rwkv7, xs, s0, 1.0)
    o_eager, s_eager, g_eager = outputs_and_grads(chunk_rwkv7, xs, s0, 1.0)
    compiled_kernels.compile_rwkv7_kernel()
    compiled_kernels.compile_rwkv7_kernel()  # idempotent: still one wrapper, not a wrapper of a wrapper
    assert not isinstance(ops_rwkv7._rwkv7_forward.eager, compiled_kernels.CompiledOrEager)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback here would hide a broken compile
        for _ in range(2):  # the second call reuses the graph
            o, s, g = outputs_and_grads(chunk_rwkv7, xs, s0, 1.0)
    assert not ops_rwkv7._rwkv7_forward.failed and not ops_rwkv7._rwkv7_backward.failed
    assert rel_err(o, o_eager) < 1e-5 and rel_err(s, s_eager) < 1e-5
    assert all(rel_err(got, want) < 1e-4 for got, want in zip(g, g_eager))
    assert rel_err(o, o_ref) < 1e-4 and all(rel_err(got, want) < 1e-3 for got, want in zip(g, g_ref))


def test_compiled_kernel_with_head_groups_on_two_threads(monkeypatch):
    # Both threads reach the compiler with the same new shapes at once; the lock makes one wait.
    xs, s0 = case(seed=1)
    o_eager, s_eager, g_eager = outputs_and_grads(chunk_rwkv7, xs, s0, 1.0)
    monkeypatch.setattr(ops_rwkv7, "PARALLEL_MIN_ELEMENTS", 0)
    torch.set_num_threads(2)
    compiled_kernels.compile_rwkv7_kernel()
    o, s, g = outputs_and_grads(chunk_rwkv7, xs, s0, 1.0)
    assert not ops_rwkv7._rwkv7_forward.failed
    assert rel_err(o, o_eager) < 1e-5 and rel_err(s, s_eager) < 1e-5
    assert all(rel_err(got, want) < 1e-4 for got, want in zip(g, g_eager))


def test_without_a_compiler_one_warning_then_eager_results(monkeypatch):
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("radlads-no-such-compiler",))
    xs, s0 = case(seed=2)
    o_eager, s_eager, g_eager = outputs_and_grads(chunk_rwkv7, xs, s0, 1.0)
    compiled_kernels.compile_rwkv7_kernel()
    with pytest.warns(RuntimeWarning, match="compiled RWKV-7 kernel unavailable") as caught:
        o, s, g = outputs_and_grads(chunk_rwkv7, xs, s0, 1.0)
        o2, _, _ = outputs_and_grads(chunk_rwkv7, xs, s0, 1.0)
    ours = [w for w in caught if "RWKV-7" in str(w.message)]
    assert len(ours) == 2  # one for the forward pass, one for the backward pass, none on the second call
    assert ops_rwkv7._rwkv7_forward.failed and ops_rwkv7._rwkv7_backward.failed
    assert torch.equal(o, o_eager) and torch.equal(s, s_eager) and torch.equal(o2, o_eager)
    assert all(torch.equal(got, want) for got, want in zip(g, g_eager))


def test_compile_is_a_run_setting_off_by_default(tmp_path):
    assert load_config(overrides={}).compile is False
    cfg = load_config(overrides={"compile": True, "threads": 1})
    eager_forward = ops_rwkv7._rwkv7_forward
    setup_runtime(cfg)
    assert isinstance(ops_rwkv7._rwkv7_forward, compiled_kernels.CompiledOrEager)
    assert ops_rwkv7._rwkv7_forward.eager is eager_forward
    compiled_kernels.eager_rwkv7_kernel()
    assert ops_rwkv7._rwkv7_forward is eager_forward
