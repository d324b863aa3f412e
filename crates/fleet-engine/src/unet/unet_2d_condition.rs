//! `UNet2DConditionModel` (diffusers `models/unets/unet_2d_condition.py`): the shared
//! [`Encoder`] (embeddings, down and mid blocks), then the up blocks and the output head.

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

use super::config::{Layout, UNetConfig, cross_attention_dim, unsupported};
use super::encoder::Encoder;
use super::resnet::conv;
use super::unet_2d_blocks::{Block, BlockConfig};
use super::{AddedCond, ControlResiduals};
use crate::conv::Conv2d;
use crate::error::{CandleContext, EngineError, Result};
use crate::norm::GroupNorm;

#[derive(Debug)]
pub struct UNet2DConditionModel {
    enc: Encoder,
    up: Vec<Block>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    pub config: UNetConfig,
    dtype: DType,
}

impl UNet2DConditionModel {
    pub fn new(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        let l = Layout::new(cfg)?;
        if cfg.up_block_types.len() != l.n {
            return Err(unsupported("block_out_channels and up_block_types must have the same length"));
        }
        let (n, g, eps, lin) = (l.n, cfg.norm_num_groups, cfg.norm_eps, cfg.use_linear_projection);
        let c0 = cfg.block_out_channels[0];
        let temb = c0 * 4;
        let build = || -> candle_core::Result<Self> {
            let enc = Encoder::new(&vb, cfg, &l)?;
            let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
            let (rl, rtl, rh): (Vec<usize>, Vec<usize>, Vec<usize>) = (
                l.layers.iter().rev().copied().collect(),
                l.tl.iter().rev().copied().collect(),
                l.heads.iter().rev().copied().collect(),
            );
            let mut up = Vec::new();
            let mut out_c = rev[0];
            for i in 0..n {
                let prev_out = out_c;
                out_c = rev[i];
                let in_c = rev[(i + 1).min(n - 1)];
                let bvb = vb.pp("up_blocks").pp(i.to_string());
                let level = BlockConfig {
                    temb,
                    groups: g,
                    eps,
                    ctx: l.ctx,
                    heads: rh[i],
                    depth: rtl[i],
                    linear: lin,
                    cross: cfg.up_block_types[i].starts_with("CrossAttn"),
                };
                up.push(Block::up(bvb, prev_out, out_c, in_c, rl[i] + 1, i + 1 < n, &level)?);
            }
            Ok(Self {
                enc,
                up,
                norm_out: GroupNorm::new(vb.pp("conv_norm_out"), g, c0, eps)?,
                conv_out: conv(vb.pp("conv_out"), c0, cfg.out_channels, 3, 1)?,
                config: cfg.clone(),
                dtype: vb.dtype(),
            })
        };
        build().weights("unet")
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn cross_attention_dim(&self) -> usize {
        cross_attention_dim(&self.config)
    }

    /// Predict for `sample` [B, in, h, w] at `timestep` with `encoder_hidden_states` [B, T, ctx].
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        added: Option<&AddedCond>,
        control: Option<&ControlResiduals>,
    ) -> Result<Tensor> {
        self.enc.check_inputs(sample, encoder_hidden_states, added, "unet")?;
        if let Some(c) = control {
            let want = self.config.num_down_residuals()?;
            if c.down.len() != want {
                return Err(EngineError::Shape {
                    name: "control down residuals".into(),
                    expected: format!("{want} tensors"),
                    got: format!("{} tensors", c.down.len()),
                });
            }
        }
        self.forward_inner(sample, timestep, encoder_hidden_states, added, control).ctx("unet forward")
    }

    fn forward_inner(
        &self,
        sample: &Tensor,
        timestep: f64,
        ctx: &Tensor,
        added: Option<&AddedCond>,
        control: Option<&ControlResiduals>,
    ) -> candle_core::Result<Tensor> {
        let dtype = self.dtype;
        let emb = self.enc.embed(timestep, sample.dim(0)?, added, sample.device())?;
        let ctx = ctx.to_dtype(dtype)?;
        let (x, mut res) = self.enc.down(self.enc.conv_in(sample)?, &emb, &ctx)?;
        if let Some(c) = control {
            for (r, extra) in res.iter_mut().zip(&c.down) {
                *r = (&*r + extra.to_dtype(dtype)?)?;
            }
        }
        let mut x = self.enc.mid(&x, &emb, &ctx)?;
        if let Some(c) = control {
            x = (x + c.mid.to_dtype(dtype)?)?;
        }
        for blk in &self.up {
            x = blk.forward_up(x, &emb, &ctx, &mut res)?;
        }
        let x = self.conv_out.forward(&self.norm_out.forward_silu(&x)?)?;
        Ok(x)
    }
}
