#!/usr/bin/env bash
# The device checks of the GPU path, in one go (for the device tool's `run`, in the repository root, on a machine
# whose python3 has torch, pytest, pandas, click and pyyaml but not mlflow or dvc): the gpu tests, then training
# throughput with the compiled step and the FLOP floor, one size at a time, each bounded in time so that a stuck
# compilation still leaves the other figures. Figures land in $OUT (default: /tmp/out). Exit: the tests' status,
# and 1 without anything run when torch sees no CUDA device: the gpu tests skip themselves there, and a run of
# nothing but skips would otherwise pass (a CPU-only torch wheel, a broken driver).
# The throughput JSON records its commit (benchmarks/provenance.py): where the tree is a copy whose .git is not its
# own (the device tool's), name it: BENCH_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
if ! python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  cuda=$(python3 -c 'import torch; print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}")' 2>&1)
  echo "gpu_check: FAILED: torch sees no CUDA device ($cuda); nothing was run" | tee "$OUT/gpu_tests.txt" >&2
  exit 1
fi
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.txt"
tests=${PIPESTATUS[0]}
if [ "$tests" -eq 0 ] && grep -qE '[0-9]+ skipped' "$OUT/gpu_tests.txt"; then
  echo "gpu_check: FAILED: gpu tests were skipped (reasons above); a skipped check is not a passed one" >&2
  tests=1
fi
for sizes in default seed; do
  timeout 150 python3 -m benchmarks.throughput --device cuda --compile --sizes "$sizes" --steps 50 --warmup 10 \
    --out "$OUT/throughput_cuda_$sizes.json" 2>&1 | tee "$OUT/throughput_cuda_$sizes.txt"
done
exit "$tests"
