# Sourced, not run: puts CUDA 13.0's compiler (nvcc and its headers, from the nvidia-* wheels on
# PyPI, unpacked, never installed) on PATH for builds on a machine with no CUDA toolkit and no GPU.
# Settings: CUDA_WORK (/tmp/fleet-cuda: wheels, toolkit, stand-ins), CUDA_COMPUTE_CAP (90: Hopper).
# Sets: work, toolkit, stubs, CUDA_ROOT, CUDA_COMPUTE_CAP, PATH.
work=${CUDA_WORK:-/tmp/fleet-cuda}
toolkit="$work/toolkit/nvidia/cu13"
stubs="$work/stubs"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDA_ROOT="$toolkit" PATH="$toolkit/bin:$PATH"
mkdir -p "$work/wheels" "$work/toolkit" "$stubs"
if [ ! -x "$toolkit/bin/nvcc" ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$work/wheels" "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-runtime==13.0.*" \
    "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*"
  for w in "$work"/wheels/*.whl; do python3 -m zipfile -e "$w" "$work/toolkit"; done
  chmod +x "$toolkit"/bin/* "$toolkit"/nvvm/bin/*
fi
