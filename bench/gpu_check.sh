#!/usr/bin/env bash
# The one prepared GPU script (docs/gpu.md): versions, build, GPU tests, kernel
# benchmarks, the end-to-end throughput comparison (lomar bench), results as
# JSON/CSV/PNG under $OUT (default bench/results/latest), and a short table last.
# Runs with the python already on the machine (no network there).
# Usage: make gpu-check          (or OUT=dir bash bench/gpu_check.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results/latest}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee "$LOG") 2>&1
echo "== lomar gpu-check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "command: make gpu-check (OUT=$OUT)"

echo "== 1. versions"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
nvcc --version | tail -n 2 || true

echo "== 2. build (all cores, CUDA required)"
# Only the card's own arch unless told otherwise: the build is on the clock.
ARCH=$($PY -c "import torch; p = torch.cuda.get_device_capability(); print(f'{p[0]}.{p[1]}')")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH}
export LOMAR_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
time $PY -m pip install --no-deps --no-build-isolation -e . -q
$PY -m lomar_ops info

echo "== 3. tests on the GPU"
# The GPU is lent for minutes: failures are recorded (junit XML) and the benchmarks
# still run, so one run brings back both; after 25 failures the tests stop.
tests_status=0
$PY -m pytest tests -q -m "not slow" -p no:cacheprovider --maxfail=25 \
    --junitxml="$OUT/gpu_tests.xml" || tests_status=$?

echo "== 4. ceilings, kernel benchmarks and the ViTDet backbone (bench_vitdet.py)"
$PY bench/ceilings.py --out "$OUT"
# A failing benchmark case must not hide the others' figures: report, go on.
bench_status=0
LOMAR_BENCH_DEVICE=cuda LOMAR_BENCH_OUT="$OUT" $PY -m pytest bench -q -p no:cacheprovider \
    -o python_files='bench_*.py' --benchmark-json="$OUT/pytest_benchmark.json" || bench_status=$?

echo "== 5. end-to-end throughput: LoMaR vs MAE vs BEiT, ViT-B/16 (lomar bench)"
# Most telling resolutions first: --budget-s skips what is left when time runs out
# (recorded as skipped), so the whole gpu-check stays within its few minutes.
throughput_status=0
$PY -m lomar bench --device cuda --out "$OUT/throughput" --resolutions 224 448 1024 384 512 768 \
    --max-batch 128 --warmup 2 --iters 5 --phase-iters 1 --budget-s 180 \
    --data-workers "$(( $(nproc) > 4 ? $(nproc) - 2 : 2 ))" \
    --ceilings "$OUT/ceilings.json" || throughput_status=$?

echo "== 6. summary"
$PY bench/summarize.py "$OUT"
if [ "$tests_status" != 0 ]; then
    echo "GPU tests failed (pytest exit $tests_status): see $OUT/gpu_tests.xml and $LOG"
    exit "$tests_status"
fi
if [ "$bench_status" != 0 ]; then
    echo "some benchmark cases failed (pytest exit $bench_status): see $LOG"
    exit "$bench_status"
fi
if [ "$throughput_status" != 0 ]; then
    echo "lomar bench failed (exit $throughput_status): see $LOG"
    exit "$throughput_status"
fi
