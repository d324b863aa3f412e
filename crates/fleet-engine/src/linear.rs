//! The engine's Linear layer: candle's, except on CUDA where a biased layer adds its bias inside
//! the matrix product (cuBLASLt's bias epilogue, see [`crate::linear_cuda`]).
//!
//! candle's `Linear` adds the bias with a broadcast kernel after the product: another read and
//! write of every output, and with the residual adds the largest kernel after the products in
//! the UNet's transformer blocks on an H100 (`badd_f16`, 14–21 % of the kernel time in a profile, docs/PERFORMANCE.md).

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    /// From a weight [out, in] and an optional bias [out].
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { inner: candle_nn::Linear::new(weight, bias) }
    }
}

/// `torch.nn.Linear(in, out)` with its `weight` and `bias` (candle's names and init hints).
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<Linear> {
    Ok(Linear { inner: candle_nn::linear(in_dim, out_dim, vb)? })
}

/// `torch.nn.Linear(in, out, bias=False)`.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<Linear> {
    Ok(Linear { inner: candle_nn::linear_no_bias(in_dim, out_dim, vb)? })
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(bias) = self.inner.bias()
            && crate::linear_cuda::takes(x, self.inner.weight(), bias)
        {
            return crate::linear_cuda::forward(x, self.inner.weight(), bias);
        }
        if x.device().is_cpu() && x.rank() >= 2 && x.dim(0)? > 1 {
            let samples = x.dim(0)?;
            let rows_per_sample = x.elem_count() / samples / x.dim(x.rank() - 1)?;
            let (n, k) = self.inner.weight().dims2()?;
            if !same_gemm_path(rows_per_sample, rows_per_sample * samples, n, k) {
                return self.sample_by_sample(x);
            }
        }
        self.inner.forward(x)
    }
}

impl Linear {
    /// Each sample (index of dim 0) through its own product, exactly as when it is alone.
    fn sample_by_sample(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let parts =
            (0..x.dim(0)?).map(|i| self.inner.forward(&x.narrow(0, i, 1)?)).collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }
}

/// Whether gemm (0.19) computes every row of `[m, k] · [k, n]` with the same kernel and the same
/// blocking of `k` for `m = one` as for `m = all`, so that a sample's rows get the same bits
/// whether its product holds only its rows or a batch's. candle folds a batch into the rows of one
/// product; gemm picks its kernel by size: a matrix-vector kernel for one row, a horizontal
/// (dot-product) kernel when `m·n ≤ 256`, and for `m, n ≤ 64` a `k` blocking of 512 that differs
/// from its general one once `k > 512`. Each has its own summation order. Elsewhere the row's
/// value does not depend on `m` (the general kernel sums `k` in the same blocks for any `m`).
pub(crate) fn same_gemm_path(one: usize, all: usize, n: usize, k: usize) -> bool {
    let path = |m: usize| (m <= 1, m * n <= 256, m <= 64 && n <= 64 && k > 512);
    path(one) == path(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn the_gemm_path_changes_only_where_gemm_switches_kernels() {
        assert!(!same_gemm_path(1, 2, 1280, 320), "one row takes the matrix-vector kernel");
        assert!(!same_gemm_path(4, 12, 64, 64), "4·64 = 256 is horizontal, 12·64 is not");
        assert!(!same_gemm_path(16, 80, 64, 1024), "k > 512 is blocked differently for m ≤ 64, n ≤ 64");
        assert!(same_gemm_path(16, 80, 64, 256));
        assert!(same_gemm_path(4096, 16384, 640, 640), "SDXL's products keep their path at any batch");
    }

    /// A sample's rows are the same bits alone and in a batch, for sizes on both sides of every
    /// switch of gemm's kernels.
    #[test]
    fn rows_do_not_depend_on_the_batch() {
        for (t, c_in, c_out) in [(1, 16, 32), (4, 64, 64), (16, 1024, 64), (77, 64, 96), (3, 8, 8)] {
            let dev = Device::Cpu;
            let w = Tensor::randn(0f32, 1., (c_out, c_in), &dev).unwrap();
            let b = Tensor::randn(0f32, 1., c_out, &dev).unwrap();
            let layer = Linear::new(w, Some(b));
            for batch in [2, 3, 8] {
                let x = Tensor::randn(0f32, 1., (batch, t, c_in), &dev).unwrap();
                let all = layer.forward(&x).unwrap();
                for i in 0..batch {
                    let alone = layer.forward(&x.narrow(0, i, 1).unwrap()).unwrap();
                    let row = all.narrow(0, i, 1).unwrap();
                    let bits = |t: &Tensor| {
                        t.flatten_all()
                            .unwrap()
                            .to_dtype(DType::F32)
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap()
                            .into_iter()
                            .map(f32::to_bits)
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(bits(&row), bits(&alone), "t {t}, {c_in}→{c_out}, batch {batch}, sample {i}");
                }
                let x2 = x.squeeze(1).ok().filter(|_| t == 1);
                if let Some(x2) = x2 {
                    let all = layer.forward(&x2).unwrap();
                    let alone = layer.forward(&x2.narrow(0, 0, 1).unwrap()).unwrap();
                    assert_eq!(all.narrow(0, 0, 1).unwrap().to_vec2::<f32>().unwrap(), alone.to_vec2::<f32>().unwrap());
                }
            }
        }
    }
}
