//! The VAE encoder (diffusers `AutoencoderKL.encoder` + `quant_conv`), the image → latents half
//! that image-to-image and inpainting need. Same blocks as [`crate::vae_decoder`] (resnets, the
//! one-head mid-block attention), with diffusers' `Downsample2D(padding=0)`: pad right and bottom
//! by one, then a 3×3 stride-2 convolution.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::conv::Conv2d;
use crate::norm::GroupNorm;
use crate::vae_decoder::{EPS, MidAttention, Resnet};

#[derive(Debug)]
struct DownBlock {
    resnets: Vec<Resnet>,
    downsampler: Option<candle_nn::Conv2d>,
}

/// `AutoencoderKL`'s encoder with its `quant_conv`: images in [-1, 1] → the posterior's moments.
#[derive(Debug)]
pub struct VaeEncoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid: (Resnet, MidAttention, Resnet),
    norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    latent_channels: usize,
}

impl VaeEncoder {
    /// `vb` at the VAE's root (`encoder.*`, `quant_conv.*`).
    pub fn new(
        vb: VarBuilder,
        channels: &[usize],
        layers_per_block: usize,
        in_channels: usize,
        latent_channels: usize,
        groups: usize,
        use_quant_conv: bool,
    ) -> candle_core::Result<Self> {
        let moments = 2 * latent_channels;
        let quant_conv =
            if use_quant_conv { Some(Conv2d::new(vb.pp("quant_conv"), moments, moments, 1, 1)?) } else { None };
        let vb = vb.pp("encoder");
        let (Some(&first), Some(&deepest)) = (channels.first(), channels.last()) else {
            candle_core::bail!("vae: empty block_out_channels")
        };
        let mut down_blocks = Vec::with_capacity(channels.len());
        let mut i = first;
        for (index, &o) in channels.iter().enumerate() {
            let vb = vb.pp("down_blocks").pp(index.to_string());
            let mut resnets = Vec::with_capacity(layers_per_block);
            for j in 0..layers_per_block {
                resnets.push(Resnet::new(vb.pp("resnets").pp(j.to_string()), i, o, groups)?);
                i = o;
            }
            let last = index + 1 == channels.len();
            let downsampler = if last {
                None
            } else {
                let cfg = Conv2dConfig { padding: 0, stride: 2, ..Default::default() };
                Some(candle_nn::conv2d(o, o, 3, cfg, vb.pp("downsamplers").pp("0").pp("conv"))?)
            };
            down_blocks.push(DownBlock { resnets, downsampler });
        }
        let mid = vb.pp("mid_block");
        let mid = (
            Resnet::new(mid.pp("resnets").pp("0"), deepest, deepest, groups)?,
            MidAttention::new(mid.pp("attentions").pp("0"), deepest, groups)?,
            Resnet::new(mid.pp("resnets").pp("1"), deepest, deepest, groups)?,
        );
        Ok(Self {
            conv_in: Conv2d::new(vb.pp("conv_in"), in_channels, first, 3, 1)?,
            down_blocks,
            mid,
            norm_out: GroupNorm::new(vb.pp("conv_norm_out"), groups, deepest, EPS)?,
            conv_out: Conv2d::new(vb.pp("conv_out"), deepest, moments, 3, 1)?,
            quant_conv,
            latent_channels,
        })
    }

    /// Images [B, 3, H, W] in [-1, 1] → the posterior mean [B, C, H/f, W/f] (unscaled latents).
    /// The mean, not a sample: the same image always encodes to the same latents.
    pub fn encode_mean(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for block in &self.down_blocks {
            for r in &block.resnets {
                h = r.forward(&h)?;
            }
            if let Some(down) = &block.downsampler {
                h = down.forward(&h.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?)?;
            }
        }
        h = self.mid.2.forward(&self.mid.1.forward(&self.mid.0.forward(&h)?)?)?;
        h = self.conv_out.forward(&self.norm_out.forward_silu(&h)?)?;
        if let Some(q) = &self.quant_conv {
            h = q.forward(&h)?;
        }
        h.narrow(1, 0, self.latent_channels)
    }
}
