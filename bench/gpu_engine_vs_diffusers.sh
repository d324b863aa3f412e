#!/usr/bin/env bash
# fleet-engine vs diffusers/PyTorch on one NVIDIA GPU: the full SDXL base architecture (random
# weights in the diffusers layout, f16, the fp16-fix VAE configuration), same size, steps, batch.
#
#   bench/gpu_engine_vs_diffusers.sh ENGINE_BENCH [ENGINE_BENCH...]
#
# Each ENGINE_BENCH is the `engine` bench binary of a `--features cuda` (or `cudnn`) build, e.g.
#   cargo test -p fleet-engine --no-default-features --features cudnn --bench engine --no-run
# (several: an A/B of builds in the same run).
# python3 must have a CUDA torch, diffusers 0.42.1 and transformers. Settings (environment):
# SIZE (1024), STEPS (1,4), BATCH (1,4), RUNS (3), WORK (/tmp/fleet-gpu-bench: the model, 7 GB,
# is written there). Prints, per steps × batch: diffusers' JSON line (seconds per image by
# stage, peak allocation) and the engine's line, each followed by the GPU memory nvidia-smi saw
# at most while it ran (whole device, so it includes each framework's caching allocator).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 ENGINE_BENCH [ENGINE_BENCH...]" >&2; exit 2; }
work=${WORK:-/tmp/fleet-gpu-bench}
SIZE=${SIZE:-1024} STEPS=${STEPS:-1,4} BATCH=${BATCH:-1,4} RUNS=${RUNS:-3}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work"

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
echo "torch $(python3 -c 'import torch, diffusers; print(torch.__version__, "cuda", torch.version.cuda, "diffusers", diffusers.__version__)')"

# Runs a command while sampling the device's used memory every 200 ms; prints the maximum.
with_gpu_peak() {
  local log="$work/smi.$$" pid
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$log" &
  pid=$!
  "$@"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "  nvidia-smi peak while it ran: $(sort -n "$log" | tail -1) MiB"
}

SECONDS=0
python3 "$here/diffusers_side.py" make "$work" --only sdxl --device cuda --dtype fp16
echo "model made in $SECONDS s"

IFS=, read -ra steps <<<"$STEPS"
IFS=, read -ra batches <<<"$BATCH"
echo "== diffusers"
with_gpu_peak python3 "$here/diffusers_side.py" time "$work/sdxl" --device cuda --dtype fp16 \
  --size "$SIZE" --steps "$STEPS" --batch "$BATCH" --runs "$RUNS"
for exe in "$@"; do
  echo "== fleet-engine: $exe"
  for b in "${batches[@]}"; do
    for s in "${steps[@]}"; do
      with_gpu_peak "$exe" --bench --device cuda --model "$work/sdxl" --size "$SIZE" --steps "$s" \
        --batch "$b" --runs "$RUNS"
    done
  done
done
