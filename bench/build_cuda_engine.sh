#!/usr/bin/env bash
# Builds the engine bench binary and the engine's unit tests with `--features cuda` (or cudnn) on a
# machine with no CUDA toolkit and no GPU, for bench/gpu_engine_vs_diffusers.sh and
# bench/gpu_check.sh on a GPU host.
#
#   bench/build_cuda_engine.sh [cuda|cudnn]   # prints the unit tests' path, then the bench's (last line)
#
# CUDA 13.0's compiler comes from PyPI (the nvidia-* wheels, unpacked, never installed); the
# CUDA libraries the binary links against are replaced at link time by stand-ins with the same
# sonames that define every symbol the build leaves undefined. At run time the GPU host's real
# libraries load (LD_LIBRARY_PATH at e.g. PyTorch's site-packages/nvidia/cu13/lib). Settings:
# CUDA_WORK (/tmp/fleet-cuda: wheels, toolkit, stand-ins), CARGO_TARGET_DIR (target-cuda in the
# repository, git-ignored), CUDA_COMPUTE_CAP (90: Hopper). candle's kernels take ~15 min of nvcc
# on 2 cores, the whole first build ~30 min.
set -euo pipefail
feature=${1:-cuda}
case "$feature" in cuda | cudnn) ;; *) echo "usage: $0 [cuda|cudnn]" >&2; exit 2 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../scripts/cuda-toolkit.sh
source "$root/scripts/cuda-toolkit.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target-cuda}
export RUSTFLAGS="-L native=$stubs"

ln -sf "$toolkit/lib/libcudart.so.13" "$stubs/libcudart.so"

build() {
  cargo test --manifest-path "$root/Cargo.toml" -p fleet-engine --no-default-features --features "$feature" \
    --lib --bench engine --no-run 2>&1
}
# The first build stops at the link (no stand-ins yet; or stand-ins lacking a symbol new code
# calls); the stand-ins are made from what the compiled crates leave undefined, then the link runs
# again.
if ! out=$(build); then
  grep -qE 'unable to find library|undefined reference' <<<"$out" || { echo "$out" >&2; exit 1; }
  (cd "$CARGO_TARGET_DIR/debug/deps" && for f in lib*.rlib; do nm -u "$f" 2>/dev/null || true; done) |
    awk 'NF == 2 && $1 == "U" {print $2}' | sort -u >"$stubs/undefined.txt"
  stand_in() { # soname, pattern of its symbols
    local base=${1%%.so*}
    grep -E "$2" "$stubs/undefined.txt" | sed 's/.*/void &(void) {}/' >"$stubs/$base.c" || true
    gcc -shared -fPIC -o "$stubs/$1" -Wl,-soname,"$1" "$stubs/$base.c"
    ln -sf "$1" "$stubs/$base.so"
  }
  stand_in libcuda.so.1 '^cu[A-Z]'
  stand_in libnvrtc.so.13 '^nvrtc'
  stand_in libcurand.so.10 '^curand'
  stand_in libcublasLt.so.13 '^cublasLt'
  stand_in libcublas.so.13 '^cublas[^L]'
  stand_in libcudnn.so.9 '^cudnn'
  out=$(build) || { echo "$out" >&2; exit 1; }
fi
# cargo prints the paths relative to the working directory when the target is below it.
for name in fleet_engine engine; do
  echo "$CARGO_TARGET_DIR/debug/deps/$(grep -o "debug/deps/$name-[0-9a-f]*" <<<"$out" | tail -1 | sed 's|.*/||')"
done
