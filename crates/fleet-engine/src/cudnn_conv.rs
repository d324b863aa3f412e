//! 2-D convolutions on CUDA through cuDNN, set up the way PyTorch sets them up (`cudnn` feature).
//!
//! candle's own CUDA convolution writes the whole patch matrix before a cuBLAS product (im2col:
//! 2.4 GB for one 128-channel layer at 1024²): 47 % of the kernel time of the UNet's tail and the
//! VAE on an H100 (docs/PERFORMANCE.md). candle's cuDNN path avoids the patch matrix, but
//! it asks for half-precision accumulation, creates its descriptors and allocates and zeroes a
//! workspace on every call, and adds the bias with a separate broadcast kernel; it made the
//! batch-1 UNet 50 % slower. Here, as PyTorch does for f16/bf16 convolutions: f32
//! accumulation with tensor-core math, descriptors and algorithm made once per shape, one
//! workspace kept and grown, and the bias added in place (by the engine's own kernel, or
//! `cudnnAddTensor` when that is switched off).
//!
//! The algorithm: cuDNN's heuristic by default (the same choice on every run, so a seed gives the
//! same image in every worker), or the fastest measured one with
//! `FLEET_ENGINE_CUDNN_ALGO=search` (`cudnnFindConvolutionForwardAlgorithm`, PyTorch's
//! `cudnn.benchmark`: a few seconds of searching the first time each shape is seen; two runs can
//! pick different algorithms and differ in the last bits).
//!
//! One file for one thing, a cuDNN convolution op: its handle, descriptors and per-shape plans
//! are one FFI unit owned together (RAII); most of the length is the FFI calls' arguments.

// cuDNN FFI and uninitialised device buffers: each unsafe block says why it holds.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::c_void;
use std::rc::Rc;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::sys;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, DeviceId, WrapErr};
use candle_core::{CpuStorage, CudaStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use crate::util::{CudaOperand, cuda_contiguous as contiguous};

/// Largest workspace the algorithm search may pick (bytes): FFT algorithms can ask for gigabytes.
const SEARCH_WORKSPACE_LIMIT: usize = 1 << 30;

/// Whether cuDNN takes this convolution: CUDA, a dtype it has tensor-core kernels for, no
/// dilation or groups (the engine's convolutions have neither).
pub(crate) fn takes(x: &Tensor, conv: &candle_nn::Conv2d) -> bool {
    let cfg = conv.config();
    x.device().is_cuda()
        && matches!(x.dtype(), DType::F16 | DType::BF16 | DType::F32)
        && conv.weight().dtype() == x.dtype()
        && cfg.dilation == 1
        && cfg.groups == 1
        && crate::util::own_cuda_kernel("conv")
}

/// `conv` applied to `x` [B, C, H, W] through cuDNN.
pub(crate) fn forward(x: &Tensor, conv: &candle_nn::Conv2d) -> candle_core::Result<Tensor> {
    let cfg = conv.config();
    let op = CudnnConv { padding: cfg.padding, stride: cfg.stride };
    let x = x.contiguous()?;
    match conv.bias() {
        Some(bias) => x.apply_op3_no_bwd(conv.weight(), bias, &op),
        None => x.apply_op2_no_bwd(conv.weight(), &op),
    }
}

struct CudnnConv {
    padding: usize,
    stride: usize,
}

impl CustomOp2 for CudnnConv {
    fn name(&self) -> &'static str {
        "cudnn-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("cudnn-conv2d runs on CUDA devices only")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_layout: &Layout,
        w: &CudaStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.run((x, x_layout), (w, w_layout), None)
    }
}

impl CustomOp3 for CudnnConv {
    fn name(&self) -> &'static str {
        "cudnn-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("cudnn-conv2d runs on CUDA devices only")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_layout: &Layout,
        w: &CudaStorage,
        w_layout: &Layout,
        b: &CudaStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.run((x, x_layout), (w, w_layout), Some((b, b_layout)))
    }
}

impl CudnnConv {
    fn run(
        &self,
        x: CudaOperand,
        w: CudaOperand,
        bias: Option<CudaOperand>,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (n, c, h, width) = x.1.shape().dims4()?;
        let (o, c_w, kh, kw) = w.1.shape().dims4()?;
        if c_w != c {
            candle_core::bail!("conv: the kernel takes {c_w} input channels, the input has {c}");
        }
        if let Some((_, layout)) = bias
            && layout.shape().elem_count() != o
        {
            candle_core::bail!("conv: bias of shape {:?} for {o} output channels", layout.dims());
        }
        let (p, s) = (self.padding, self.stride);
        if h + 2 * p < kh || width + 2 * p < kw || s == 0 {
            candle_core::bail!("conv: {kh}×{kw} kernel, stride {s}, over a {h}×{width} input padded by {p}");
        }
        let shape = Geometry { n, c, h, w: width, o, kh, kw, padding: p, stride: s, dtype: x.0.dtype() };
        for (storage, what) in [Some((w.0, "weight")), bias.map(|(b, _)| (b, "bias"))].into_iter().flatten() {
            if storage.dtype() != shape.dtype {
                candle_core::bail!("conv: {what} is {:?}, the input {:?}", storage.dtype(), shape.dtype);
            }
        }
        match shape.dtype {
            DType::F16 => launch::<half::f16>(shape, x, w, bias),
            DType::BF16 => launch::<half::bf16>(shape, x, w, bias),
            DType::F32 => launch::<f32>(shape, x, w, bias),
            other => candle_core::bail!("conv on cuDNN: no kernels for {other:?}"),
        }
    }
}

/// Everything a cuDNN plan depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    padding: usize,
    stride: usize,
    dtype: DType,
}

impl Geometry {
    fn out_hw(&self) -> (usize, usize) {
        let (p, s) = (self.padding, self.stride);
        ((self.h + 2 * p - self.kh) / s + 1, (self.w + 2 * p - self.kw) / s + 1)
    }

    fn out_shape(&self) -> Shape {
        let (oh, ow) = self.out_hw();
        Shape::from((self.n, self.o, oh, ow))
    }

    fn data_type(&self) -> sys::cudnnDataType_t {
        match self.dtype {
            DType::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
            DType::BF16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
            _ => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        }
    }
}

fn launch<T: CudaDType + DeviceRepr + candle_core::WithDType>(
    shape: Geometry,
    (x, x_layout): CudaOperand,
    (w, w_layout): CudaOperand,
    bias: Option<CudaOperand>,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = &x.device;
    let stream = dev.cuda_stream();
    let x_view = contiguous::<T>(x, x_layout, "conv input")?;
    let w_view = contiguous::<T>(w, w_layout, "conv weight")?;
    let bias_view = bias.map(|(b, layout)| contiguous::<T>(b, layout, "conv bias")).transpose()?;
    let out_shape = shape.out_shape();
    // cudnnAddTensor reached a third of the memory bandwidth on an H100 (5.5 % of the kernel
    // time in a profile of a 1024² image); the engine's own kernel is one coalesced pass.
    let own_bias_kernel = crate::util::own_cuda_kernel("bias");
    // SAFETY: cuDNN writes every element (beta = 0) before anyone reads it.
    let mut y = unsafe { stream.alloc::<T>(out_shape.elem_count()) }.w()?;
    if out_shape.elem_count() > 0 {
        HANDLES.with(|handles| -> candle_core::Result<()> {
            let mut handles = handles.borrow_mut();
            let handle = match handles.entry(dev.id()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(Handle::new(&stream)?),
            };
            let plan = handle.plan(shape)?;
            let raw = handle.raw;
            let workspace = handle.workspace(&stream, plan.workspace_bytes)?;
            let (x_ptr, _x_read) = x_view.device_ptr(&stream);
            let (w_ptr, _w_read) = w_view.device_ptr(&stream);
            let (y_ptr, _y_write) = y.device_ptr_mut(&stream);
            let (ws_ptr, _ws_write) = match workspace {
                Some(ws) => {
                    let (ptr, guard) = ws.device_ptr_mut(&stream);
                    (ptr as *mut c_void, Some(guard))
                }
                None => (std::ptr::null_mut(), None),
            };
            // f16, bf16 and f32 data take f32 scaling factors.
            let (one, zero) = (1f32, 0f32);
            let (one, zero) = (&one as *const f32 as *const c_void, &zero as *const f32 as *const c_void);
            // SAFETY: the descriptors describe these buffers (contiguous NCHW of `shape`), the
            // handle runs on candle's stream, and the guards keep the buffers' events until the
            // calls are queued.
            check("convolution", unsafe {
                sys::cudnnConvolutionForward(
                    raw,
                    one,
                    plan.x.0,
                    x_ptr as *const c_void,
                    plan.w.0,
                    w_ptr as *const c_void,
                    plan.conv.0,
                    plan.algo,
                    ws_ptr,
                    plan.workspace_bytes,
                    zero,
                    plan.y.0,
                    y_ptr as *mut c_void,
                )
            })?;
            if let Some(b) = bias_view.as_ref().filter(|_| !own_bias_kernel) {
                let (b_ptr, _b_read) = b.device_ptr(&stream);
                // y += bias, broadcast over [1, o, 1, 1].
                check("bias add", unsafe {
                    sys::cudnnAddTensor(
                        raw,
                        one,
                        plan.bias.0,
                        b_ptr as *const c_void,
                        one,
                        plan.y.0,
                        y_ptr as *mut c_void,
                    )
                })?;
            }
            Ok(())
        })?;
        if let Some(b) = bias_view.as_ref().filter(|_| own_bias_kernel) {
            let (oh, ow) = shape.out_hw();
            crate::pointwise_cuda::add_channel_bias(dev, &mut y, b, (shape.n * shape.o, shape.o, oh * ow))?;
        }
    }
    Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), out_shape))
}

fn check(what: &str, status: sys::cudnnStatus_t) -> candle_core::Result<()> {
    match status {
        sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS => Ok(()),
        other => candle_core::bail!("cuDNN {what}: {other:?}"),
    }
}

thread_local! {
    // cuDNN handles must not be used by two threads at once: one per (thread, device), like
    // candle's. The worker runs every generation on one thread (fleet-worker's engine_thread.rs),
    // so it makes these once.
    static HANDLES: RefCell<HashMap<DeviceId, Handle>> = RefCell::new(HashMap::new());
}

/// How `FLEET_ENGINE_CUDNN_ALGO` asks for algorithms to be chosen.
fn search_algorithms() -> bool {
    static SEARCH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SEARCH.get_or_init(|| std::env::var("FLEET_ENGINE_CUDNN_ALGO").is_ok_and(|v| v == "search"))
}

struct Handle {
    raw: sys::cudnnHandle_t,
    plans: HashMap<Geometry, Rc<Plan>>,
    workspace: Option<CudaSlice<u8>>,
}

impl Handle {
    fn new(stream: &CudaStream) -> candle_core::Result<Self> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: plain handle creation; the stream outlives the handle (candle's device keeps it).
        check("handle", unsafe { sys::cudnnCreate(&mut raw) })?;
        let handle = Self { raw, plans: HashMap::new(), workspace: None };
        check("stream", unsafe { sys::cudnnSetStream(handle.raw, stream.cu_stream() as sys::cudaStream_t) })?;
        Ok(handle)
    }

    fn plan(&mut self, shape: Geometry) -> candle_core::Result<Rc<Plan>> {
        if let Some(plan) = self.plans.get(&shape) {
            return Ok(plan.clone());
        }
        let plan = Rc::new(Plan::new(self.raw, shape)?);
        self.plans.insert(shape, plan.clone());
        Ok(plan)
    }

    /// A workspace of at least `bytes`, grown (never shrunk) as plans need.
    fn workspace(&mut self, stream: &Arc<CudaStream>, bytes: usize) -> candle_core::Result<Option<&mut CudaSlice<u8>>> {
        if bytes == 0 {
            return Ok(None);
        }
        if self.workspace.as_ref().is_none_or(|ws| ws.len() < bytes) {
            self.workspace = None; // free the old one first
            // SAFETY: cuDNN's scratch space; nothing reads it before cuDNN writes it.
            self.workspace = Some(unsafe { stream.alloc::<u8>(bytes) }.w()?);
        }
        Ok(self.workspace.as_mut())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: created by cudnnCreate; an error at thread exit has nowhere to go.
        unsafe { sys::cudnnDestroy(self.raw) };
    }
}

struct TensorDesc(sys::cudnnTensorDescriptor_t);
struct FilterDesc(sys::cudnnFilterDescriptor_t);
struct ConvDesc(sys::cudnnConvolutionDescriptor_t);

impl Drop for TensorDesc {
    fn drop(&mut self) {
        unsafe { sys::cudnnDestroyTensorDescriptor(self.0) };
    }
}
impl Drop for FilterDesc {
    fn drop(&mut self) {
        unsafe { sys::cudnnDestroyFilterDescriptor(self.0) };
    }
}
impl Drop for ConvDesc {
    fn drop(&mut self) {
        unsafe { sys::cudnnDestroyConvolutionDescriptor(self.0) };
    }
}

fn dim(v: usize, what: &str) -> candle_core::Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("conv: {what} {v} is beyond cuDNN's range")))
}

fn tensor_desc(data: sys::cudnnDataType_t, [n, c, h, w]: [usize; 4]) -> candle_core::Result<TensorDesc> {
    let mut raw = std::ptr::null_mut();
    check("tensor descriptor", unsafe { sys::cudnnCreateTensorDescriptor(&mut raw) })?;
    let desc = TensorDesc(raw);
    let (n, c, h, w) = (dim(n, "batch")?, dim(c, "channels")?, dim(h, "height")?, dim(w, "width")?);
    check("tensor descriptor", unsafe {
        sys::cudnnSetTensor4dDescriptor(desc.0, sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW, data, n, c, h, w)
    })?;
    Ok(desc)
}

/// The descriptors and algorithm for one convolution shape.
struct Plan {
    x: TensorDesc,
    w: FilterDesc,
    y: TensorDesc,
    bias: TensorDesc,
    conv: ConvDesc,
    algo: sys::cudnnConvolutionFwdAlgo_t,
    workspace_bytes: usize,
}

impl Plan {
    fn new(handle: sys::cudnnHandle_t, g: Geometry) -> candle_core::Result<Self> {
        let data = g.data_type();
        let (oh, ow) = g.out_hw();
        let x = tensor_desc(data, [g.n, g.c, g.h, g.w])?;
        let y = tensor_desc(data, [g.n, g.o, oh, ow])?;
        let bias = tensor_desc(data, [1, g.o, 1, 1])?;
        let mut raw = std::ptr::null_mut();
        check("filter descriptor", unsafe { sys::cudnnCreateFilterDescriptor(&mut raw) })?;
        let w = FilterDesc(raw);
        let (o, c, kh, kw) = (dim(g.o, "channels")?, dim(g.c, "channels")?, dim(g.kh, "kernel")?, dim(g.kw, "kernel")?);
        check("filter descriptor", unsafe {
            sys::cudnnSetFilter4dDescriptor(w.0, data, sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW, o, c, kh, kw)
        })?;
        let mut raw = std::ptr::null_mut();
        check("convolution descriptor", unsafe { sys::cudnnCreateConvolutionDescriptor(&mut raw) })?;
        let conv = ConvDesc(raw);
        let (p, s) = (dim(g.padding, "padding")?, dim(g.stride, "stride")?);
        // f32 accumulation for every dtype, as PyTorch asks (half accumulation loses precision
        // over the 11,520-term sums of the UNet's widest layers).
        check("convolution descriptor", unsafe {
            sys::cudnnSetConvolution2dDescriptor(
                conv.0,
                p,
                p,
                s,
                s,
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            )
        })?;
        let math = match g.dtype {
            DType::F16 | DType::BF16 => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
            _ => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
        };
        check("math type", unsafe { sys::cudnnSetConvolutionMathType(conv.0, math) })?;
        let mut plan = Self {
            x,
            w,
            y,
            bias,
            conv,
            algo: sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
            workspace_bytes: 0,
        };
        plan.algo = if search_algorithms() { plan.search(handle)? } else { plan.heuristic(handle)? };
        check("workspace size", unsafe {
            sys::cudnnGetConvolutionForwardWorkspaceSize(
                handle,
                plan.x.0,
                plan.w.0,
                plan.conv.0,
                plan.y.0,
                plan.algo,
                &mut plan.workspace_bytes,
            )
        })?;
        Ok(plan)
    }

    /// cuDNN's heuristic's first choice that it says it can run.
    fn heuristic(&self, handle: sys::cudnnHandle_t) -> candle_core::Result<sys::cudnnConvolutionFwdAlgo_t> {
        let mut results: [sys::cudnnConvolutionFwdAlgoPerf_t; 8] = unsafe { std::mem::zeroed() };
        let mut count = 0;
        check("algorithm heuristic", unsafe {
            sys::cudnnGetConvolutionForwardAlgorithm_v7(
                handle,
                self.x.0,
                self.w.0,
                self.conv.0,
                self.y.0,
                results.len() as i32,
                &mut count,
                results.as_mut_ptr(),
            )
        })?;
        best(&results[..count.max(0) as usize], usize::MAX)
    }

    /// The fastest algorithm cuDNN measures for this shape (it allocates its own buffers).
    fn search(&self, handle: sys::cudnnHandle_t) -> candle_core::Result<sys::cudnnConvolutionFwdAlgo_t> {
        let mut results: [sys::cudnnConvolutionFwdAlgoPerf_t; 8] = unsafe { std::mem::zeroed() };
        let mut count = 0;
        check("algorithm search", unsafe {
            sys::cudnnFindConvolutionForwardAlgorithm(
                handle,
                self.x.0,
                self.w.0,
                self.conv.0,
                self.y.0,
                results.len() as i32,
                &mut count,
                results.as_mut_ptr(),
            )
        })?;
        best(&results[..count.max(0) as usize], SEARCH_WORKSPACE_LIMIT)
    }
}

/// The first (best-ranked) result that ran and needs at most `workspace_limit` bytes.
fn best(
    results: &[sys::cudnnConvolutionFwdAlgoPerf_t],
    workspace_limit: usize,
) -> candle_core::Result<sys::cudnnConvolutionFwdAlgo_t> {
    results
        .iter()
        .find(|r| r.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS && r.memory <= workspace_limit)
        .map(|r| r.algo)
        .ok_or_else(|| {
            candle_core::Error::Msg(format!("cuDNN offers no algorithm for this convolution ({} tried)", results.len()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};
    use candle_nn::Conv2dConfig;

    /// cuDNN's result against candle's CPU convolution of the same (rounded) values.
    #[test]
    fn matches_the_cpu_convolution_in_every_dtype() {
        let gpu = Device::new_cuda(0).expect("the `cudnn` feature's tests need a CUDA GPU");
        let cpu = Device::Cpu;
        // (c_in, c_out, k, stride, h, w, bias): 3×3, 1×1, a strided downsampler, no bias.
        for (c_in, c_out, k, stride, h, w, with_bias) in [
            (4, 8, 3, 1, 17, 23, true),
            (16, 32, 1, 1, 9, 9, true),
            (8, 8, 3, 2, 32, 20, true),
            (3, 5, 3, 1, 8, 8, false),
        ] {
            let x = Tensor::randn(0f32, 1., (2, c_in, h, w), &cpu).unwrap();
            let kernel = Tensor::randn(0f32, 0.2, (c_out, c_in, k, k), &cpu).unwrap();
            let bias = Tensor::randn(0f32, 1., c_out, &cpu).unwrap();
            let cfg = Conv2dConfig { padding: k / 2, stride, ..Default::default() };
            // f32 may run on TF32 tensor cores (10-bit mantissa products), as PyTorch allows.
            for (dtype, tolerance) in [(DType::F32, 3e-3), (DType::F16, 3e-3), (DType::BF16, 2e-2)] {
                let round = |t: &Tensor| t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
                let bias_of = |dev: &Device, dtype| {
                    with_bias.then(|| round(&bias).to_dtype(dtype).unwrap().to_device(dev).unwrap())
                };
                let reference = candle_nn::Conv2d::new(round(&kernel), bias_of(&cpu, DType::F32), cfg);
                let expected = reference.forward(&round(&x)).unwrap();
                let on_gpu = candle_nn::Conv2d::new(
                    kernel.to_dtype(dtype).unwrap().to_device(&gpu).unwrap(),
                    bias_of(&gpu, dtype),
                    cfg,
                );
                let x_gpu = x.to_dtype(dtype).unwrap().to_device(&gpu).unwrap();
                assert!(takes(&x_gpu, &on_gpu));
                let got = forward(&x_gpu, &on_gpu).unwrap();
                assert_eq!(got.dims(), expected.dims());
                let error = crate::util::relative_error(&got, &expected);
                assert!(error < tolerance, "{c_in}->{c_out} k{k} s{stride} {h}x{w} {dtype:?}: off by {error:e}");
                // A transposed (non-contiguous) view of the same input gives the same result.
                let view = x_gpu.transpose(2, 3).unwrap().contiguous().unwrap().transpose(2, 3).unwrap();
                assert!(!view.is_contiguous());
                let again = forward(&view, &on_gpu).unwrap();
                assert!(crate::util::relative_error(&again, &got) < 1e-6);
            }
        }
    }
}
