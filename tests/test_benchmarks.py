"""The benchmarks' accounting, checked against a real training step of the project's model under torch.profiler
(tiny sizes, a fraction of a second): the GEMM floor's products and the FLOP count are the products the step runs,
shape for shape, and the step profile files every matrix-product kernel under "gemm"."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.gemm_floor import step_gemms
from benchmarks.throughput import BOS, EOS, PAD, _step, train_step_flops
from seq2seq.model import ModelConfig, Seq2Seq
from seq2seq.train import adam

# All sizes distinct (E != H, V != 2H, B != S ...), so that one confused with another changes the counts.
SIZES = {"vocab": 23, "emb_dim": 8, "hidden_dim": 12, "num_layers": 2, "dropout": 0.5, "batch": 3, "len": 5}


def _fused_lstm_flops(shapes: list[list[int]]) -> int:
    """oneDNN's fused LSTM layer, from its recorded inputs x (S, B, d), W_ih (4H, d), W_hh (4H, H): the input
    projection over all steps and the recurrent product per step. Its GEMMs are inside the one operator."""
    (steps, batch, d), (gates, _), (_, hidden) = shapes[:3]
    return 2 * steps * batch * (d + hidden) * gates


# FLOPs of one call of each kernel that runs a matrix product, from the shapes torch.profiler records.
KERNEL_FLOPS = {
    "mkldnn::_linear_pointwise": lambda s: 2 * math.prod(s[0]) * s[1][0],  # x (..., K) @ W (M, K)^T
    "aten::mm": lambda s: 2 * s[0][0] * s[0][1] * s[1][1],  # (N, K) @ (K, M)
    "aten::addmm": lambda s: 2 * s[1][0] * s[1][1] * s[2][1],  # bias + (N, K) @ (K, M)
    "aten::bmm": lambda s: 2 * s[0][0] * s[0][1] * s[0][2] * s[1][2],  # (b, N, K) @ (b, K, M)
    "aten::mkldnn_rnn_layer": _fused_lstm_flops,
    "aten::mkldnn_rnn_layer_backward": lambda s: 2 * _fused_lstm_flops(s),  # grads of the input, state, 2 weights
}
# Composite operators: they only dispatch to the kernels above, whose calls are recorded (and counted) themselves.
COMPOSITES = {"aten::linear", "aten::matmul"}


def _looks_like_a_product(name: str) -> bool:
    """An operator named as a matrix product (mm, bmm, addmm, baddbmm, mv, dot, matmul, gemm, a linear), whether
    or not the benchmarks know it: a kernel that a new torch or a model change brings in shows here."""
    namespace, _, op = name.partition("::")
    return namespace in ("aten", "mkldnn") and bool(re.search(r"mm|linear|matmul|gemm|(^|_)(mv|dot)($|_)", op))


def _step_flops(sizes: dict) -> dict[str, int]:
    """One training step (forward, loss, backward, clip, Adam), as the benchmarks run it, under torch.profiler
    with shapes recorded: the FLOPs of the products it ran, per kernel name."""
    torch.manual_seed(0)
    cfg = ModelConfig(sizes["emb_dim"], sizes["hidden_dim"], sizes["num_layers"], sizes["dropout"])
    model = Seq2Seq(cfg, sizes["vocab"], PAD, BOS, EOS).train()
    optimizer = adam(model.parameters(), 1e-3)
    batch, length = sizes["batch"], sizes["len"]
    src = torch.randint(4, sizes["vocab"], (batch, length))
    tgt = torch.cat([torch.full((batch, 1), BOS), torch.randint(4, sizes["vocab"], (batch, length))], 1)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        _step(lambda: model(src, torch.full((batch,), length), tgt[:, :-1]), list(model.parameters()), optimizer, tgt)
    flops: dict[str, int] = {}
    for event in prof.events():
        if event.name in KERNEL_FLOPS:
            flops[event.name] = flops.get(event.name, 0) + KERNEL_FLOPS[event.name](event.input_shapes)
        else:  # a product under a kernel name this test does not count would make the totals below meaningless
            assert not _looks_like_a_product(event.name) or event.name in COMPOSITES, event.name
    return flops


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_the_gemm_floor_and_the_flop_count_are_the_products_of_a_real_step(num_layers):
    sizes = {**SIZES, "num_layers": num_layers}
    recorded = _step_flops(sizes)
    assert {"mkldnn::_linear_pointwise", "aten::mkldnn_rnn_layer", "aten::mm", "aten::bmm"} <= recorded.keys()
    # The GEMM floor times the GEMMs: the oneDNN linears and the encoder's fused LSTM. The attention's products
    # with one vector per batch row (v^T tanh(.) as mm, the context as bmm) are left to the rest of the step.
    floor_flops = sum(count * 2 * n * k * m for count, n, k, m in step_gemms(sizes))
    gemm_kernels = ("mkldnn::_linear_pointwise", "aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward")
    assert floor_flops == sum(recorded[name] for name in gemm_kernels)
    # The FLOP count behind throughput's TFLOP/s figures counts every product of the step, those included.
    assert train_step_flops(sizes) == sum(recorded.values())


def test_the_step_profile_files_every_product_kernel_of_a_real_step_under_gemm():
    from benchmarks.step_profile import categorise, measure

    result = measure(SIZES, steps=1, warmup=1)
    names = set(result["per_op_s"])
    assert "aten::bernoulli_" in names  # dropout 0.5 draws its masks: the profile holds the step's own operators
    products = {name for name in names if _looks_like_a_product(name) and name not in COMPOSITES}
    assert {"aten::mm", "aten::bmm", "mkldnn::_linear_pointwise"} <= products  # the check below has work to do
    assert {name: categorise(name) for name in products} == dict.fromkeys(products, "gemm")
    fused = {name for name in names if name.startswith(("aten::", "mkldnn::")) and "rnn" in name}
    assert fused == {"aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward"}
    assert {name: categorise(name) for name in fused} == dict.fromkeys(fused, "rnn")
    per_step = result["per_step_s"]
    assert per_step["gemm"] > 0 and per_step["rnn"] > 0 and per_step["other"] > 0


def test_the_suite_profile_logs_every_python_process_by_what_it_was(tmp_path):
    """benchmarks.suite_profile's sitecustomize, in real processes: one that exits normally, one that leaves by
    os._exit (as the keeper does), one run as `python -c CODE` (named by its code), one spinning for its CPU time."""
    import os
    import subprocess
    import sys

    from benchmarks.suite_profile import SITECUSTOMIZE, kind, summarise

    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "log"
    log.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "SUITE_PROFILE_LOG": str(log)}
    spin = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    for code in ("pass", "import os; os._exit(0)", "from seq2seq.tracking.keeper import serve", spin):
        subprocess.run([sys.executable, "-c", code], env=env, check=False, cwd=tmp_path)
    rows = {row["process"]: row for row in summarise(log)}
    assert rows["other"]["runs"] == 3 and rows["keeper (MLflow logging)"]["runs"] == 1, rows
    assert rows["other"]["cpu_s"] >= 0.3  # the spinning one's CPU, counted
    assert kind("/v/bin/python -m stages.train --params p") == "stage train"
    assert kind("/v/bin/python /v/bin/dvc exp run -S train.lr=0.1") == "dvc exp run"
    assert kind("/v/bin/python -u -c import sys;exec(eval(sys.stdin.readline()))") == "pytest (in-process tests)"
