#!/usr/bin/env bash
# One call on a GPU host: the engine's CUDA kernel tests, then engine vs diffusers with the
# engine's own CUDA kernels (fused GroupNorm, cuBLASLt bias epilogue, cuDNN convolutions) against
# candle's, then optionally a kernel profile.
#
#   bench/gpu_check.sh TESTS BENCH      # both from `bench/build_cuda_engine.sh cudnn`
#
# Needs python3 with CUDA torch (its nvidia/*/lib folders hold the CUDA, cuBLAS, cuDNN and NVRTC
# libraries the binaries load), diffusers 0.42.1 and transformers. Settings (environment):
#   VARIANTS  engine variants run beside diffusers at 1 and 4 steps, batch 1 and 4 (syntax of
#             bench/gpu_engine_vs_diffusers.sh; default: ours, and candle's kernels)
#   SINGLE    variants run once more at SINGLE_STEPS (4) steps, batch 1, without diffusers
#             (default: cuDNN's measured algorithm choice, then each CUDA kernel alone); "" skips
#   PROFILE   1: Nsight Compute's per-kernel time summary of a 1-step, batch-1 run with our
#             kernels, into $OUT/ncu.txt (or WORK), its largest kernels printed
# SIZE, RUNS, WORK: as bench/gpu_engine_vs_diffusers.sh.
set -uo pipefail
[ $# -eq 2 ] || { echo "usage: $0 TESTS BENCH" >&2; exit 2; }
tests=$1 bench=$2
here=$(cd "$(dirname "$0")" && pwd)
site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for lib in "$site"/nvidia/*/lib; do LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"; done
export LD_LIBRARY_PATH
export WORK=${WORK:-/tmp/fleet-gpu-bench}

echo "== CUDA kernel tests (cuDNN heuristic, then measured algorithm choice)"
"$tests" --test-threads 1 cuda_kernel matches_the_cpu_convolution matches_candles_linear || echo "  (tests failed: rc $?)"
FLEET_ENGINE_CUDNN_ALGO=search "$tests" --test-threads 1 matches_the_cpu_convolution || echo "  (tests failed: rc $?)"

echo "== engine vs diffusers"
rm -rf "$WORK/images"
STEPS=1,4 BATCH=1,4 VARIANTS=${VARIANTS:-"ours candle:FLEET_ENGINE_KERNELS=candle"} \
  "$here/gpu_engine_vs_diffusers.sh" "$bench"
single=${SINGLE-"search:FLEET_ENGINE_CUDNN_ALGO=search conv:FLEET_ENGINE_KERNELS=conv \
norm:FLEET_ENGINE_KERNELS=norm linear:FLEET_ENGINE_KERNELS=linear"}
if [ -n "$single" ]; then
  echo "== more variants, ${SINGLE_STEPS:-4} steps, batch 1"
  MODEL="$WORK/sdxl" DIFFUSERS=0 STEPS=${SINGLE_STEPS:-4} BATCH=1 VARIANTS="$single" \
    "$here/gpu_engine_vs_diffusers.sh" "$bench"
fi

if [ "${PROFILE:-0}" = 1 ]; then
  echo "== kernel profile (ncu), 1 step, batch 1, our kernels"
  report="${OUT:-$WORK}/ncu.txt"
  timeout 150 ncu --metrics gpu__time_duration.sum --print-summary per-kernel \
    "$bench" --bench --only "$WORK/sdxl" --size "${SIZE:-1024}" --steps 1 --batch 1 --runs 1 --device cuda \
    >"$report" 2>&1 || echo "  (ncu: rc $?)"
  python3 "$here/ncu_summary.py" "$report" | head -25
fi
