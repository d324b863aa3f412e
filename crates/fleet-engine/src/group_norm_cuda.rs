//! GroupNorm (+ SiLU) on CUDA in three launches: the kernels of `kernels/group_norm.cu` (see
//! [`crate::cuda_kernels`]).
//!
//! candle 0.11's `GroupNorm` on a GPU is a dozen element-wise kernels in f32 (casts, sums,
//! broadcast subtract, square, divide, multiply, add) plus SiLU as another: 13 % of the kernel time
//! of the UNet's tail and the VAE on an H100 (docs/PERFORMANCE.md). These read the
//! activations twice (statistics, then the normalisation) and write them once.

// Kernel launches and uninitialised device buffers: each unsafe block says why it holds.
#![allow(unsafe_code)]

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaDType;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::{CudaStorage, DType, Shape, WithDType};

use crate::cuda_kernels::{MAX_GRID_Y, THREADS, chunks, function, typed_name};
use crate::util::CudaOperand;

/// Elements one block of the statistics kernel sums: enough blocks to fill a GPU at full image
/// resolution (the VAE's 128-channel 1024² layer: 256 chunks × 32 groups), one at small sizes.
const STATS_CHUNK: usize = 16 * 1024;

/// What the kernels need to know about one call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub groups: usize,
    pub eps: f64,
    pub silu: bool,
}

/// x [B, C, …] contiguous, weight and bias [C], all of one dtype (f16, bf16 or f32).
pub(crate) fn forward(
    params: Params,
    x: CudaOperand,
    w: CudaOperand,
    b: CudaOperand,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dtype = x.0.dtype();
    if w.0.dtype() != dtype || b.0.dtype() != dtype {
        candle_core::bail!("group norm on CUDA: input {dtype:?}, weight {:?}, bias {:?}", w.0.dtype(), b.0.dtype());
    }
    match dtype {
        DType::F32 => typed::<f32>(params, x, w, b),
        DType::F16 => typed::<half::f16>(params, x, w, b),
        DType::BF16 => typed::<half::bf16>(params, x, w, b),
        other => candle_core::bail!("group norm on CUDA: no kernel for {other:?}"),
    }
}

fn typed<T: CudaDType + DeviceRepr + WithDType>(
    params: Params,
    (x, x_layout): CudaOperand,
    (w, w_layout): CudaOperand,
    (b, b_layout): CudaOperand,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dims = x_layout.dims();
    if dims.len() < 3 {
        candle_core::bail!("group norm on CUDA: input of shape {dims:?}, expected [B, C, …]");
    }
    let (batch, channels) = (dims[0], dims[1]);
    let spatial: usize = dims[2..].iter().product();
    let groups = params.groups;
    let (w_len, b_len) = (w_layout.shape().elem_count(), b_layout.shape().elem_count());
    if groups == 0 || !channels.is_multiple_of(groups) || w_len != channels || b_len != channels {
        candle_core::bail!(
            "group norm on CUDA: {channels} channels, {groups} groups, weight {:?}, bias {:?}",
            w_layout.dims(),
            b_layout.dims()
        );
    }
    let x_view = crate::util::cuda_contiguous::<T>(x, x_layout, "group norm input")?;
    let w_view = crate::util::cuda_contiguous::<T>(w, w_layout, "group norm weight")?;
    let b_view = crate::util::cuda_contiguous::<T>(b, b_layout, "group norm bias")?;
    let dev = &x.device;
    let stream = dev.cuda_stream();
    let total = batch * channels * spatial;
    // SAFETY: every element is written by the apply kernel below before anyone reads it.
    let mut y = unsafe { stream.alloc::<T>(total) }.w()?;
    if total == 0 {
        return Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), x_layout.shape().clone()));
    }
    let per_group = channels / groups;
    let group_len = per_group * spatial;
    let all_groups = batch * groups;
    if all_groups > MAX_GRID_Y {
        candle_core::bail!("group norm on CUDA: {all_groups} (image, group) pairs, at most {MAX_GRID_Y}");
    }
    let splits = group_len.div_ceil(STATS_CHUNK).clamp(1, 1024);
    let chunk = group_len.div_ceil(splits);
    let mut partial = unsafe { stream.alloc::<f32>(all_groups * splits * 3) }.w()?;
    let mut stats = unsafe { stream.alloc::<f32>(all_groups * 2) }.w()?;

    let func = function(dev, &typed_name("gn_stats", T::DTYPE)?)?;
    let (group_len_arg, chunk_arg) = (group_len as i64, chunk as i64);
    let mut launch = stream.launch_builder(&func);
    launch.arg(&x_view).arg(&mut partial).arg(&group_len_arg).arg(&chunk_arg);
    let cfg = LaunchConfig {
        grid_dim: (splits as u32, all_groups as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match the kernel's signature; the grid covers every (group, split).
    unsafe { launch.launch(cfg) }.w()?;

    let func = function(dev, "gn_finalize")?;
    let (groups_arg, splits_arg, eps_arg) = (all_groups as i32, splits as i32, params.eps as f32);
    let mut launch = stream.launch_builder(&func);
    launch.arg(&partial).arg(&mut stats).arg(&groups_arg).arg(&splits_arg).arg(&group_len_arg).arg(&eps_arg);
    let cfg = LaunchConfig::for_num_elems(all_groups as u32);
    // SAFETY: as above; one thread per (image, group).
    unsafe { launch.launch(cfg) }.w()?;

    let func = function(dev, &typed_name("gn_apply", T::DTYPE)?)?;
    let planes = batch * channels;
    let (spatial_arg, channels_arg, per_group_arg, silu_arg) = (
        i32::try_from(spatial).map_err(candle_core::Error::wrap)?,
        channels as i32,
        per_group as i32,
        i32::from(params.silu),
    );
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(&x_view)
        .arg(&w_view)
        .arg(&b_view)
        .arg(&stats)
        .arg(&mut y)
        .arg(&spatial_arg)
        .arg(&channels_arg)
        .arg(&per_group_arg)
        .arg(&silu_arg);
    let cfg =
        LaunchConfig { grid_dim: (planes as u32, chunks(spatial), 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: as above; the grid's rows are the (image, channel) planes, each thread strides its plane.
    unsafe { launch.launch(cfg) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), x_layout.shape().clone()))
}
