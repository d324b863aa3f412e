//! The transformer feed-forward's GEGLU in one pass on the CPU.
//!
//! diffusers' `GEGLU` projects to twice the inner width and returns `h · gelu(gate)` of the two
//! halves. As candle ops that is two strided views, an exact-erf GELU (libm's `erff`, a call per
//! element) into a new tensor, and a strided multiply into another. Here one pass reads each row
//! once and writes the product, the GELU vectorised ([`crate::fast_math::gelu`]). Contiguous f32
//! CPU tensors, and with the `cuda` feature f32/f16/bf16 CUDA tensors (one kernel,
//! `kernels/pointwise.cu`); anything else (and `FLEET_ENGINE_KERNELS=candle`) takes candle's ops.

use candle_core::{CpuStorage, CustomOp1, D, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::fast_math::gelu;
use crate::util::contiguous_f32;

/// `h · gelu(gate)` for x = [.., 2·inner] split as (h, gate) along the last dimension.
pub fn geglu(x: &Tensor) -> candle_core::Result<Tensor> {
    let width = x.dim(D::Minus1)?;
    if width % 2 != 0 {
        candle_core::bail!("geglu: last dimension {width} is odd");
    }
    let half = width / 2;
    if x.device().is_cpu() && x.dtype() == DType::F32 && x.is_contiguous() && crate::util::own_kernels() {
        return x.apply_op1_no_bwd(&Geglu);
    }
    if x.device().is_cuda()
        && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && cfg!(feature = "cuda")
        && crate::util::own_cuda_kernel("geglu")
    {
        return x.contiguous()?.apply_op1_no_bwd(&Geglu);
    }
    x.narrow(D::Minus1, 0, half)? * x.narrow(D::Minus1, half, half)?.gelu_erf()?
}

struct Geglu;

/// Elements of output per task: enough to amortise a rayon task and pulp's dispatch.
const TASK_ELEMENTS: usize = 16 << 10;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "geglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "geglu input")?;
        let mut dims = layout.dims().to_vec();
        let Some(last) = dims.last_mut() else { candle_core::bail!("geglu: scalar input") };
        if *last % 2 != 0 {
            candle_core::bail!("geglu: last dimension {last} is odd");
        }
        let inner = *last / 2;
        *last = inner;
        let mut out = vec![0f32; x.len() / 2];
        if let Some(rows_per_task) = TASK_ELEMENTS.checked_div(inner) {
            let rows_per_task = rows_per_task.max(1);
            let arch = pulp::Arch::new();
            out.par_chunks_mut(rows_per_task * inner)
                .zip(x.par_chunks(rows_per_task * 2 * inner))
                .for_each(|(out, x)| arch.dispatch(GegluRows { x, out, inner }));
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::pointwise_cuda::geglu(storage, layout)
    }
}

/// Rows of [h | gate] → rows of h · gelu(gate).
struct GegluRows<'a> {
    x: &'a [f32],
    out: &'a mut [f32],
    inner: usize,
}

impl pulp::WithSimd for GegluRows<'_> {
    type Output = ();

    // Inlined into pulp's per-CPU-feature copies, so the GELU compiles to the widest vectors.
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        for (out, x) in self.out.chunks_exact_mut(self.inner).zip(self.x.chunks_exact(2 * self.inner)) {
            let (h, gate) = x.split_at(self.inner);
            for ((o, &h), &g) in out.iter_mut().zip(h).zip(gate) {
                *o = h * gelu(g);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn equals_candles_narrow_gelu_multiply() {
        let dev = Device::Cpu;
        // Rows spanning several tasks, a single row, and an odd inner width.
        for dims in [(2usize, 77usize, 1280usize), (1, 1, 8), (3, 5, 6)] {
            let x = (Tensor::randn(0f32, 1., dims, &dev).unwrap() * 3.).unwrap();
            let half = dims.2 / 2;
            let reference =
                (x.narrow(2, 0, half).unwrap() * x.narrow(2, half, half).unwrap().gelu_erf().unwrap()).unwrap();
            let ours = geglu(&x).unwrap();
            assert_eq!(ours.dims(), reference.dims());
            let diff = (ours - reference).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            let diff = diff.to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "{dims:?}: differs by {diff}");
        }
    }

    /// The CUDA kernel against the CPU kernel on the same (rounded) values.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_kernel_matches_the_cpu_kernel() {
        let gpu = Device::new_cuda(0).expect("the `cuda` feature's tests need a CUDA GPU");
        for dims in [(2usize, 77usize, 1280usize), (1, 1, 8), (3, 5, 6)] {
            let x = (Tensor::randn(0f32, 1., dims, &Device::Cpu).unwrap() * 3.).unwrap();
            for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::F16, 2e-3), (DType::BF16, 1.5e-2)] {
                let rounded = x.to_dtype(dtype).unwrap();
                let expected = geglu(&rounded.to_dtype(DType::F32).unwrap()).unwrap();
                let got = geglu(&rounded.to_device(&gpu).unwrap()).unwrap();
                assert_eq!(got.dims(), expected.dims());
                let error = crate::util::relative_error(&got, &expected);
                assert!(error < tolerance, "{dims:?} {dtype:?}: off by {error:e}");
            }
        }
    }

    #[test]
    fn odd_widths_are_an_error() {
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(geglu(&x).unwrap_err().to_string().contains("odd"));
    }
}
