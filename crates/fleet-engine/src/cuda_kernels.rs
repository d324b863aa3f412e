//! The engine's own CUDA kernels (`src/kernels/*.cu`): compiled by NVRTC the first time a process
//! needs one, loaded once per device, launched on candle's stream.

use std::sync::OnceLock;

use candle_core::cuda_backend::CudaDevice;
use candle_core::cuda_backend::cudarc::driver::CudaFunction;

/// One program: the shared loads and stores first, then every kernel file.
const SOURCE: &str = concat!(
    include_str!("kernels/common.cuh"),
    include_str!("kernels/group_norm.cu"),
    include_str!("kernels/pointwise.cu")
);
const MODULE: &str = "fleet_engine_kernels";
/// Threads per block of every launch.
pub(crate) const THREADS: u32 = 256;
/// grid.y is limited to 65,535 blocks.
pub(crate) const MAX_GRID_Y: usize = 65_535;

/// The PTX, compiled once per process; an NVRTC failure is kept and reported on every use.
fn ptx() -> candle_core::Result<&'static str> {
    static PTX: OnceLock<Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE)
            .map(|ptx| ptx.to_src())
            .map_err(|e| format!("compiling fleet-engine's CUDA kernels with NVRTC: {e}"))
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(e.clone()))
}

/// Kernel `name` on `dev` (the module is loaded on first use and kept by candle's device);
/// launch it with `dev.cuda_stream().launch_builder(&function)`.
pub(crate) fn function(dev: &CudaDevice, name: &str) -> candle_core::Result<CudaFunction> {
    Ok(dev.get_or_load_custom_func(name, MODULE, ptx()?)?.into_cuda_function())
}

/// The name of kernel `stem` for `dtype`'s elements (`gn_stats` → `gn_stats_f16`).
pub(crate) fn typed_name(stem: &str, dtype: candle_core::DType) -> candle_core::Result<String> {
    let suffix = match dtype {
        candle_core::DType::F32 => "f32",
        candle_core::DType::F16 => "f16",
        candle_core::DType::BF16 => "bf16",
        other => candle_core::bail!("{stem}: no CUDA kernel for {other:?}"),
    };
    Ok(format!("{stem}_{suffix}"))
}

/// Blocks along a row of `len` elements when each thread takes about four (at most grid.y's limit).
pub(crate) fn chunks(len: usize) -> u32 {
    len.div_ceil(THREADS as usize * 4).clamp(1, MAX_GRID_Y) as u32
}
