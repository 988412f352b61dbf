"""The oneDNN matmul route: fp32 results, restored settings, and a clean fallback."""

import warnings

import pytest
import torch

from radlads import cpu_matmul


def linear_fwd_bwd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=g)
    lin = torch.nn.Linear(96, 48)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 96, generator=g))
        lin.bias.copy_(torch.randn(48, generator=g))
    y = lin(x)
    y.square().sum().backward()
    return y.detach(), lin.weight.grad.clone()


def test_same_results_and_setting_restored():
    before = torch.backends.mkldnn.matmul.fp32_precision
    ref = linear_fwd_bwd()
    with cpu_matmul.onednn_matmul(True) as used:
        got = linear_fwd_bwd()
        if used:
            assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_env_switch_off(monkeypatch):
    monkeypatch.setenv(cpu_matmul.ENV, "0")
    with cpu_matmul.onednn_matmul() as used:
        assert not used
        assert torch.backends.mkldnn.matmul.fp32_precision != "bf16"


def test_fallback_when_onednn_would_round(monkeypatch):
    # A CPU where oneDNN would round to bf16 (AMX), or a build without it: one warning, default route.
    monkeypatch.setattr(cpu_matmul, "onednn_keeps_fp32", lambda: False)
    cpu_matmul._warn_unavailable.cache_clear()
    before = torch.backends.mkldnn.matmul.fp32_precision
    with pytest.warns(RuntimeWarning, match="oneDNN"):
        with cpu_matmul.onednn_matmul(True) as used:
            assert not used and torch.backends.mkldnn.matmul.fp32_precision == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once per process
        with cpu_matmul.onednn_matmul(True):
            pass


def test_probe_is_a_bool():
    assert cpu_matmul.onednn_keeps_fp32() in (True, False)
