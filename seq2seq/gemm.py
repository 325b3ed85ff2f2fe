"""The training path's matrix products: oneDNN GEMMs on the CPU, and a recurrent linear map whose weight gradient is
one GEMM over all steps.

Why oneDNN: PyTorch sends fp32 CPU matmuls to MKL's sgemm, which on non-Intel CPUs (the AMD EPYC these benchmarks
run on) dispatches its AVX2 kernels; oneDNN picks its kernels from the ISA it detects, and runs the same fp32 GEMMs
(fp32 inputs, fp32 accumulation, no reduced-precision math mode) about 2.2x faster there. Other dtypes and devices,
and builds without oneDNN, take `F.linear`. The teacher-forced forward (seq2seq/fast.py) uses these (training, and
the teacher-forced loss of validation and evaluation); decoding (`Decoder.step`, `Decoder.project`, export) keeps
plain modules, so it traces and exports as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

_HAS_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _use_onednn(x: torch.Tensor) -> bool:
    return _HAS_ONEDNN and torch.backends.mkldnn.enabled and x.device.type == "cpu" and x.dtype == torch.float32


def _plain(t: torch.Tensor) -> torch.Tensor:
    """t itself if it is row- or column-major, else a contiguous copy: oneDNN runs other strides (a column slice of a
    weight) through its reference kernels, thousands of times slower."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T (+ bias), no autograd. x: (N, K), weight: (M, K), either may be a strided view -> (N, M)."""
    if _use_onednn(x):
        return torch.ops.mkldnn._linear_pointwise(_plain(x), _plain(weight), bias, "none", [], "")
    return F.linear(x, weight, bias)


class _Linear(torch.autograd.Function):
    """y = x @ W^T + b with `gemm` forward and backward. x: (N, K), W: (M, K), b: (M,) or None."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return gemm(x, weight, bias)  # (N, M)

    @staticmethod
    @once_differentiable  # the backward is hand-written: a second derivative through it would be silently wrong
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = gemm(grad, weight.t()) if ctx.needs_input_grad[0] else None  # (N, K)
        grad_w = gemm(grad.t(), x.t()) if ctx.needs_input_grad[1] else None  # (M, K)
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None  # (M,)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear over the last dimension of x (..., K) -> (..., M), through `gemm` where that is faster."""
    if not _use_onednn(x):
        return F.linear(x, weight, bias)
    return _Linear.apply(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])


class RecurrentLinear:
    """y_t = x_t @ W^T + b, applied once per step of a loop, with one weight-gradient GEMM over all the steps.

    Plain autograd computes a (M, K) weight gradient per step, a GEMM whose inner dimension is only the batch, and
    adds the T of them up, a full pass over the gradient per step. Here each step's backward computes only the input's
    gradient and keeps the output's; a node that every step depends on (so autograd runs it after all of them) then
    computes the weight and bias gradients as one (M, B*T) @ (B*T, K) GEMM. Build one per forward pass.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self._steps = _Steps(weight.detach(), None if bias is None else bias.detach())
        # The anchor is empty; it only links every step's node to the weight and bias.
        self._anchor = _Anchor.apply(self._steps, weight, bias) if torch.is_grad_enabled() else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, K) -> (B, M)
        if self._anchor is None:
            return gemm(x, self._steps.weight, self._steps.bias)
        return _RecurrentStep.apply(x, self._anchor, self._steps)


class _Steps:
    """What the steps' and the anchor's backward share. Nothing in it refers to the graph (the inputs are detached),
    so the graph, which refers to it, makes no reference cycle."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight, self.bias = weight, bias  # (M, K), (M,)
        self.inputs: list[torch.Tensor] = []  # x_t (B, K), in step order
        self.grads: dict[int, torch.Tensor] = {}  # step -> dL/dy_t (B, M), filled by the backward pass
        self._weight_t: torch.Tensor | None = None

    def weight_t(self) -> torch.Tensor:
        """W^T, contiguous, made once per backward pass for the steps' input gradients. (K, M)"""
        if self._weight_t is None:
            self._weight_t = self.weight.t().contiguous()
        return self._weight_t


class _RecurrentStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, anchor: torch.Tensor, steps: _Steps) -> torch.Tensor:
        ctx.steps, ctx.index = steps, len(steps.inputs)
        steps.inputs.append(x.detach())
        return gemm(x, steps.weight, steps.bias)  # (B, M)

    @staticmethod
    @once_differentiable  # the backward is hand-written: a second derivative through it would be silently wrong
    def backward(ctx, grad: torch.Tensor):
        steps = ctx.steps
        steps.grads[ctx.index] = grad  # (B, M)
        # gemm(g, W^T) = g @ W: the weight argument is (K, M), so the product is (B, K).
        grad_x = gemm(grad, steps.weight_t()) if ctx.needs_input_grad[0] else None
        return grad_x, grad.new_zeros(0), None  # an empty gradient for the anchor makes sure its node runs


class _Anchor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, steps: _Steps, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.steps, ctx.has_bias = steps, bias is not None
        return weight.new_empty(0)

    @staticmethod
    @once_differentiable  # the backward is hand-written: a second derivative through it would be silently wrong
    def backward(ctx, _grad: torch.Tensor):
        steps = ctx.steps
        # Steps that the loss does not reach (none, in a training step) have no gradient: zeros.
        rows = steps.weight.shape[0]
        grads = [
            steps.grads[i] if i in steps.grads else x.new_zeros(x.shape[0], rows) for i, x in enumerate(steps.inputs)
        ]
        steps.grads.clear()  # a second backward pass (retain_graph) fills it again
        steps._weight_t = None
        # (M, T*B), columns in the inputs' order. oneDNN wants this operand row-major; transposing each step's small
        # gradient while stacking is ~4x faster than transposing the concatenated one.
        grad_y_t = torch.stack([g.t() for g in grads], 1).view(rows, -1)
        grad_w = gemm(grad_y_t, torch.cat(steps.inputs).t()) if ctx.needs_input_grad[1] else None  # (M, K)
        grad_b = grad_y_t.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None  # (M,)
        return None, grad_w, grad_b
