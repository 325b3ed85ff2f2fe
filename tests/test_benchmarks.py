"""The benchmarks' FLOP accounting: the GEMM floor times every matrix product of the step that the FLOP count
(throughput's floor and TFLOP/s figures) counts, and nothing else."""

from __future__ import annotations

import pytest

from benchmarks.gemm_floor import step_gemms
from benchmarks.throughput import seed_sizes, train_step_flops


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_the_gemm_floor_times_the_products_the_flop_count_counts(num_layers):
    sizes = {**seed_sizes(), "num_layers": num_layers, "emb_dim": 96}  # E != H: E and H confused would show
    gemms = sum(count * 2 * n * k * m for count, n, k, m in step_gemms(sizes))
    B, S, H = sizes["batch"], sizes["len"], sizes["hidden_dim"]
    attention_vectors = 3 * S * (2 * B * S * H + 2 * B * S * H)  # v^T tanh(.) and the context: not GEMMs
    assert gemms == train_step_flops(sizes) - attention_vectors


def test_the_step_profile_splits_a_real_step_into_products_and_the_rest():
    from benchmarks.step_profile import categorise, measure

    sizes = {"vocab": 20, "emb_dim": 8, "hidden_dim": 16, "num_layers": 2, "dropout": 0.5, "batch": 4, "len": 5}
    result = measure(sizes, steps=1, warmup=1)
    per_step = result["per_step_s"]
    assert per_step["gemm"] > 0 and per_step["other"] > 0  # the decoder's products; its elementwise work
    assert "aten::bernoulli_" in result["per_op_s"]  # dropout 0.5 draws its masks
    assert not any(categorise(name) == "gemm" for name in result["top_other"])
    assert sum(per_step.values()) == pytest.approx(sum(result["per_op_s"].values()))  # every op counted once
    assert categorise("mkldnn::_linear_pointwise") == "gemm" and categorise("aten::mkldnn_rnn_layer") == "rnn"
