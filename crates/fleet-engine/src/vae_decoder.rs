//! The VAE decoder (diffusers `AutoencoderKL.decoder` + `post_quant_conv`), built on
//! [`crate::conv::Conv2d`] so its convolutions — most of the decode's time at full image
//! resolution — take the fast CPU path like the UNet's. Layer for layer what candle's
//! `AutoEncoderKL::decode` computes (same weight names and init hints). The mid-block attention
//! (one head over all latent positions: 16,384 at a 1024² image) uses the block-wise
//! [`crate::attention::attention`], so the position × position score matrix is never built.

use crate::linear::Linear;
use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

use crate::conv::Conv2d;
use crate::norm::GroupNorm;

/// diffusers' VAE norms and resnets use eps 1e-6.
pub(crate) const EPS: f64 = 1e-6;

#[derive(Debug)]
pub(crate) struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Resnet {
    pub(crate) fn new(vb: VarBuilder, i: usize, o: usize, groups: usize) -> candle_core::Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), groups, i, EPS)?,
            conv1: Conv2d::new(vb.pp("conv1"), i, o, 3, 1)?,
            norm2: GroupNorm::new(vb.pp("norm2"), groups, o, EPS)?,
            conv2: Conv2d::new(vb.pp("conv2"), o, o, 3, 1)?,
            shortcut: if i != o { Some(Conv2d::new(vb.pp("conv_shortcut"), i, o, 1, 1)?) } else { None },
        })
    }
}

impl Module for Resnet {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        match &self.shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

/// diffusers' `Attention` as the VAE uses it: GroupNorm, one head over all positions, residual.
#[derive(Debug)]
pub(crate) struct MidAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl MidAttention {
    pub(crate) fn new(vb: VarBuilder, channels: usize, groups: usize) -> candle_core::Result<Self> {
        // Current diffusers names, or the pre-0.14 ones older VAE checkpoints still carry.
        let names = if vb.contains_tensor("to_q.weight") {
            ["to_q", "to_k", "to_v", "to_out.0"]
        } else {
            ["query", "key", "value", "proj_attn"]
        };
        let linear = |name: &str| -> candle_core::Result<Linear> {
            let vb = vb.pp(name);
            if !vb.contains_tensor("weight") {
                // A random model: candle's constructor, for its init hints.
                return crate::linear::linear(channels, channels, vb);
            }
            // Some checkpoints store these projections as 1×1 convolutions.
            let weight = match vb.get((channels, channels), "weight") {
                Ok(weight) => weight,
                Err(_) => vb.get((channels, channels, 1, 1), "weight")?.reshape((channels, channels))?,
            };
            Ok(Linear::new(weight, Some(vb.get(channels, "bias")?)))
        };
        Ok(Self {
            group_norm: GroupNorm::new(vb.pp("group_norm"), groups, channels, EPS)?,
            to_q: linear(names[0])?,
            to_k: linear(names[1])?,
            to_v: linear(names[2])?,
            to_out: linear(names[3])?,
        })
    }
}

impl Module for MidAttention {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let dtype = x.dtype();
        let seq = self.group_norm.forward(x)?.reshape((b, c, h * w))?.transpose(1, 2)?;
        // [b, 1 head, positions, c]. In f32, as candle's block computed it (f16 scores over 512
        // channels can overflow), except on CUDA with the engine's kernels: there diffusers runs
        // an f16 VAE's attention in f16 (the fp16-fix VAE is scaled so that it fits), and candle's
        // softmax sums in f32 (the f32 products cost 8 % of a 1-step image on an H100).
        let in_model_dtype = x.device().is_cuda() && crate::util::own_cuda_kernel("vae-attention");
        let heads = |l: &Linear| {
            let h = l.forward(&seq)?.unsqueeze(1)?;
            if in_model_dtype { Ok(h) } else { h.to_dtype(DType::F32) }
        };
        let (q, k, v) = (heads(&self.to_q)?, heads(&self.to_k)?, heads(&self.to_v)?);
        let o = crate::attention::attention(&q, &k, &v, 1.0 / (c as f64).sqrt())?.to_dtype(dtype)?.squeeze(1)?;
        let o = self.to_out.forward(&o)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        o + x
    }
}

#[derive(Debug)]
struct UpBlock {
    resnets: Vec<Resnet>,
    upsampler: Option<Conv2d>,
}

/// `AutoencoderKL`'s decoder with its `post_quant_conv`.
#[derive(Debug)]
pub struct VaeDecoder {
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid: (Resnet, MidAttention, Resnet),
    up_blocks: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl VaeDecoder {
    /// `vb` at the VAE's root (`decoder.*`, `post_quant_conv.*`).
    pub fn new(
        vb: VarBuilder,
        channels: &[usize],
        layers_per_block: usize,
        latent_channels: usize,
        out_channels: usize,
        groups: usize,
        use_post_quant_conv: bool,
    ) -> candle_core::Result<Self> {
        let post_quant_conv = if use_post_quant_conv {
            Some(Conv2d::new(vb.pp("post_quant_conv"), latent_channels, latent_channels, 1, 1)?)
        } else {
            None
        };
        let vb = vb.pp("decoder");
        let Some(&deepest) = channels.last() else { candle_core::bail!("vae: empty block_out_channels") };
        let mid = vb.pp("mid_block");
        let mid = (
            Resnet::new(mid.pp("resnets").pp("0"), deepest, deepest, groups)?,
            MidAttention::new(mid.pp("attentions").pp("0"), deepest, groups)?,
            Resnet::new(mid.pp("resnets").pp("1"), deepest, deepest, groups)?,
        );
        let reversed: Vec<usize> = channels.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(reversed.len());
        for (index, &o) in reversed.iter().enumerate() {
            let vb = vb.pp("up_blocks").pp(index.to_string());
            let mut i = reversed[index.saturating_sub(1)];
            let mut resnets = Vec::with_capacity(layers_per_block + 1);
            for j in 0..=layers_per_block {
                resnets.push(Resnet::new(vb.pp("resnets").pp(j.to_string()), i, o, groups)?);
                i = o;
            }
            let last = index + 1 == reversed.len();
            let upsampler =
                if last { None } else { Some(Conv2d::new(vb.pp("upsamplers").pp("0").pp("conv"), o, o, 3, 1)?) };
            up_blocks.push(UpBlock { resnets, upsampler });
        }
        Ok(Self {
            post_quant_conv,
            conv_in: Conv2d::new(vb.pp("conv_in"), latent_channels, deepest, 3, 1)?,
            mid,
            up_blocks,
            norm_out: GroupNorm::new(vb.pp("conv_norm_out"), groups, channels[0], EPS)?,
            conv_out: Conv2d::new(vb.pp("conv_out"), channels[0], out_channels, 3, 1)?,
        })
    }

    /// Unscaled latents [B, C, h, w] → images in [-1, 1].
    pub fn decode(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(c) => c.forward(z)?,
            None => z.clone(),
        };
        let mut x = self.conv_in.forward(&z)?;
        x = self.mid.2.forward(&self.mid.1.forward(&self.mid.0.forward(&x)?)?)?;
        for block in &self.up_blocks {
            for r in &block.resnets {
                x = r.forward(&x)?;
            }
            if let Some(up) = &block.upsampler {
                let (_, _, h, w) = x.dims4()?;
                x = up.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&x)?)
    }
}
