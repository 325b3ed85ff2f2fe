"""The GPU path (`pytest -m gpu`; skipped without CUDA): the compiled, CUDA-graphed training step against the eager
one over real optimizer steps, the same under bf16 autocast, and a compiled fit on CUDA against an eager one.
benchmarks/gpu_check.sh runs these with the GPU figures."""

from __future__ import annotations

import pytest
import torch

from seq2seq.model import Seq2Seq
from seq2seq.train import fit, training_loss
from tests.helpers import tiny_model_config, tiny_train_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    # Inductor notes that TF32 is off for fp32 matmuls; fp32 is what the comparison wants.
    pytest.mark.filterwarnings("ignore:TensorFloat32 tensor cores:UserWarning"),
    # Inductor (torch 2.11) warns that it splits the attention softmax's reduction; under the suite's warnings-as-
    # errors that warning aborts the lowering. It is about speed, not results.
    pytest.mark.filterwarnings("ignore:\\s*Online softmax is disabled:UserWarning"),
    # ... and the CUDA-graph trees' warm-up captures an empty graph, which CUDA then warns about.
    pytest.mark.filterwarnings("ignore:The CUDA Graph is empty:UserWarning"),
]
CUDA = torch.device("cuda")


def _train_steps(tiny_dataset, compiled: bool, bf16: bool, steps: int = 4) -> list[tuple[float, torch.Tensor]]:
    """`steps` Adam steps over different batches: (loss, flat gradient) of each."""
    vocab, data = tiny_dataset
    torch.manual_seed(0)
    model = Seq2Seq(tiny_model_config(), len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id).to(CUDA)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_of = training_loss(model, tiny_train_config(device="cuda", compile=compiled, bf16=bf16), CUDA)
    results = []
    for step in range(steps):  # warm-up, recording, then replays of the CUDA graph, each on a new batch
        src, src_len, tgt = data["train"].batch(torch.arange(32 * step, 32 * (step + 1)), trim=not compiled)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(src.to(CUDA), src_len, tgt.to(CUDA), 1.0)
        loss.backward()
        results.append((loss.item(), torch.cat([p.grad.flatten().float() for p in model.parameters()])))
        optimizer.step()
    return results


def test_the_cuda_graphed_step_equals_the_eager_step_over_optimizer_steps(tiny_dataset):
    from torch._dynamo.utils import counters

    counters.clear()
    eager = _train_steps(tiny_dataset, compiled=False, bf16=False)
    graphed = _train_steps(tiny_dataset, compiled=True, bf16=False)
    assert counters["inductor"]["cudagraph_skips"] == 0  # a skip falls back to plain launches without a word
    for (eager_loss, eager_grad), (graphed_loss, graphed_grad) in zip(eager, graphed, strict=True):
        assert graphed_loss == pytest.approx(eager_loss, rel=1e-4)
        torch.testing.assert_close(graphed_grad, eager_grad, atol=1e-5, rtol=1e-3)


def test_the_cuda_graphed_bf16_step_stays_within_bf16_tolerance_of_eager_fp32(tiny_dataset):
    eager = _train_steps(tiny_dataset, compiled=False, bf16=False)
    graphed = _train_steps(tiny_dataset, compiled=True, bf16=True)
    for (eager_loss, eager_grad), (graphed_loss, graphed_grad) in zip(eager, graphed, strict=True):
        assert graphed_loss == pytest.approx(eager_loss, rel=0.02)
        assert torch.isfinite(graphed_grad).all()
        assert (graphed_grad - eager_grad).norm() <= 0.05 * eager_grad.norm()


def test_a_compiled_fit_on_cuda_trains_like_an_eager_one(tiny_dataset):
    vocab, data = tiny_dataset
    histories = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = Seq2Seq(tiny_model_config(), len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id).to(CUDA)
        cfg = tiny_train_config(device="cuda", bf16=False, compile=compiled, max_epochs=1)
        result = fit(model, data["train"], data["val"], cfg, CUDA, log=lambda *a: None, max_extra_len=3)
        histories.append(result.history)
    (eager,), (compiled,) = histories
    for key in ("train_loss", "val_loss", "grad_norm"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-3), key
