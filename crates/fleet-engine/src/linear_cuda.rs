//! y = x·Wᵀ + b on CUDA in one cuBLASLt product, the bias added by its epilogue.

// cuBLASLt calls and an uninitialised output buffer: each unsafe block says why it holds.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::rc::Rc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublaslt::{CudaBlasLT, Matmul, MatmulConfig};
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::cuda_backend::{CudaDType, DeviceId, WrapErr};
use candle_core::{CpuStorage, CudaStorage, CustomOp3, DType, Layout, Shape, Tensor};

use crate::util::{CudaOperand, cuda_contiguous};

/// Whether the fused product takes `x` [.., in] with `weight` [out, in] and `bias` [out].
pub(crate) fn takes(x: &Tensor, weight: &Tensor, bias: &Tensor) -> bool {
    x.device().is_cuda()
        && matches!(x.dtype(), DType::F16 | DType::BF16 | DType::F32)
        && weight.dtype() == x.dtype()
        && bias.dtype() == x.dtype()
        && x.rank() >= 1
        && crate::util::own_cuda_kernel("linear")
}

pub(crate) fn forward(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &BiasedProduct)
}

struct BiasedProduct;

impl CustomOp3 for BiasedProduct {
    fn name(&self) -> &'static str {
        "cublaslt-linear-bias"
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
        candle_core::bail!("cublaslt-linear-bias runs on CUDA devices only")
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
        let operands = [(x, x_layout), (w, w_layout), (b, b_layout)];
        match x.dtype() {
            DType::F16 => product::<half::f16>(operands),
            DType::BF16 => product::<half::bf16>(operands),
            DType::F32 => product::<f32>(operands),
            other => candle_core::bail!("linear on cuBLASLt: no kernels for {other:?}"),
        }
    }
}

thread_local! {
    static HANDLES: RefCell<HashMap<DeviceId, Rc<CudaBlasLT>>> = RefCell::new(HashMap::new());
}

fn product<T: CudaDType + DeviceRepr>(
    [(x, x_layout), (w, w_layout), (b, b_layout)]: [CudaOperand; 3],
) -> candle_core::Result<(CudaStorage, Shape)>
where
    CudaBlasLT: Matmul<T>,
{
    let dims = x_layout.dims();
    let k = *dims.last().unwrap_or(&0);
    let (out, k_w) = w_layout.shape().dims2()?;
    if k_w != k || b_layout.shape().elem_count() != out {
        candle_core::bail!("linear: input {dims:?}, weight {:?}, bias {:?}", w_layout.dims(), b_layout.dims());
    }
    for (storage, what) in [(w, "weight"), (b, "bias")] {
        if storage.dtype() != x.dtype() {
            candle_core::bail!("linear: {what} is {:?}, the input {:?}", storage.dtype(), x.dtype());
        }
    }
    let rows = x_layout.shape().elem_count() / k.max(1);
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = out;
    }
    let dev = &x.device;
    let stream = dev.cuda_stream();
    // SAFETY: the product writes every element (beta = 0) before anyone reads it.
    let mut y = unsafe { stream.alloc::<T>(rows * out) }.w()?;
    if rows > 0 && out > 0 && k > 0 {
        let x_view = cuda_contiguous::<T>(x, x_layout, "linear input")?;
        let w_view = cuda_contiguous::<T>(w, w_layout, "linear weight")?;
        let b_view = cuda_contiguous::<T>(b, b_layout, "linear bias")?;
        let handle = HANDLES.with(|handles| -> candle_core::Result<Rc<CudaBlasLT>> {
            Ok(match handles.borrow_mut().entry(dev.id()) {
                Entry::Occupied(e) => e.get().clone(),
                Entry::Vacant(e) => {
                    e.insert(Rc::new(CudaBlasLT::new(stream.clone()).map_err(candle_core::Error::wrap)?)).clone()
                }
            })
        })?;
        // Column-major, as cuBLAS sees it: yᵀ [out, rows] = W [out, k] · xᵀ [k, rows], the
        // row-major W being a transposed column-major [k, out]; the bias runs along yᵀ's rows.
        let cfg = MatmulConfig {
            transa: true,
            transb: false,
            transc: false,
            m: out as u64,
            n: rows as u64,
            k: k as u64,
            alpha: 1.0,
            lda: k as i64,
            ldb: k as i64,
            beta: 0.0,
            ldc: out as i64,
            stride_a: None,
            stride_b: None,
            stride_c: None,
            stride_bias: None,
            batch_size: None,
        };
        // SAFETY: the layouts above describe these contiguous buffers.
        unsafe { handle.matmul(cfg, &w_view, &x_view, &mut y, Some(&b_view), None) }
            .map_err(candle_core::Error::wrap)?;
    }
    Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), Shape::from(out_dims)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

    /// The fused product against candle's CPU Linear on the same (rounded) values.
    #[test]
    fn matches_candles_linear_in_every_dtype() {
        let gpu = Device::new_cuda(0).expect("the `cuda` feature's tests need a CUDA GPU");
        let cpu = Device::Cpu;
        for (shape, k, out) in [(vec![2, 77, 40], 40, 24), (vec![333, 64], 64, 130), (vec![2, 3, 5, 16], 16, 8)] {
            let x = Tensor::randn(0f32, 1., shape.as_slice(), &cpu).unwrap();
            let weight = Tensor::randn(0f32, 0.2, (out, k), &cpu).unwrap();
            let bias = Tensor::randn(0f32, 1., out, &cpu).unwrap();
            // f32 runs on TF32 tensor cores (cudarc asks for CUBLAS_COMPUTE_32F_FAST_TF32).
            for (dtype, tolerance) in [(DType::F32, 3e-3), (DType::F16, 3e-3), (DType::BF16, 2e-2)] {
                let round = |t: &Tensor| t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
                let on = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(&gpu).unwrap();
                let expected = candle_nn::Linear::new(round(&weight), Some(round(&bias))).forward(&round(&x)).unwrap();
                let (x_gpu, w_gpu, b_gpu) = (on(&x), on(&weight), on(&bias));
                assert!(takes(&x_gpu, &w_gpu, &b_gpu));
                let got = forward(&x_gpu, &w_gpu, &b_gpu).unwrap();
                assert_eq!(got.dims(), expected.dims());
                let error = crate::util::relative_error(&got, &expected);
                assert!(error < tolerance, "{shape:?} -> {out} {dtype:?}: off by {error:e}");
            }
        }
    }
}
