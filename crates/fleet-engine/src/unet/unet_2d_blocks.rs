//! The UNet's down, up and mid blocks (diffusers `models/unets/unet_2d_blocks.py`:
//! `CrossAttnDownBlock2D` / `DownBlock2D`, `CrossAttnUpBlock2D` / `UpBlock2D`,
//! `UNetMidBlock2DCrossAttn`): resnets, optional transformers, an optional resampler.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::resnet::{Resnet, conv};
use super::transformer_2d::Transformer2D;
use crate::conv::Conv2d;

/// What the blocks of one level are built with (from the config and its [`super::config::Layout`]).
pub(super) struct BlockConfig {
    /// Channels of the time embedding.
    pub(super) temb: usize,
    pub(super) groups: usize,
    pub(super) eps: f64,
    /// `cross_attention_dim`.
    pub(super) ctx: usize,
    pub(super) heads: usize,
    /// Transformer layers per attention block.
    pub(super) depth: usize,
    /// `use_linear_projection`.
    pub(super) linear: bool,
    /// Whether the block has attentions (`CrossAttn…` block types).
    pub(super) cross: bool,
}

impl BlockConfig {
    fn attention(&self, vb: VarBuilder, c: usize) -> candle_core::Result<Transformer2D> {
        Transformer2D::new(vb, c, self.ctx, self.heads, self.depth, self.groups, self.linear)
    }
}

/// A down or up block: resnets, each followed by a transformer in cross-attention blocks, then
/// an optional down- or upsampling convolution.
#[derive(Debug)]
pub(super) struct Block {
    resnets: Vec<Resnet>,
    attentions: Vec<Transformer2D>,
    sampler: Option<Conv2d>,
}

impl Block {
    /// `down_blocks.{i}`: `layers` resnets from `in_c` to `out_c` channels, then a stride-2
    /// `downsamplers.0.conv` unless it is the last level.
    pub(super) fn down(
        vb: VarBuilder,
        in_c: usize,
        out_c: usize,
        layers: usize,
        downsample: bool,
        c: &BlockConfig,
    ) -> candle_core::Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..layers {
            let ic = if j == 0 { in_c } else { out_c };
            resnets.push(Resnet::new(vb.pp("resnets").pp(j.to_string()), ic, out_c, c.temb, c.groups, c.eps)?);
            if c.cross {
                attentions.push(c.attention(vb.pp("attentions").pp(j.to_string()), out_c)?);
            }
        }
        let sampler = if downsample { Some(conv(vb.pp("downsamplers.0.conv"), out_c, out_c, 3, 2)?) } else { None };
        Ok(Self { resnets, attentions, sampler })
    }

    /// `up_blocks.{i}`: `num` resnets taking the previous output (`prev_out` channels, then
    /// `out_c`) concatenated with a skip connection (`skip_c` channels for the last one, `out_c`
    /// before), then an `upsamplers.0.conv` unless it is the last level.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn up(
        vb: VarBuilder,
        prev_out: usize,
        out_c: usize,
        skip_c: usize,
        num: usize,
        upsample: bool,
        c: &BlockConfig,
    ) -> candle_core::Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..num {
            let skip = if j == num - 1 { skip_c } else { out_c };
            let rin = if j == 0 { prev_out } else { out_c };
            resnets.push(Resnet::new(vb.pp("resnets").pp(j.to_string()), rin + skip, out_c, c.temb, c.groups, c.eps)?);
            if c.cross {
                attentions.push(c.attention(vb.pp("attentions").pp(j.to_string()), out_c)?);
            }
        }
        let sampler = if upsample { Some(conv(vb.pp("upsamplers.0.conv"), out_c, out_c, 3, 1)?) } else { None };
        Ok(Self { resnets, attentions, sampler })
    }

    /// A down block's forward: every resnet/attention output and the downsampler's are pushed
    /// onto the skip stack `res`.
    pub(super) fn forward_down(
        &self,
        mut x: Tensor,
        emb: &Tensor,
        ctx: &Tensor,
        res: &mut Vec<Tensor>,
    ) -> candle_core::Result<Tensor> {
        for (j, r) in self.resnets.iter().enumerate() {
            x = r.forward(&x, emb)?;
            if let Some(a) = self.attentions.get(j) {
                x = a.forward(&x, ctx)?;
            }
            res.push(x.clone());
        }
        if let Some(s) = &self.sampler {
            x = s.forward(&x)?;
            res.push(x.clone());
        }
        Ok(x)
    }

    /// An up block's forward: each resnet takes the top of the skip stack `res`.
    pub(super) fn forward_up(
        &self,
        mut x: Tensor,
        emb: &Tensor,
        ctx: &Tensor,
        res: &mut Vec<Tensor>,
    ) -> candle_core::Result<Tensor> {
        for (j, r) in self.resnets.iter().enumerate() {
            let skip = res.pop().ok_or_else(|| candle_core::Error::Msg("unet: skip stack underflow".into()))?;
            x = Tensor::cat(&[&x, &skip], 1)?;
            x = r.forward(&x, emb)?;
            if let Some(a) = self.attentions.get(j) {
                x = a.forward(&x, ctx)?;
            }
        }
        if let Some(s) = &self.sampler {
            // Upsample to the size of the next skip connection (handles odd latent sizes
            // like diffusers' `forward_upsample_size`).
            let (th, tw) = match res.last() {
                Some(r) => (r.dim(2)?, r.dim(3)?),
                None => (x.dim(2)? * 2, x.dim(3)? * 2),
            };
            x = s.forward(&x.upsample_nearest2d(th, tw)?)?;
        }
        Ok(x)
    }
}

/// `mid_block`: resnet, transformer, resnet at the deepest level's `c` channels (always with
/// its transformer, whatever the last down block's type).
#[derive(Debug)]
pub(super) struct MidBlock {
    resnet0: Resnet,
    attention: Option<Transformer2D>,
    resnet1: Resnet,
}

impl MidBlock {
    pub(super) fn new(vb: VarBuilder, c: usize, cfg: &BlockConfig) -> candle_core::Result<Self> {
        Ok(Self {
            resnet0: Resnet::new(vb.pp("resnets.0"), c, c, cfg.temb, cfg.groups, cfg.eps)?,
            attention: Some(cfg.attention(vb.pp("attentions.0"), c)?),
            resnet1: Resnet::new(vb.pp("resnets.1"), c, c, cfg.temb, cfg.groups, cfg.eps)?,
        })
    }

    pub(super) fn forward(&self, x: &Tensor, emb: &Tensor, ctx: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.resnet0.forward(x, emb)?;
        if let Some(a) = &self.attention {
            x = a.forward(&x, ctx)?;
        }
        self.resnet1.forward(&x, emb)
    }
}
