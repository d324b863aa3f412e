//! SDXL `UNet2DConditionModel` (diffusers `models/unets/unet_2d_condition.py`) with the
//! `text_time` added conditioning and ControlNet residual hooks.
//!
//! Weight names follow diffusers' checkpoint keys (`down_blocks.1.attentions.0.
//! transformer_blocks.0.attn2.to_k.weight`, `add_embedding.linear_1.weight`, ...), so the
//! SDXL base UNet and the SDXL-Lightning UNet files load directly. Group norms use the
//! config's `norm_num_groups` everywhere (candle's stock blocks hard-code 32).

use crate::linear::Linear;
use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use crate::norm::GroupNorm;

use crate::conv::Conv2d;
use serde::Deserialize;

use crate::error::{CandleContext, EngineError, Result};
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

fn unsupported(message: impl Into<String>) -> EngineError {
    EngineError::Unsupported { component: "unet".into(), message: message.into() }
}

/// Sinusoidal timestep embedding (diffusers `get_timestep_embedding`), computed in f32.
pub fn timestep_embedding(t: &Tensor, dim: usize, flip_sin_to_cos: bool, shift: f64) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let dev = t.device();
    let exponent: Vec<f32> =
        (0..half).map(|i| (-(10000f64.ln()) * i as f64 / (half as f64 - shift)).exp() as f32).collect();
    let freqs = Tensor::from_vec(exponent, (1, half), dev)?;
    let t = t.to_dtype(DType::F32)?.unsqueeze(1)?;
    let args = t.broadcast_mul(&freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip_sin_to_cos { Tensor::cat(&[cos, sin], D::Minus1)? } else { Tensor::cat(&[sin, cos], D::Minus1)? };
    if dim % 2 == 1 { emb.pad_with_zeros(D::Minus1, 0, 1) } else { Ok(emb) }
}

#[derive(Debug)]
struct TimestepEmbedding {
    l1: Linear,
    l2: Linear,
}

impl TimestepEmbedding {
    fn new(vb: VarBuilder, inp: usize, out: usize) -> candle_core::Result<Self> {
        Ok(Self {
            l1: crate::linear::linear(inp, out, vb.pp("linear_1"))?,
            l2: crate::linear::linear(out, out, vb.pp("linear_2"))?,
        })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.l2.forward(&self.l1.forward(x)?.silu()?)
    }
}

fn conv(vb: VarBuilder, i: usize, o: usize, k: usize, stride: usize) -> candle_core::Result<Conv2d> {
    Conv2d::new(vb, i, o, k, stride)
}

#[derive(Debug)]
struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Resnet {
    fn new(vb: VarBuilder, i: usize, o: usize, temb: usize, groups: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), groups, i, eps)?,
            conv1: conv(vb.pp("conv1"), i, o, 3, 1)?,
            time_emb_proj: crate::linear::linear(temb, o, vb.pp("time_emb_proj"))?,
            norm2: GroupNorm::new(vb.pp("norm2"), groups, o, eps)?,
            conv2: conv(vb.pp("conv2"), o, o, 3, 1)?,
            shortcut: if i != o { Some(conv(vb.pp("conv_shortcut"), i, o, 1, 1)?) } else { None },
        })
    }
    fn forward(&self, x: &Tensor, temb: &Tensor) -> candle_core::Result<Tensor> {
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

#[derive(Debug)]
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    fn new(vb: VarBuilder, dim: usize, ctx_dim: usize, heads: usize) -> candle_core::Result<Self> {
        Ok(Self {
            to_q: crate::linear::linear_no_bias(dim, dim, vb.pp("to_q"))?,
            to_k: crate::linear::linear_no_bias(ctx_dim, dim, vb.pp("to_k"))?,
            to_v: crate::linear::linear_no_bias(ctx_dim, dim, vb.pp("to_v"))?,
            to_out: crate::linear::linear(dim, dim, vb.pp("to_out.0"))?,
            heads,
        })
    }
    fn forward(&self, x: &Tensor, ctx: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let ctx = ctx.unwrap_or(x);
        let (b, n, c) = x.dims3()?;
        let m = ctx.dim(1)?;
        let hd = c / self.heads;
        let q = self.to_q.forward(x)?.reshape((b, n, self.heads, hd))?.transpose(1, 2)?.contiguous()?;
        let k = self.to_k.forward(ctx)?.reshape((b, m, self.heads, hd))?.transpose(1, 2)?.contiguous()?;
        let v = self.to_v.forward(ctx)?.reshape((b, m, self.heads, hd))?.transpose(1, 2)?.contiguous()?;
        let scale = 1.0 / (hd as f64).sqrt();
        let o = crate::attention::attention(&q, &k, &v, scale)?.transpose(1, 2)?.reshape((b, n, c))?;
        self.to_out.forward(&o)
    }
}

#[derive(Debug)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl BasicTransformerBlock {
    fn new(vb: VarBuilder, dim: usize, ctx_dim: usize, heads: usize) -> candle_core::Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            norm1: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads)?,
            norm2: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, ctx_dim, heads)?,
            norm3: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff_in: crate::linear::linear(dim, inner * 2, vb.pp("ff.net.0.proj"))?,
            ff_out: crate::linear::linear(inner, dim, vb.pp("ff.net.2"))?,
        })
    }
    fn forward(&self, x: &Tensor, ctx: &Tensor) -> candle_core::Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None)? + x)?;
        let x = (self.attn2.forward(&self.norm2.forward(&x)?, Some(ctx))? + x)?;
        let h = self.ff_in.forward(&self.norm3.forward(&x)?)?;
        let h = crate::activation::geglu(&h)?;
        self.ff_out.forward(&h)? + x
    }
}

#[derive(Debug)]
enum Proj {
    Linear(Linear),
    Conv(Conv2d),
}

#[derive(Debug)]
struct Transformer2D {
    norm: GroupNorm,
    proj_in: Proj,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Proj,
}

impl Transformer2D {
    #[allow(clippy::too_many_arguments)]
    fn new(
        vb: VarBuilder,
        c: usize,
        ctx_dim: usize,
        heads: usize,
        depth: usize,
        groups: usize,
        linear: bool,
    ) -> candle_core::Result<Self> {
        let proj = |name: &str| -> candle_core::Result<Proj> {
            if linear {
                Ok(Proj::Linear(crate::linear::linear(c, c, vb.pp(name))?))
            } else {
                Ok(Proj::Conv(conv(vb.pp(name), c, c, 1, 1)?))
            }
        };
        let mut blocks = Vec::with_capacity(depth);
        for j in 0..depth {
            blocks.push(BasicTransformerBlock::new(vb.pp("transformer_blocks").pp(j.to_string()), c, ctx_dim, heads)?);
        }
        Ok(Self {
            norm: GroupNorm::new(vb.pp("norm"), groups, c, 1e-6)?,
            proj_in: proj("proj_in")?,
            blocks,
            proj_out: proj("proj_out")?,
        })
    }
    fn forward(&self, x: &Tensor, ctx: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let residual = x;
        let x = self.norm.forward(x)?;
        let to_seq = |t: Tensor| -> candle_core::Result<Tensor> { t.permute((0, 2, 3, 1))?.reshape((b, h * w, c)) };
        let mut x = match &self.proj_in {
            Proj::Linear(l) => l.forward(&to_seq(x)?)?,
            Proj::Conv(cv) => to_seq(cv.forward(&x)?)?,
        };
        for blk in &self.blocks {
            x = blk.forward(&x, ctx)?;
        }
        let x = match &self.proj_out {
            Proj::Linear(l) => l.forward(&x)?.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?,
            Proj::Conv(cv) => cv.forward(&x.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous()?)?,
        };
        x + residual
    }
}

#[derive(Debug)]
struct Block {
    resnets: Vec<Resnet>,
    attentions: Vec<Transformer2D>,
    sampler: Option<Conv2d>,
}

#[derive(Debug)]
struct MidBlock {
    resnet0: Resnet,
    attention: Option<Transformer2D>,
    resnet1: Resnet,
}

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

/// Per-block settings derived (and checked) from a config.
struct Layout {
    n: usize,
    layers: Vec<usize>,
    tl: Vec<usize>,
    heads: Vec<usize>,
    ctx: usize,
}

impl Layout {
    fn new(cfg: &UNetConfig) -> Result<Self> {
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

impl Encoder {
    fn new(vb: &VarBuilder, cfg: &UNetConfig, l: &Layout) -> candle_core::Result<Self> {
        let (n, g, eps, lin) = (l.n, cfg.norm_num_groups, cfg.norm_eps, cfg.use_linear_projection);
        let c0 = cfg.block_out_channels[0];
        let temb = c0 * 4;
        let conv_in = conv(vb.pp("conv_in"), cfg.in_channels, c0, 3, 1)?;
        let time_embedding = TimestepEmbedding::new(vb.pp("time_embedding"), c0, temb)?;
        let add_embedding = match (&cfg.addition_embed_type, cfg.projection_class_embeddings_input_dim) {
            (Some(_), Some(p)) => Some(TimestepEmbedding::new(vb.pp("add_embedding"), p, temb)?),
            _ => None,
        };
        let mut down = Vec::new();
        let mut out_c = c0;
        for i in 0..n {
            let in_c = out_c;
            out_c = cfg.block_out_channels[i];
            let bvb = vb.pp("down_blocks").pp(i.to_string());
            let cross = cfg.down_block_types[i].starts_with("CrossAttn");
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..l.layers[i] {
                let ic = if j == 0 { in_c } else { out_c };
                resnets.push(Resnet::new(bvb.pp("resnets").pp(j.to_string()), ic, out_c, temb, g, eps)?);
                if cross {
                    attentions.push(Transformer2D::new(
                        bvb.pp("attentions").pp(j.to_string()),
                        out_c,
                        l.ctx,
                        l.heads[i],
                        l.tl[i],
                        g,
                        lin,
                    )?);
                }
            }
            let sampler = if i + 1 < n { Some(conv(bvb.pp("downsamplers.0.conv"), out_c, out_c, 3, 2)?) } else { None };
            down.push(Block { resnets, attentions, sampler });
        }
        let cl = *cfg.block_out_channels.last().unwrap_or(&c0);
        let mvb = vb.pp("mid_block");
        let mid = MidBlock {
            resnet0: Resnet::new(mvb.pp("resnets.0"), cl, cl, temb, g, eps)?,
            attention: Some(Transformer2D::new(
                mvb.pp("attentions.0"),
                cl,
                l.ctx,
                l.heads[n - 1],
                l.tl[n - 1],
                g,
                lin,
            )?),
            resnet1: Resnet::new(mvb.pp("resnets.1"), cl, cl, temb, g, eps)?,
        };
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
            for (j, r) in blk.resnets.iter().enumerate() {
                x = r.forward(&x, emb)?;
                if let Some(a) = blk.attentions.get(j) {
                    x = a.forward(&x, ctx)?;
                }
                res.push(x.clone());
            }
            if let Some(s) = &blk.sampler {
                x = s.forward(&x)?;
                res.push(x.clone());
            }
        }
        Ok((x, res))
    }

    pub(crate) fn mid(&self, x: &Tensor, emb: &Tensor, ctx: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.mid.resnet0.forward(x, emb)?;
        if let Some(a) = &self.mid.attention {
            x = a.forward(&x, ctx)?;
        }
        self.mid.resnet1.forward(&x, emb)
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

pub(crate) fn cross_attention_dim(cfg: &UNetConfig) -> usize {
    match &cfg.cross_attention_dim {
        OneOrMany::One(d) => *d,
        OneOrMany::Many(v) => v.first().copied().unwrap_or(0),
    }
}

/// Build a config-checked [`Encoder`] (shared with the ControlNet).
pub(crate) fn build_encoder(vb: &VarBuilder, cfg: &UNetConfig, component: &str) -> Result<Encoder> {
    let l = Layout::new(cfg)?;
    Encoder::new(vb, cfg, &l).weights(component)
}

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
                let cross = cfg.up_block_types[i].starts_with("CrossAttn");
                let num = rl[i] + 1;
                let mut resnets = Vec::new();
                let mut attentions = Vec::new();
                for j in 0..num {
                    let skip = if j == num - 1 { in_c } else { out_c };
                    let rin = if j == 0 { prev_out } else { out_c };
                    resnets.push(Resnet::new(bvb.pp("resnets").pp(j.to_string()), rin + skip, out_c, temb, g, eps)?);
                    if cross {
                        attentions.push(Transformer2D::new(
                            bvb.pp("attentions").pp(j.to_string()),
                            out_c,
                            l.ctx,
                            rh[i],
                            rtl[i],
                            g,
                            lin,
                        )?);
                    }
                }
                let sampler =
                    if i + 1 < n { Some(conv(bvb.pp("upsamplers.0.conv"), out_c, out_c, 3, 1)?) } else { None };
                up.push(Block { resnets, attentions, sampler });
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
            for (j, r) in blk.resnets.iter().enumerate() {
                let skip = res.pop().ok_or_else(|| candle_core::Error::Msg("unet: skip stack underflow".into()))?;
                x = Tensor::cat(&[&x, &skip], 1)?;
                x = r.forward(&x, &emb)?;
                if let Some(a) = blk.attentions.get(j) {
                    x = a.forward(&x, &ctx)?;
                }
            }
            if let Some(s) = &blk.sampler {
                // Upsample to the size of the next skip connection (handles odd latent sizes
                // like diffusers' `forward_upsample_size`).
                let (th, tw) = match res.last() {
                    Some(r) => (r.dim(2)?, r.dim(3)?),
                    None => (x.dim(2)? * 2, x.dim(3)? * 2),
                };
                x = s.forward(&x.upsample_nearest2d(th, tw)?)?;
            }
        }
        let x = self.conv_out.forward(&self.norm_out.forward_silu(&x)?)?;
        Ok(x)
    }
}
