//! Launchers of the element-wise CUDA kernels in `kernels/pointwise.cu`: GEGLU in one pass, and a
//! convolution's bias added in place.

// Kernel launches and an uninitialised output buffer: each unsafe block says why it holds.
#![allow(unsafe_code)]

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Shape, WithDType};

use crate::cuda_kernels::{THREADS, chunks, function, typed_name};
use crate::util::cuda_contiguous;

/// `h · gelu(gate)` of x [.., 2·inner] split as (h, gate) along the last dimension.
pub(crate) fn geglu(x: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
    match x.dtype() {
        DType::F32 => geglu_typed::<f32>(x, layout),
        DType::F16 => geglu_typed::<half::f16>(x, layout),
        DType::BF16 => geglu_typed::<half::bf16>(x, layout),
        other => candle_core::bail!("geglu on CUDA: no kernel for {other:?}"),
    }
}

fn geglu_typed<T: CudaDType + DeviceRepr + WithDType>(
    x: &CudaStorage,
    layout: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let mut dims = layout.dims().to_vec();
    let Some(last) = dims.last_mut() else { candle_core::bail!("geglu: scalar input") };
    if *last % 2 != 0 {
        candle_core::bail!("geglu: last dimension {last} is odd");
    }
    let inner = *last / 2;
    *last = inner;
    let rows = layout.shape().elem_count() / (2 * inner).max(1);
    let input = cuda_contiguous::<T>(x, layout, "geglu input")?;
    let dev = &x.device;
    let stream = dev.cuda_stream();
    // SAFETY: the kernel writes every element before anyone reads it.
    let mut y = unsafe { stream.alloc::<T>(rows * inner) }.w()?;
    if rows > 0 && inner > 0 {
        let func = function(dev, &typed_name("geglu", T::DTYPE)?)?;
        let inner_arg = i32::try_from(inner).map_err(candle_core::Error::wrap)?;
        let rows = u32::try_from(rows).map_err(candle_core::Error::wrap)?;
        let mut launch = stream.launch_builder(&func);
        launch.arg(&input).arg(&mut y).arg(&inner_arg);
        let cfg = LaunchConfig { grid_dim: (rows, chunks(inner), 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the arguments match `geglu_*(const T* x, T* y, int inner)`; one block row per row.
        unsafe { launch.launch(cfg) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), Shape::from(dims)))
}

/// y [n, channels, spatial…] += bias [channels], in place; y and bias contiguous of type T.
pub(crate) fn add_channel_bias<T: DeviceRepr + WithDType>(
    dev: &CudaDevice,
    y: &mut CudaSlice<T>,
    bias: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, T>,
    (planes, channels, spatial): (usize, usize, usize),
) -> candle_core::Result<()> {
    if planes == 0 || spatial == 0 {
        return Ok(());
    }
    let func = function(dev, &typed_name("channel_bias", T::DTYPE)?)?;
    let spatial_arg = i32::try_from(spatial).map_err(candle_core::Error::wrap)?;
    let channels_arg = i32::try_from(channels).map_err(candle_core::Error::wrap)?;
    let planes = u32::try_from(planes).map_err(candle_core::Error::wrap)?;
    let stream = dev.cuda_stream();
    let mut launch = stream.launch_builder(&func);
    launch.arg(y).arg(bias).arg(&spatial_arg).arg(&channels_arg);
    let cfg = LaunchConfig { grid_dim: (planes, chunks(spatial), 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the arguments match `channel_bias_*(T* y, const T* bias, int spatial, int channels)`;
    // one block row per (image, channel) plane of y.
    unsafe { launch.launch(cfg) }.w()?;
    Ok(())
}
