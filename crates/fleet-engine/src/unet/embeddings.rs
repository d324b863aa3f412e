//! Timestep embeddings (diffusers `models/embeddings.py`: `get_timestep_embedding`,
//! `TimestepEmbedding`).

use candle_core::{D, DType, Module, Tensor};
use candle_nn::VarBuilder;

use crate::linear::Linear;

/// Sinusoidal timestep embedding (diffusers `get_timestep_embedding`), computed in f32.
pub fn timestep_embedding(t: &Tensor, dim: usize, flip_sin_to_cos: bool, shift: f64) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let dev = t.device();
    let exponent: Vec<f32> =
        (0..half).map(|i| (-(10000f64.ln()) * i as f64 / (half as f64 - shift)).exp() as f32).collect();
    let freqs = Tensor::from_vec(exponent, (1, half), dev)?;
    let t = t.to_dtype(DType::F32)?.unsqueeze(1)?;
    let args = t.broadcast_mul(&freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip_sin_to_cos { Tensor::cat(&[cos, sin], D::Minus1)? } else { Tensor::cat(&[sin, cos], D::Minus1)? };
    if dim % 2 == 1 { emb.pad_with_zeros(D::Minus1, 0, 1) } else { Ok(emb) }
}

#[derive(Debug)]
pub(super) struct TimestepEmbedding {
    l1: Linear,
    l2: Linear,
}

impl TimestepEmbedding {
    pub(super) fn new(vb: VarBuilder, inp: usize, out: usize) -> candle_core::Result<Self> {
        Ok(Self {
            l1: crate::linear::linear(inp, out, vb.pp("linear_1"))?,
            l2: crate::linear::linear(out, out, vb.pp("linear_2"))?,
        })
    }
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.l2.forward(&self.l1.forward(x)?.silu()?)
    }
}
