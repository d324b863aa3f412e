//! SDXL ControlNet (diffusers `models/controlnets/controlnet.py`, `ControlNetModel`) in the
//! diffusers layout (`config.json` + `diffusion_pytorch_model.safetensors`).
//!
//! A copy of the UNet's encoder and mid block (same text_time conditioning) whose input is
//! `conv_in(sample) + controlnet_cond_embedding(image)`; each down residual and the mid output go
//! through a zero-initialised 1×1 conv (`controlnet_down_blocks.{i}`, `controlnet_mid_block`) and
//! are multiplied by the conditioning scale, then added to the UNet's skips and mid output.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};
use serde::Deserialize;

use crate::error::{CandleContext, EngineError, Result};
use crate::unet::{AddedCond, ControlResiduals, Encoder, UNetConfig, build_encoder};

/// diffusers' `controlnet/config.json`: the UNet encoder fields plus the conditioning ones.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct ControlNetConfig {
    #[serde(flatten)]
    pub unet: UNetConfig,
    #[serde(default = "d_cond_channels")]
    pub conditioning_channels: usize,
    #[serde(default = "d_cond_out")]
    pub conditioning_embedding_out_channels: Vec<usize>,
    #[serde(default = "d_order")]
    pub controlnet_conditioning_channel_order: String,
    #[serde(default)]
    pub global_pool_conditions: bool,
}
fn d_cond_channels() -> usize {
    3
}
fn d_cond_out() -> Vec<usize> {
    vec![16, 32, 96, 256]
}
fn d_order() -> String {
    "rgb".into()
}

impl ControlNetConfig {
    /// The SDXL-base ControlNet (`ControlNetModel.from_unet(sdxl_unet)`, the architecture of
    /// diffusers/controlnet-canny-sdxl-1.0 and -depth-sdxl-1.0): the SDXL-base encoder with the
    /// default conditioning embedding (16, 32, 96, 256).
    pub fn sdxl() -> Self {
        Self {
            unet: UNetConfig { up_block_types: vec![], sample_size: None, ..UNetConfig::sdxl_base() },
            conditioning_channels: 3,
            conditioning_embedding_out_channels: d_cond_out(),
            controlnet_conditioning_channel_order: "rgb".into(),
            global_pool_conditions: false,
        }
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        crate::util::read_json(path, "controlnet")
    }
}

fn cn_err(name: &str, message: impl Into<String>) -> EngineError {
    EngineError::ControlNet { name: name.to_string(), message: message.into() }
}

/// `ControlNetConditioningEmbedding`: conv_in → SiLU → (conv 3×3, SiLU, conv 3×3 stride 2,
/// SiLU) per channel step → conv_out (zero-initialised in training).
#[derive(Debug)]
struct CondEmbedding {
    conv_in: Conv2d,
    blocks: Vec<Conv2d>,
    conv_out: Conv2d,
}

fn conv(vb: VarBuilder, i: usize, o: usize, k: usize, stride: usize) -> candle_core::Result<Conv2d> {
    candle_nn::conv2d(i, o, k, Conv2dConfig { padding: k / 2, stride, ..Default::default() }, vb)
}

impl CondEmbedding {
    fn new(vb: VarBuilder, cin: usize, chans: &[usize], out: usize) -> candle_core::Result<Self> {
        let mut blocks = Vec::new();
        for (i, w) in chans.windows(2).enumerate() {
            blocks.push(conv(vb.pp("blocks").pp((2 * i).to_string()), w[0], w[0], 3, 1)?);
            blocks.push(conv(vb.pp("blocks").pp((2 * i + 1).to_string()), w[0], w[1], 3, 2)?);
        }
        Ok(Self {
            conv_in: conv(vb.pp("conv_in"), cin, chans[0], 3, 1)?,
            blocks,
            conv_out: conv(vb.pp("conv_out"), chans[chans.len() - 1], out, 3, 1)?,
        })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.conv_in.forward(x)?.silu()?;
        for b in &self.blocks {
            x = b.forward(&x)?.silu()?;
        }
        self.conv_out.forward(&x)
    }
}

/// An SDXL ControlNet.
#[derive(Debug)]
pub struct ControlNetModel {
    enc: Encoder,
    cond_embedding: CondEmbedding,
    down_zero: Vec<Conv2d>,
    mid_zero: Conv2d,
    pub config: ControlNetConfig,
    /// Library name or folder, for messages.
    pub name: String,
}

impl ControlNetModel {
    pub fn new(vb: VarBuilder, cfg: &ControlNetConfig, name: &str) -> Result<Self> {
        if cfg.global_pool_conditions {
            return Err(cn_err(name, "global_pool_conditions (shuffle-style ControlNets) is not supported"));
        }
        if !matches!(cfg.controlnet_conditioning_channel_order.as_str(), "rgb" | "bgr") {
            return Err(cn_err(
                name,
                format!("controlnet_conditioning_channel_order {:?}", cfg.controlnet_conditioning_channel_order),
            ));
        }
        let chans = &cfg.conditioning_embedding_out_channels;
        if chans.is_empty() {
            return Err(cn_err(name, "conditioning_embedding_out_channels is empty"));
        }
        let enc = build_encoder(&vb, &cfg.unet, "controlnet")?;
        let u = &cfg.unet;
        let c0 = u.block_out_channels[0];
        let layers = u.layers_per_block.expand(u.block_out_channels.len(), "layers_per_block")?;
        // Channels of each down residual: conv_in, then per block its layers (+ downsampler).
        let mut res_channels = vec![c0];
        for (i, &c) in u.block_out_channels.iter().enumerate() {
            let extra = if i + 1 < u.block_out_channels.len() { 1 } else { 0 };
            res_channels.extend(std::iter::repeat_n(c, layers[i] + extra));
        }
        let build = || -> candle_core::Result<(CondEmbedding, Vec<Conv2d>, Conv2d)> {
            let ce = CondEmbedding::new(vb.pp("controlnet_cond_embedding"), cfg.conditioning_channels, chans, c0)?;
            let downs = res_channels
                .iter()
                .enumerate()
                .map(|(i, &c)| conv(vb.pp("controlnet_down_blocks").pp(i.to_string()), c, c, 1, 1))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let cl = *u.block_out_channels.last().unwrap_or(&c0);
            Ok((ce, downs, conv(vb.pp("controlnet_mid_block"), cl, cl, 1, 1)?))
        };
        let (cond_embedding, down_zero, mid_zero) = build().weights("controlnet")?;
        Ok(Self { enc, cond_embedding, down_zero, mid_zero, config: cfg.clone(), name: name.to_string() })
    }

    /// Load a diffusers-layout ControlNet folder (`config.json` +
    /// `diffusion_pytorch_model[.fp16].safetensors` or a sharded index).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let name = dir.display().to_string();
        if !dir.is_dir() {
            return Err(EngineError::MissingFile {
                component: "controlnet".into(),
                path: dir.to_path_buf(),
                hint: " (a ControlNet is a diffusers folder with config.json and diffusion_pytorch_model.safetensors)"
                    .into(),
            });
        }
        let cfg = ControlNetConfig::from_file(&dir.join("config.json"))?;
        let files = crate::files::component_weights(dir, "diffusion_pytorch_model", dtype == DType::F16, "controlnet")?;
        let vb = crate::pipeline::mmap_vb(&files, dtype, device, "controlnet")?;
        Self::new(vb, &cfg, &name)
    }

    /// The same model under another name (e.g. its library name, for messages).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// The residuals must fit the base UNet: same input, widths, layers and conditioning.
    pub fn check_fits(&self, unet: &UNetConfig) -> Result<()> {
        let c = &self.config.unet;
        let n = unet.block_out_channels.len();
        let mismatch = |what: &str, mine: String, theirs: String| {
            Err(cn_err(
                &self.name,
                format!("does not fit the base model: its {what} is {mine} but the UNet's is {theirs}"),
            ))
        };
        if c.in_channels != unet.in_channels {
            return mismatch("in_channels", c.in_channels.to_string(), unet.in_channels.to_string());
        }
        if c.block_out_channels != unet.block_out_channels {
            return mismatch(
                "block_out_channels",
                format!("{:?}", c.block_out_channels),
                format!("{:?}", unet.block_out_channels),
            );
        }
        let (mine, theirs) =
            (c.layers_per_block.expand(n, "layers_per_block")?, unet.layers_per_block.expand(n, "layers_per_block")?);
        if mine != theirs {
            return mismatch("layers_per_block", format!("{mine:?}"), format!("{theirs:?}"));
        }
        let (a, b) = (crate::unet::cross_attention_dim(c), crate::unet::cross_attention_dim(unet));
        if a != b {
            return mismatch("cross_attention_dim", a.to_string(), b.to_string());
        }
        if c.projection_class_embeddings_input_dim != unet.projection_class_embeddings_input_dim
            || c.addition_time_embed_dim != unet.addition_time_embed_dim
        {
            return mismatch(
                "text_time conditioning (projection_class_embeddings_input_dim, addition_time_embed_dim)",
                format!("{:?}", (c.projection_class_embeddings_input_dim, c.addition_time_embed_dim)),
                format!("{:?}", (unet.projection_class_embeddings_input_dim, unet.addition_time_embed_dim)),
            );
        }
        Ok(())
    }

    /// Residuals for `sample` (the UNet's scaled input) and the conditioning image `cond`
    /// [B, 3, 8h, 8w] in [0, 1], multiplied by `scale`.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        added: Option<&AddedCond>,
        cond: &Tensor,
        scale: f64,
    ) -> Result<ControlResiduals> {
        let emb = self.embed_condition(cond, sample)?;
        self.forward_embedded_rows(sample, timestep, encoder_hidden_states, added, &emb, &[scale])
    }

    /// `controlnet_cond_embedding(cond)`: it depends on the image only, so a pipeline computes it
    /// once per request. `sample` gives the batch and latent size it must fit.
    pub fn embed_condition(&self, cond: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = sample.dims4().ctx("controlnet sample")?;
        let f = 1 << (self.config.conditioning_embedding_out_channels.len() - 1);
        let want = [b, self.config.conditioning_channels, h * f, w * f];
        if cond.dims() != want {
            return Err(EngineError::Shape {
                name: format!("controlnet {} conditioning image", self.name),
                expected: format!("{want:?}"),
                got: format!("{:?}", cond.dims()),
            });
        }
        let run = || -> candle_core::Result<Tensor> {
            let mut cond = cond.to_dtype(self.enc.dtype)?;
            if self.config.controlnet_conditioning_channel_order == "bgr" {
                cond = cond.flip(&[1])?;
            }
            self.cond_embedding.forward(&cond)
        };
        run().ctx("controlnet conditioning embedding")
    }

    /// [`ControlNetModel::forward`] with the conditioning embedding already computed (a pipeline
    /// computes it once per request) and a scale per batch row (`scales.len()` = batch), or one
    /// for all rows: the rows of a batch that joins several jobs each get their own job's
    /// scale (0 where the job's control is not active at this step).
    pub fn forward_embedded_rows(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        added: Option<&AddedCond>,
        cond_emb: &Tensor,
        scales: &[f64],
    ) -> Result<ControlResiduals> {
        self.enc.check_inputs(sample, encoder_hidden_states, added, "controlnet")?;
        let run = || -> candle_core::Result<ControlResiduals> {
            let dtype = self.enc.dtype;
            let emb = self.enc.embed(timestep, sample.dim(0)?, added, sample.device())?;
            let ctx = encoder_hidden_states.to_dtype(dtype)?;
            let x = (self.enc.conv_in(sample)? + cond_emb)?;
            let (x, res) = self.enc.down(x, &emb, &ctx)?;
            let x = self.enc.mid(&x, &emb, &ctx)?;
            let down = res
                .iter()
                .zip(&self.down_zero)
                .map(|(r, z)| scale_rows(&z.forward(r)?, scales))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok(ControlResiduals { down, mid: scale_rows(&self.mid_zero.forward(&x)?, scales)? })
        };
        run().ctx("controlnet forward")
    }
}

/// `t` with batch row r multiplied by `scales[r]` (or every row by `scales[0]`). Each run of rows
/// with one scale is multiplied as a whole by that scalar: the same operation, value for value, as
/// a batch that holds only those rows.
fn scale_rows(t: &Tensor, scales: &[f64]) -> candle_core::Result<Tensor> {
    if let [scale] = scales {
        return t * *scale;
    }
    let rows = t.dim(0)?;
    if scales.len() != rows {
        candle_core::bail!("{} ControlNet scales for {rows} batch rows", scales.len());
    }
    let mut parts = Vec::new();
    let mut start = 0;
    while start < rows {
        let end = (start..rows).find(|&r| scales[r].to_bits() != scales[start].to_bits()).unwrap_or(rows);
        parts.push((t.narrow(0, start, end - start)? * scales[start])?);
        start = end;
    }
    Tensor::cat(&parts, 0)
}

/// diffusers' `controlnet_keep`: step `i` of `n` is controlled iff not
/// (i/n < start or (i+1)/n > end).
pub fn controlled(i: usize, n: usize, start: f64, end: f64) -> bool {
    let (a, b) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
    !(a < start || b > end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_follows_diffusers() {
        // 4 steps, start 0, end 0.5: steps 0 and 1 only.
        let k: Vec<bool> = (0..4).map(|i| controlled(i, 4, 0.0, 0.5)).collect();
        assert_eq!(k, [true, true, false, false]);
        let k: Vec<bool> = (0..4).map(|i| controlled(i, 4, 0.25, 1.0)).collect();
        assert_eq!(k, [false, true, true, true]);
        assert!(controlled(0, 1, 0.0, 1.0));
        assert!(!controlled(0, 1, 0.0, 0.9));
    }
}
