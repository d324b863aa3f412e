//! SDXL `UNet2DConditionModel` (diffusers `models/unets/unet_2d_condition.py`) with the
//! `text_time` added conditioning and ControlNet residual hooks.
//!
//! Weight names follow diffusers' checkpoint keys (`down_blocks.1.attentions.0.
//! transformer_blocks.0.attn2.to_k.weight`, `add_embedding.linear_1.weight`, ...), so the
//! SDXL base UNet and the SDXL-Lightning UNet files load directly. Group norms use the
//! config's `norm_num_groups` everywhere (candle's stock blocks hard-code 32).
//!
//! The modules mirror diffusers' files:
//! - [`config`]: `UNetConfig` and the per-block layout checked from it;
//! - [`embeddings`]: the sinusoidal timestep embedding and `TimestepEmbedding`;
//! - [`resnet`]: the `ResnetBlock2D`;
//! - [`transformer_2d`]: `Attention`, `BasicTransformerBlock`, `Transformer2DModel`;
//! - [`unet_2d_blocks`]: the down, up and mid blocks;
//! - [`encoder`]: embeddings + `conv_in` + down + mid, shared with the ControlNet;
//! - [`unet_2d_condition`]: `UNet2DConditionModel` itself.

mod config;
mod embeddings;
mod encoder;
mod resnet;
mod transformer_2d;
mod unet_2d_blocks;
mod unet_2d_condition;

use candle_core::Tensor;

pub use config::UNetConfig;
pub(crate) use config::cross_attention_dim;
pub use embeddings::timestep_embedding;
pub(crate) use encoder::{Encoder, build_encoder};
pub use unet_2d_condition::UNet2DConditionModel;

/// Additional residuals from a ControlNet, added to the skip connections and mid output.
#[derive(Debug, Clone)]
pub struct ControlResiduals {
    /// One per down residual, in order (9 for SDXL).
    pub down: Vec<Tensor>,
    pub mid: Tensor,
}

/// SDXL conditioning besides the token embeddings.
#[derive(Debug, Clone)]
pub struct AddedCond {
    /// Pooled text embedding of encoder 2, [B, projection_dim].
    pub text_embeds: Tensor,
    /// `(orig_h, orig_w, crop_top, crop_left, target_h, target_w)`, [B, 6] f32.
    pub time_ids: Tensor,
}
