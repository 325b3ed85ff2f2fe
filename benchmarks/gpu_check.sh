#!/usr/bin/env bash
# The device checks of the GPU path, in one go (for the device tool's `run`, in the repository root, on a machine
# whose python3 has torch, pytest, pandas, click and pyyaml but not mlflow or dvc): the gpu tests, then training
# throughput with the compiled step and the FLOP floor, one size at a time, each bounded in time so that a stuck
# compilation still leaves the other figures. Figures land in $OUT (default: /tmp/out). Exit: the tests' status.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.txt"
tests=${PIPESTATUS[0]}
for sizes in default seed; do
  timeout 150 python3 -m benchmarks.throughput --device cuda --compile --sizes "$sizes" --steps 50 --warmup 10 \
    --out "$OUT/throughput_cuda_$sizes.json" 2>&1 | tee "$OUT/throughput_cuda_$sizes.txt"
done
exit "$tests"
