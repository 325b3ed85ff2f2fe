#!/usr/bin/env bash
# The device checks of the GPU path, in one go (for the device tool's `run`, in the repository root, on a machine
# whose python3 has torch, pytest, pandas, click and pyyaml but not mlflow or dvc): the gpu tests, then training
# throughput with the compiled step and the FLOP floor at both sizes. Figures land in $OUT (default: /tmp/out).
set -euo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.txt"
python3 -m benchmarks.throughput --device cuda --compile --steps 50 --warmup 10 \
  --out "$OUT/throughput_cuda.json" 2>&1 | tee "$OUT/throughput_cuda.txt"
