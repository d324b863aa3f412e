//! The UNet's attention blocks: `Attention` (diffusers `models/attention_processor.py`),
//! `BasicTransformerBlock` (`models/attention.py`) and `Transformer2DModel`
//! (`models/transformers/transformer_2d.py`).

use candle_core::{Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use super::resnet::conv;
use crate::conv::Conv2d;
use crate::linear::Linear;
use crate::norm::GroupNorm;

#[derive(Debug)]
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    fn new(vb: VarBuilder, dim: usize, ctx_dim: usize, heads: usize) -> candle_core::Result<Self> {
        Ok(Self {
            to_q: crate::linear::linear_no_bias(dim, dim, vb.pp("to_q"))?,
            to_k: crate::linear::linear_no_bias(ctx_dim, dim, vb.pp("to_k"))?,
            to_v: crate::linear::linear_no_bias(ctx_dim, dim, vb.pp("to_v"))?,
            to_out: crate::linear::linear(dim, dim, vb.pp("to_out.0"))?,
            heads,
        })
    }
    fn forward(&self, x: &Tensor, ctx: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let ctx = ctx.unwrap_or(x);
        let (b, n, c) = x.dims3()?;
        let m = ctx.dim(1)?;
        let hd = c / self.heads;
        let q = self.to_q.forward(x)?.reshape((b, n, self.heads, hd))?.transpose(1, 2)?.contiguous()?;
        let k = self.to_k.forward(ctx)?.reshape((b, m, self.heads, hd))?.transpose(1, 2)?.contiguous()?;
        let v = self.to_v.forward(ctx)?.reshape((b, m, self.heads, hd))?.transpose(1, 2)?.contiguous()?;
        let scale = 1.0 / (hd as f64).sqrt();
        let o = crate::attention::attention(&q, &k, &v, scale)?.transpose(1, 2)?.reshape((b, n, c))?;
        self.to_out.forward(&o)
    }
}

#[derive(Debug)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl BasicTransformerBlock {
    fn new(vb: VarBuilder, dim: usize, ctx_dim: usize, heads: usize) -> candle_core::Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            norm1: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads)?,
            norm2: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, ctx_dim, heads)?,
            norm3: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff_in: crate::linear::linear(dim, inner * 2, vb.pp("ff.net.0.proj"))?,
            ff_out: crate::linear::linear(inner, dim, vb.pp("ff.net.2"))?,
        })
    }
    fn forward(&self, x: &Tensor, ctx: &Tensor) -> candle_core::Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None)? + x)?;
        let x = (self.attn2.forward(&self.norm2.forward(&x)?, Some(ctx))? + x)?;
        let h = self.ff_in.forward(&self.norm3.forward(&x)?)?;
        let h = crate::activation::geglu(&h)?;
        self.ff_out.forward(&h)? + x
    }
}

#[derive(Debug)]
enum Proj {
    Linear(Linear),
    Conv(Conv2d),
}

#[derive(Debug)]
pub(super) struct Transformer2D {
    norm: GroupNorm,
    proj_in: Proj,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Proj,
}

impl Transformer2D {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        vb: VarBuilder,
        c: usize,
        ctx_dim: usize,
        heads: usize,
        depth: usize,
        groups: usize,
        linear: bool,
    ) -> candle_core::Result<Self> {
        let proj = |name: &str| -> candle_core::Result<Proj> {
            if linear {
                Ok(Proj::Linear(crate::linear::linear(c, c, vb.pp(name))?))
            } else {
                Ok(Proj::Conv(conv(vb.pp(name), c, c, 1, 1)?))
            }
        };
        let mut blocks = Vec::with_capacity(depth);
        for j in 0..depth {
            blocks.push(BasicTransformerBlock::new(vb.pp("transformer_blocks").pp(j.to_string()), c, ctx_dim, heads)?);
        }
        Ok(Self {
            norm: GroupNorm::new(vb.pp("norm"), groups, c, 1e-6)?,
            proj_in: proj("proj_in")?,
            blocks,
            proj_out: proj("proj_out")?,
        })
    }
    pub(super) fn forward(&self, x: &Tensor, ctx: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let residual = x;
        let x = self.norm.forward(x)?;
        let to_seq = |t: Tensor| -> candle_core::Result<Tensor> { t.permute((0, 2, 3, 1))?.reshape((b, h * w, c)) };
        let mut x = match &self.proj_in {
            Proj::Linear(l) => l.forward(&to_seq(x)?)?,
            Proj::Conv(cv) => to_seq(cv.forward(&x)?)?,
        };
        for blk in &self.blocks {
            x = blk.forward(&x, ctx)?;
        }
        let x = match &self.proj_out {
            Proj::Linear(l) => l.forward(&x)?.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?,
            Proj::Conv(cv) => cv.forward(&x.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous()?)?,
        };
        x + residual
    }
}
