"""The training path's GEMMs: the oneDNN linear equals F.linear, and the recurrent linear's gradients are right."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seq2seq.gemm import RecurrentLinear, linear


def test_linear_equals_f_linear_with_strided_weights():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 24, requires_grad=True)  # (B, T, K)
    full = torch.randn(16, 40, requires_grad=True)
    bias = torch.randn(16, requires_grad=True)
    # A column slice of a weight is neither row- nor column-major: the case oneDNN must not get as is.
    ours = linear(x, full[:, 8:32], bias)
    theirs = F.linear(x, full[:, 8:32], bias)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, (x, full, bias), grad)
    theirs_grads = torch.autograd.grad(theirs, (x, full, bias), grad)
    for a, b in zip(ours_grads, theirs_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


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


def test_recurrent_linear_equals_autograd_in_float32():
    # float32 on the CPU takes the oneDNN GEMMs; a plain F.linear loop is the reference.
    torch.manual_seed(0)
    inputs = [torch.randn(*shape, requires_grad=True) for shape in [(8, 6, 16), (8, 32), (32, 48), (32,)]]
    ours = _recurrence(*inputs)
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
