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
        self.inner.forward(x)
    }
}
