"""The GPU path (`pytest -m gpu`; skipped without CUDA): the compiled, CUDA-graphed training step under bf16 autocast
against the eager one, and a compiled fit on CUDA. benchmarks/gpu_check.sh runs these with the GPU figures."""

from __future__ import annotations

import pytest
import torch

from seq2seq.model import Seq2Seq
from seq2seq.train import fit, training_loss
from tests.conftest import tiny_model_config, tiny_train_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


def test_the_cuda_graphed_bf16_step_stays_within_bf16_tolerance_of_eager_fp32(tiny_dataset):
    _, data = tiny_dataset
    src, src_len, tgt = data["train"].batch(torch.arange(32), trim=False)
    src, tgt = src.to(CUDA), tgt.to(CUDA)
    results = []
    for compiled, bf16 in ((False, False), (True, True)):
        torch.manual_seed(0)
        model = Seq2Seq(tiny_model_config(), len(tiny_dataset[0]), 0, 1, 2).to(CUDA)
        loss_of = training_loss(model, tiny_train_config(device="cuda", compile=compiled, bf16=bf16), CUDA)
        for _ in range(3):  # warm-up, recording, then replays of the CUDA graph
            model.zero_grad()
            loss = loss_of(src, src_len, tgt, 1.0)
            loss.backward()
        grad = torch.cat([p.grad.flatten().float() for p in model.parameters()])
        results.append((loss.detach().float().item(), grad))
    (fp32_loss, fp32_grad), (graphed_loss, graphed_grad) = results
    assert graphed_loss == pytest.approx(fp32_loss, rel=0.01)
    assert torch.isfinite(graphed_grad).all()
    assert (graphed_grad - fp32_grad).norm() <= 0.02 * fp32_grad.norm()


def test_a_compiled_fit_on_cuda_learns(tiny_dataset):
    vocab, data = tiny_dataset
    torch.manual_seed(0)
    model = Seq2Seq(tiny_model_config(), len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id).to(CUDA)
    cfg = tiny_train_config(device="cuda", bf16=True, compile=True, max_epochs=3, tf_end=0.5)
    history = fit(model, data["train"], data["val"], cfg, CUDA, log=lambda *a: None).history
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in history)
    assert history[-1]["val_loss"] < history[0]["val_loss"]
