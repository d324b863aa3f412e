//! `ResnetBlock2D` (diffusers `models/resnet.py`) and the convolution constructor the UNet's
//! blocks share.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::conv::Conv2d;
use crate::linear::Linear;
use crate::norm::GroupNorm;

pub(super) fn conv(vb: VarBuilder, i: usize, o: usize, k: usize, stride: usize) -> candle_core::Result<Conv2d> {
    Conv2d::new(vb, i, o, k, stride)
}

#[derive(Debug)]
pub(super) struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Resnet {
    pub(super) fn new(
        vb: VarBuilder,
        i: usize,
        o: usize,
        temb: usize,
        groups: usize,
        eps: f64,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), groups, i, eps)?,
            conv1: conv(vb.pp("conv1"), i, o, 3, 1)?,
            time_emb_proj: crate::linear::linear(temb, o, vb.pp("time_emb_proj"))?,
            norm2: GroupNorm::new(vb.pp("norm2"), groups, o, eps)?,
            conv2: conv(vb.pp("conv2"), o, o, 3, 1)?,
            shortcut: if i != o { Some(conv(vb.pp("conv_shortcut"), i, o, 1, 1)?) } else { None },
        })
    }
    pub(super) fn forward(&self, x: &Tensor, temb: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let t = self.time_emb_proj.forward(&temb.silu()?)?.unsqueeze(2)?.unsqueeze(3)?;
        let h = h.broadcast_add(&t)?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        match &self.shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}
