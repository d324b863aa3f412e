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
# is written there), VARIANTS ("default": space-separated LABEL or LABEL:VAR=VALUE[,VAR=VALUE],
# each binary runs once per variant with those environment variables, e.g.
# "candle:FLEET_ENGINE_KERNELS=candle ours"), MODEL (an existing model directory: skips `make`),
# DIFFUSERS (1; 0 skips diffusers' timings, for more engine variants on a model made earlier).
# Prints, per steps × batch: diffusers' JSON line (seconds per image by stage, peak allocation)
# and the engine's line, each followed by the GPU memory nvidia-smi saw at most while it ran
# (whole device, so it includes each framework's caching allocator). Each variant's 1-step,
# batch-1 image is saved as WORK/images/LABEL-N.png, and at the end every variant's image is
# compared with the first's (PSNR over the 8-bit pixels).
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

model=${MODEL:-}
if [ -z "$model" ]; then
  SECONDS=0
  python3 "$here/diffusers_side.py" make "$work" --only sdxl --device cuda --dtype fp16
  echo "model made in $SECONDS s"
  model="$work/sdxl"
fi
read -ra variants <<<"${VARIANTS:-default}"

IFS=, read -ra steps <<<"$STEPS"
IFS=, read -ra batches <<<"$BATCH"
if [ "${DIFFUSERS:-1}" != 0 ]; then
echo "== diffusers"
with_gpu_peak python3 "$here/diffusers_side.py" time "$model" --device cuda --dtype fp16 \
  --size "$SIZE" --steps "$STEPS" --batch "$BATCH" --runs "$RUNS"
fi
mkdir -p "$work/images"
n=$(find "$work/images" -name '*.png' | wc -l)
for exe in "$@"; do
  for variant in "${variants[@]}"; do
    label=${variant%%:*} settings=()
    [ "$variant" != "$label" ] && IFS=, read -ra settings <<<"${variant#*:}"
    n=$((n + 1))
    echo "== fleet-engine: $exe, variant $label ${settings[*]}"
    for b in "${batches[@]}"; do
      for s in "${steps[@]}"; do
        save=()
        [ "$s" = 1 ] && [ "$b" = 1 ] && save=(--save "$work/images/$n-$label.png")
        with_gpu_peak env "${settings[@]}" "$exe" --bench --device cuda --model "$model" --size "$SIZE" \
          --steps "$s" --batch "$b" --runs "$RUNS" "${save[@]}" || echo "  (failed: rc $?)"
      done
    done
  done
done
python3 - "$work/images" <<'PY'
# PSNR of each saved image against the first variant's (same model, prompt, seed and size).
import math, sys
from pathlib import Path
import numpy as np
from PIL import Image
files = sorted(Path(sys.argv[1]).glob("*.png"), key=lambda p: int(p.name.split("-")[0]))
if files:
    ref = np.asarray(Image.open(files[0]).convert("RGB"), dtype=np.float64)
    for f in files:
        img = np.asarray(Image.open(f).convert("RGB"), dtype=np.float64)
        mse = float(((img - ref) ** 2).mean())
        psnr = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
        print(f"image {f.name}: PSNR {psnr:.1f} dB against {files[0].name}, mean |diff| {np.abs(img - ref).mean():.2f}/255")
PY
