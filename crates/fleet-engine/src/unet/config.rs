//! The UNet's config (the fields of diffusers' `unet/config.json` this engine reads) and the
//! per-block layout derived and checked from it.

use serde::Deserialize;

use crate::error::{EngineError, Result};
use crate::util::OneOrMany;

/// The fields of diffusers' `unet/config.json` this UNet reads.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct UNetConfig {
    #[serde(default = "d4")]
    pub in_channels: usize,
    #[serde(default = "d4")]
    pub out_channels: usize,
    #[serde(default = "dtrue")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    /// Absent from ControlNet configs (no up blocks).
    #[serde(default)]
    pub up_block_types: Vec<String>,
    #[serde(default)]
    pub mid_block_type: Option<String>,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers")]
    pub layers_per_block: OneOrMany,
    #[serde(default = "d32")]
    pub norm_num_groups: usize,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    pub cross_attention_dim: OneOrMany,
    #[serde(default = "d_tl")]
    pub transformer_layers_per_block: OneOrMany,
    #[serde(default)]
    pub attention_head_dim: Option<OneOrMany>,
    #[serde(default)]
    pub num_attention_heads: Option<OneOrMany>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default = "d_act")]
    pub act_fn: String,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default = "d_rtss")]
    pub resnet_time_scale_shift: String,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default)]
    pub sample_size: Option<usize>,
}
fn d4() -> usize {
    4
}
fn dtrue() -> bool {
    true
}
fn d_layers() -> OneOrMany {
    OneOrMany::One(2)
}
fn d32() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_tl() -> OneOrMany {
    OneOrMany::One(1)
}
fn d_act() -> String {
    "silu".into()
}
fn d_rtss() -> String {
    "default".into()
}

impl UNetConfig {
    /// `stabilityai/stable-diffusion-xl-base-1.0/unet/config.json` (also the SDXL-Lightning UNets).
    pub fn sdxl_base() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: vec!["DownBlock2D".into(), "CrossAttnDownBlock2D".into(), "CrossAttnDownBlock2D".into()],
            up_block_types: vec!["CrossAttnUpBlock2D".into(), "CrossAttnUpBlock2D".into(), "UpBlock2D".into()],
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            block_out_channels: vec![320, 640, 1280],
            layers_per_block: OneOrMany::One(2),
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: OneOrMany::One(2048),
            transformer_layers_per_block: OneOrMany::Many(vec![1, 2, 10]),
            attention_head_dim: Some(OneOrMany::Many(vec![5, 10, 20])),
            num_attention_heads: None,
            use_linear_projection: true,
            addition_embed_type: Some("text_time".into()),
            addition_time_embed_dim: Some(256),
            projection_class_embeddings_input_dim: Some(2816),
            act_fn: "silu".into(),
            class_embed_type: None,
            time_cond_proj_dim: None,
            encoder_hid_dim: None,
            resnet_time_scale_shift: "default".into(),
            center_input_sample: false,
            sample_size: Some(128),
        }
    }

    /// The built-in tiny model: SDXL's block structure with small widths, 8 groups.
    pub fn tiny(cross_attention_dim: usize, pooled_dim: usize) -> Self {
        Self {
            block_out_channels: vec![32, 32, 64],
            layers_per_block: OneOrMany::One(1),
            norm_num_groups: 8,
            cross_attention_dim: OneOrMany::One(cross_attention_dim),
            transformer_layers_per_block: OneOrMany::Many(vec![1, 2, 1]),
            attention_head_dim: Some(OneOrMany::Many(vec![2, 2, 4])),
            addition_time_embed_dim: Some(8),
            projection_class_embeddings_input_dim: Some(pooled_dim + 6 * 8),
            sample_size: Some(8),
            ..Self::sdxl_base()
        }
    }

    /// A mid-sized SDXL-shaped model for CPU benchmarks (about a tenth of SDXL's width).
    pub fn medium(cross_attention_dim: usize, pooled_dim: usize) -> Self {
        Self {
            block_out_channels: vec![64, 128, 256],
            transformer_layers_per_block: OneOrMany::Many(vec![1, 2, 4]),
            attention_head_dim: Some(OneOrMany::Many(vec![1, 2, 4])),
            cross_attention_dim: OneOrMany::One(cross_attention_dim),
            addition_time_embed_dim: Some(64),
            projection_class_embeddings_input_dim: Some(pooled_dim + 6 * 64),
            ..Self::sdxl_base()
        }
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        crate::util::read_json(path, "unet")
    }

    /// Number of down-block residuals a ControlNet must supply (9 for SDXL).
    pub fn num_down_residuals(&self) -> Result<usize> {
        let layers = self.layers_per_block.expand(self.block_out_channels.len(), "layers_per_block")?;
        let n = self.block_out_channels.len();
        Ok(1 + layers.iter().sum::<usize>() + n - 1)
    }
}

pub(super) fn unsupported(message: impl Into<String>) -> EngineError {
    EngineError::Unsupported { component: "unet".into(), message: message.into() }
}

/// Per-block settings derived (and checked) from a config.
pub(super) struct Layout {
    pub(super) n: usize,
    pub(super) layers: Vec<usize>,
    pub(super) tl: Vec<usize>,
    pub(super) heads: Vec<usize>,
    pub(super) ctx: usize,
}

impl Layout {
    pub(super) fn new(cfg: &UNetConfig) -> Result<Self> {
        let n = cfg.block_out_channels.len();
        if n == 0 || cfg.down_block_types.len() != n {
            return Err(unsupported("block_out_channels and down_block_types must have the same non-zero length"));
        }
        if let Some(t) = &cfg.class_embed_type {
            return Err(unsupported(format!("class_embed_type {t:?}")));
        }
        if cfg.time_cond_proj_dim.is_some() || cfg.encoder_hid_dim.is_some() {
            return Err(unsupported("time_cond_proj_dim / encoder_hid_dim"));
        }
        if cfg.act_fn != "silu" || cfg.resnet_time_scale_shift != "default" || cfg.center_input_sample {
            return Err(unsupported("only act_fn=silu, resnet_time_scale_shift=default, center_input_sample=false"));
        }
        match cfg.addition_embed_type.as_deref() {
            None | Some("text_time") => {}
            Some(o) => return Err(unsupported(format!("addition_embed_type {o:?}"))),
        }
        if let Some(m) = cfg.mid_block_type.as_deref()
            && m != "UNetMidBlock2DCrossAttn"
        {
            return Err(unsupported(format!("mid_block_type {m:?}")));
        }
        let layers = cfg.layers_per_block.expand(n, "layers_per_block")?;
        let tl = cfg.transformer_layers_per_block.expand(n, "transformer_layers_per_block")?;
        let heads = match (&cfg.num_attention_heads, &cfg.attention_head_dim) {
            // diffusers quirk: `attention_head_dim` in SDXL configs is the number of heads.
            (Some(h), _) | (None, Some(h)) => h.expand(n, "num_attention_heads")?,
            (None, None) => vec![8; n],
        };
        let ctx_dims = cfg.cross_attention_dim.expand(n, "cross_attention_dim")?;
        if ctx_dims.iter().any(|&d| d != ctx_dims[0]) {
            return Err(unsupported("per-block cross_attention_dim"));
        }
        let g = cfg.norm_num_groups;
        for (i, &c) in cfg.block_out_channels.iter().enumerate() {
            if g == 0 || c % g != 0 {
                return Err(unsupported(format!("block_out_channels[{i}]={c} not divisible by norm_num_groups={g}")));
            }
            if heads[i] == 0 || c % heads[i] != 0 {
                return Err(unsupported(format!("block_out_channels[{i}]={c} not divisible by {} heads", heads[i])));
            }
        }
        Ok(Self { n, layers, tl, heads, ctx: ctx_dims[0] })
    }
}

pub(crate) fn cross_attention_dim(cfg: &UNetConfig) -> usize {
    match &cfg.cross_attention_dim {
        OneOrMany::One(d) => *d,
        OneOrMany::Many(v) => v.first().copied().unwrap_or(0),
    }
}
