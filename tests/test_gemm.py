"""The training path's GEMMs: the oneDNN linear equals F.linear, and the recurrent linear's gradients are right, on
the oneDNN path and on the F.linear fallback (oneDNN disabled)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seq2seq import gemm
from seq2seq.gemm import RecurrentLinear, linear


@pytest.fixture
def onednn_calls(monkeypatch) -> list[int]:
    """Counts the oneDNN GEMMs run, and skips where this torch build has none: there `linear` is F.linear itself,
    and comparing the two would compare F.linear with itself."""
    if not gemm._HAS_ONEDNN:
        pytest.skip("this torch build has no oneDNN linear (torch.ops.mkldnn._linear_pointwise)")
    calls: list[int] = []
    real = torch.ops.mkldnn._linear_pointwise

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", counted)
    return calls


@pytest.fixture
def onednn_disabled(monkeypatch):
    """oneDNN switched off (torch.backends.mkldnn.flags), and any oneDNN GEMM an error."""

    def refuse(*args):
        raise AssertionError("a oneDNN GEMM ran with oneDNN disabled")

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", refuse)
    # Only `enabled`: the flags' other defaults would switch on TF32, which this CPU build warns about.
    with torch.backends.mkldnn.flags(enabled=False, deterministic=None, allow_tf32=None, fp32_precision=None):
        yield


def _check_linear_with_strided_weights() -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 24, requires_grad=True)  # (B, T, K)
    full = torch.randn(16, 40, requires_grad=True)
    bias = torch.randn(16, requires_grad=True)
    # A column slice of a weight is neither row- nor column-major: the case oneDNN must not get as is.
    ours = linear(x, full[:, 8:32], bias)  # (B, T, 16)
    theirs = F.linear(x, full[:, 8:32], bias)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, (x, full, bias), grad)
    theirs_grads = torch.autograd.grad(theirs, (x, full, bias), grad)
    for a, b in zip(ours_grads, theirs_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    return x


def test_linear_equals_f_linear_with_strided_weights(onednn_calls):
    x = _check_linear_with_strided_weights()
    assert gemm._use_onednn(x)  # float32 on the CPU: the oneDNN path, the one under test
    assert len(onednn_calls) == 3  # the forward GEMM and the backward's two


def _recurrence(x: torch.Tensor, h0: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """h_t = tanh(RecurrentLinear([x_t; h_{t-1}])): every step reuses the weight, as the decoder's do."""
    step = RecurrentLinear(weight, bias)
    h, outputs = h0, []
    for t in range(x.shape[1]):
        h = torch.tanh(step(torch.cat([x[:, t], h], -1)))  # (B, H)
        outputs.append(h)
    return torch.stack(outputs, 1)  # (B, T, H)


def test_recurrent_linear_passes_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)  # (B, T, K)
    h0 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)  # (B, H)
    weight = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)  # (H, K + H)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_recurrence, (x, h0, weight, bias))


def _check_recurrence_in_float32() -> torch.Tensor:
    """The recurrence against a plain F.linear loop (the reference), outputs and gradients."""
    torch.manual_seed(0)
    inputs = [torch.randn(*shape, requires_grad=True) for shape in [(8, 6, 16), (8, 32), (32, 48), (32,)]]
    ours = _recurrence(*inputs)  # (B, T, H)
    x, h, weight, bias = inputs
    outputs = []
    for t in range(x.shape[1]):
        h = torch.tanh(F.linear(torch.cat([x[:, t], h], -1), weight, bias))
        outputs.append(h)
    theirs = torch.stack(outputs, 1)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, inputs, grad), torch.autograd.grad(theirs, inputs, grad), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    return x


def test_recurrent_linear_equals_autograd_in_float32(onednn_calls):
    x = _check_recurrence_in_float32()
    assert gemm._use_onednn(x)  # float32 on the CPU takes the oneDNN GEMMs
    assert len(onednn_calls) == 6 + 6 + 1  # per step a forward and an input-gradient GEMM; one weight gradient


def test_with_onednn_disabled_both_fall_back_to_f_linear_with_the_same_results(onednn_disabled):
    """With torch.backends.mkldnn.flags(enabled=False) (and on a build without oneDNN) everything takes F.linear."""
    assert not gemm._use_onednn(torch.zeros(1))
    _check_linear_with_strided_weights()
    _check_recurrence_in_float32()
