//! The part of the UNet a ControlNet copies (diffusers `ControlNetModel`): the time and
//! text_time embeddings, `conv_in`, the down blocks and the mid block.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use super::AddedCond;
use super::config::{Layout, UNetConfig, cross_attention_dim};
use super::embeddings::{TimestepEmbedding, timestep_embedding};
use super::resnet::conv;
use super::unet_2d_blocks::{Block, BlockConfig, MidBlock};
use crate::conv::Conv2d;
use crate::error::{CandleContext, EngineError, Result};

/// What the UNet and a ControlNet share: the time/text_time embeddings, `conv_in`, the down
/// blocks and the mid block (a ControlNet is a copy of them, diffusers `ControlNetModel`).
#[derive(Debug)]
pub(crate) struct Encoder {
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<TimestepEmbedding>,
    down: Vec<Block>,
    mid: MidBlock,
    pub(crate) config: UNetConfig,
    pub(crate) dtype: DType,
}

impl Encoder {
    pub(super) fn new(vb: &VarBuilder, cfg: &UNetConfig, l: &Layout) -> candle_core::Result<Self> {
        let (n, g, eps, lin) = (l.n, cfg.norm_num_groups, cfg.norm_eps, cfg.use_linear_projection);
        let c0 = cfg.block_out_channels[0];
        let temb = c0 * 4;
        let conv_in = conv(vb.pp("conv_in"), cfg.in_channels, c0, 3, 1)?;
        let time_embedding = TimestepEmbedding::new(vb.pp("time_embedding"), c0, temb)?;
        let add_embedding = match (&cfg.addition_embed_type, cfg.projection_class_embeddings_input_dim) {
            (Some(_), Some(p)) => Some(TimestepEmbedding::new(vb.pp("add_embedding"), p, temb)?),
            _ => None,
        };
        let level = |i: usize| BlockConfig {
            temb,
            groups: g,
            eps,
            ctx: l.ctx,
            heads: l.heads[i],
            depth: l.tl[i],
            linear: lin,
            cross: cfg.down_block_types[i].starts_with("CrossAttn"),
        };
        let mut down = Vec::new();
        let mut out_c = c0;
        for i in 0..n {
            let in_c = out_c;
            out_c = cfg.block_out_channels[i];
            let bvb = vb.pp("down_blocks").pp(i.to_string());
            down.push(Block::down(bvb, in_c, out_c, l.layers[i], i + 1 < n, &level(i))?);
        }
        let cl = *cfg.block_out_channels.last().unwrap_or(&c0);
        let mid = MidBlock::new(vb.pp("mid_block"), cl, &level(n - 1))?;
        Ok(Self { conv_in, time_embedding, add_embedding, down, mid, config: cfg.clone(), dtype: vb.dtype() })
    }

    /// Timestep (+ text_time) embedding of a batch of `b`.
    pub(crate) fn embed(
        &self,
        timestep: f64,
        b: usize,
        added: Option<&AddedCond>,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let c0 = self.config.block_out_channels[0];
        let t = Tensor::from_vec(vec![timestep as f32; b], b, dev)?;
        let t_emb =
            timestep_embedding(&t, c0, self.config.flip_sin_to_cos, self.config.freq_shift)?.to_dtype(self.dtype)?;
        let mut emb = self.time_embedding.forward(&t_emb)?;
        if let (Some(add), Some(cond)) = (&self.add_embedding, added) {
            let d = self.config.addition_time_embed_dim.unwrap_or(256);
            let ids = cond.time_ids.to_dtype(DType::F32)?.flatten_all()?;
            let time_embeds =
                timestep_embedding(&ids, d, self.config.flip_sin_to_cos, self.config.freq_shift)?.reshape((b, ()))?;
            let add_in =
                Tensor::cat(&[cond.text_embeds.to_dtype(DType::F32)?, time_embeds], 1)?.to_dtype(self.dtype)?;
            emb = (emb + add.forward(&add_in)?)?;
        }
        Ok(emb)
    }

    pub(crate) fn conv_in(&self, sample: &Tensor) -> candle_core::Result<Tensor> {
        self.conv_in.forward(&sample.to_dtype(self.dtype)?)
    }

    /// Down blocks from the `conv_in` output `x`: the final hidden state and every residual
    /// (conv_in output first, then each resnet/attention and downsampler output).
    pub(crate) fn down(&self, mut x: Tensor, emb: &Tensor, ctx: &Tensor) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let mut res = vec![x.clone()];
        for blk in &self.down {
            x = blk.forward_down(x, emb, ctx, &mut res)?;
        }
        Ok((x, res))
    }

    pub(crate) fn mid(&self, x: &Tensor, emb: &Tensor, ctx: &Tensor) -> candle_core::Result<Tensor> {
        self.mid.forward(x, emb, ctx)
    }

    pub(crate) fn check_inputs(
        &self,
        sample: &Tensor,
        encoder_hidden_states: &Tensor,
        added: Option<&AddedCond>,
        what: &str,
    ) -> Result<()> {
        let dims = sample.dims();
        if dims.len() != 4 || dims[1] != self.config.in_channels {
            return Err(EngineError::Shape {
                name: format!("{what} sample"),
                expected: format!("[B, {}, h, w]", self.config.in_channels),
                got: format!("{dims:?}"),
            });
        }
        let b = dims[0];
        let ctx = cross_attention_dim(&self.config);
        let ctx_dims = encoder_hidden_states.dims();
        if ctx_dims.len() != 3 || ctx_dims[0] != b || ctx_dims[2] != ctx {
            return Err(EngineError::Shape {
                name: format!("{what} encoder_hidden_states"),
                expected: format!("[{b}, T, {ctx}]"),
                got: format!("{ctx_dims:?}"),
            });
        }
        if self.add_embedding.is_some() && added.is_none() {
            return Err(EngineError::InvalidRequest(format!(
                "this {what} uses text_time conditioning: pooled text embeddings and time ids are required"
            )));
        }
        Ok(())
    }
}

/// Build a config-checked [`Encoder`] (shared with the ControlNet).
pub(crate) fn build_encoder(vb: &VarBuilder, cfg: &UNetConfig, component: &str) -> Result<Encoder> {
    let l = Layout::new(cfg)?;
    Encoder::new(vb, cfg, &l).weights(component)
}
