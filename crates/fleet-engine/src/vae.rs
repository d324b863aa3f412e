//! VAE decoder configured from diffusers' `vae/config.json` (the network itself: [`crate::vae_decoder`]).

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::error::{CandleContext, EngineError, Result};
use crate::vae_decoder::VaeDecoder;
use crate::vae_encoder::VaeEncoder;

/// The fields of diffusers' `AutoencoderKL` config this engine reads.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct VaeConfig {
    #[serde(default = "d3")]
    pub in_channels: usize,
    #[serde(default = "d3")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d1")]
    pub layers_per_block: usize,
    #[serde(default = "d4")]
    pub latent_channels: usize,
    #[serde(default = "d32")]
    pub norm_num_groups: usize,
    #[serde(default = "d_scale")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// The stock SDXL VAE overflows in f16 (`true`); the fp16-fix VAE does not (`false`).
    #[serde(default)]
    pub force_upcast: bool,
    #[serde(default = "dtrue")]
    pub use_quant_conv: bool,
    #[serde(default = "dtrue")]
    pub use_post_quant_conv: bool,
    #[serde(default)]
    pub mid_block_add_attention: Option<bool>,
}
fn d3() -> usize {
    3
}
fn d1() -> usize {
    1
}
fn d4() -> usize {
    4
}
fn d32() -> usize {
    32
}
fn d_scale() -> f64 {
    0.18215
}
fn dtrue() -> bool {
    true
}

impl VaeConfig {
    /// `stabilityai/stable-diffusion-xl-base-1.0/vae/config.json` (scaling 0.13025).
    pub fn sdxl() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.13025,
            shift_factor: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: None,
        }
    }
    /// Built-in tiny VAE: 4 blocks (8× upsampling like SDXL), 8 groups.
    pub fn tiny() -> Self {
        Self {
            block_out_channels: vec![16, 16, 32, 32],
            layers_per_block: 1,
            norm_num_groups: 8,
            force_upcast: false,
            ..Self::sdxl()
        }
    }
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        crate::util::read_json(path, "vae")
    }
    /// Spatial down-sampling factor between images and latents (8 for SDXL).
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }
}

#[derive(Debug)]
pub struct Vae {
    model: VaeDecoder,
    /// Built when the weights hold `encoder.*` (every diffusers VAE does); image-to-image needs it.
    encoder: Option<VaeEncoder>,
    pub config: VaeConfig,
    pub dtype: DType,
}

impl Vae {
    pub fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let g = cfg.norm_num_groups;
        if cfg.block_out_channels.is_empty() || g == 0 || cfg.block_out_channels.iter().any(|c| c % g != 0) {
            return Err(EngineError::Unsupported {
                component: "vae".into(),
                message: format!("block_out_channels {:?} with norm_num_groups {g}", cfg.block_out_channels),
            });
        }
        if cfg.mid_block_add_attention == Some(false) {
            return Err(EngineError::Unsupported {
                component: "vae".into(),
                message: "mid_block_add_attention = false".into(),
            });
        }
        let dtype = vb.dtype();
        let encoder = if vb.contains_tensor("encoder.conv_in.weight") {
            Some(
                VaeEncoder::new(
                    vb.clone(),
                    &cfg.block_out_channels,
                    cfg.layers_per_block,
                    cfg.in_channels,
                    cfg.latent_channels,
                    g,
                    cfg.use_quant_conv,
                )
                .weights("vae encoder")?,
            )
        } else {
            None
        };
        let model = VaeDecoder::new(
            vb,
            &cfg.block_out_channels,
            cfg.layers_per_block,
            cfg.latent_channels,
            cfg.out_channels,
            g,
            cfg.use_post_quant_conv,
        )
        .weights("vae")?;
        Ok(Self { model, encoder, config: cfg.clone(), dtype })
    }

    /// Encode images [B, 3, H, W] in [0, 1] (f32) into scaled latents [B, C, H/f, W/f] f32, as
    /// diffusers' image-to-image pipelines do: `2x − 1`, the encoder, the posterior mean (where
    /// diffusers samples it by default; the mean makes a job's pixels depend on its inputs alone),
    /// then `(z − shift) · scaling_factor`.
    pub fn encode(&self, images: &Tensor) -> Result<Tensor> {
        let Some(encoder) = &self.encoder else {
            return Err(EngineError::Unsupported {
                component: "vae".into(),
                message: "the VAE weights hold no encoder (encoder.*), which image-to-image needs".into(),
            });
        };
        let dims = images.dims();
        if dims.len() != 4 || dims[1] != self.config.in_channels {
            return Err(EngineError::Shape {
                name: "vae images".into(),
                expected: format!("[B, {}, H, W]", self.config.in_channels),
                got: format!("{dims:?}"),
            });
        }
        let run = || -> candle_core::Result<Tensor> {
            let x = ((images.to_dtype(DType::F32)? * 2.0)? - 1.0)?.to_dtype(self.dtype)?;
            let mut outs = Vec::with_capacity(x.dim(0)?);
            for i in 0..x.dim(0)? {
                outs.push(encoder.encode_mean(&x.narrow(0, i, 1)?)?.to_dtype(DType::F32)?);
            }
            let mut z = Tensor::cat(&outs, 0)?;
            if let Some(s) = self.config.shift_factor {
                z = (z - s)?;
            }
            z * self.config.scaling_factor
        };
        run().ctx("vae encode")
    }

    /// Decode scaled latents [B, C, h, w] (as the sampler produces them) into images in
    /// [0, 1], f32, [B, 3, h·f, w·f].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let dims = latents.dims();
        if dims.len() != 4 || dims[1] != self.config.latent_channels {
            return Err(EngineError::Shape {
                name: "vae latents".into(),
                expected: format!("[B, {}, h, w]", self.config.latent_channels),
                got: format!("{dims:?}"),
            });
        }
        let run = || -> candle_core::Result<Tensor> {
            let mut z = (latents.to_dtype(DType::F32)? / self.config.scaling_factor)?;
            if let Some(s) = self.config.shift_factor {
                z = (z + s)?;
            }
            // One image at a time: bounds the peak memory of large decodes (a 1024² image's
            // full-resolution activations are hundreds of MiB each). (The decoder's attention,
            // `MidAttention`, is correct for batches > 1, unlike candle 0.11's.)
            let z = z.to_dtype(self.dtype)?;
            let mut outs = Vec::with_capacity(z.dim(0)?);
            for i in 0..z.dim(0)? {
                outs.push(self.model.decode(&z.narrow(0, i, 1)?)?.to_dtype(DType::F32)?);
            }
            let x = Tensor::cat(&outs, 0)?;
            ((x / 2.0)? + 0.5)?.clamp(0f32, 1f32)
        };
        run().ctx("vae decode")
    }
}
