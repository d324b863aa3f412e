#!/usr/bin/env bash
# Compile-checks the GPU code that no CPU build compiles: the `cuda` and `cudnn` features of
# fleet-engine, fleet-worker and fleet-cli, every target, lints as errors. CUDA's compiler comes
# from PyPI (scripts/cuda-toolkit.sh); no GPU and no CUDA libraries are needed (nothing is linked).
# Not part of scripts/test.sh: the first run takes about 25 min on 2 cores (candle's kernels go
# through nvcc), too much for CI's budget; later runs take a few minutes. Run it after changing
# anything behind `#[cfg(feature = "cuda")]` (cuda_kernels.rs, cudnn_conv.rs, linear_cuda.rs,
# group_norm_cuda.rs, pointwise_cuda.rs, the kernels/ sources) or the candle version.
# Settings: CARGO_TARGET_DIR (target-cuda in the repository, git-ignored), CUDA_WORK, CUDA_COMPUTE_CAP.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=cuda-toolkit.sh
source "$root/scripts/cuda-toolkit.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target-cuda}
cd "$root"
cargo clippy --locked -p fleet-engine -p fleet-worker -p fleet-cli --all-targets \
  --features fleet-engine/cudnn,fleet-worker/cuda,fleet-cli/cudnn -- -D warnings
echo "cuda-check: the cuda and cudnn features compile, no warnings"
