//! CLIP text encoders as SDXL uses them (transformers `CLIPTextModel` and
//! `CLIPTextModelWithProjection`), with the checkpoint key layout of
//! `text_encoder/model.safetensors` (`text_model.embeddings.token_embedding.weight`, ...,
//! `text_projection.weight`).

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder, embedding, layer_norm, linear, linear_no_bias};
use serde::Deserialize;

use crate::error::{CandleContext, EngineError, Result};

/// The fields of a transformers `CLIPTextConfig` (`text_encoder*/config.json`) the encoder reads.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_proj")]
    pub projection_dim: usize,
    /// transformers uses the legacy "argmax of ids" EOS lookup when this is 2.
    #[serde(default = "d_eos")]
    pub eos_token_id: u32,
}
fn d_max_pos() -> usize {
    77
}
fn d_act() -> String {
    "quick_gelu".into()
}
fn d_eps() -> f64 {
    1e-5
}
fn d_proj() -> usize {
    512
}
fn d_eos() -> u32 {
    2
}

impl ClipTextConfig {
    /// `stabilityai/stable-diffusion-xl-base-1.0/text_encoder/config.json` (CLIP ViT-L/14).
    pub fn sdxl_encoder1() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            projection_dim: 768,
            eos_token_id: 2,
        }
    }
    /// `stabilityai/stable-diffusion-xl-base-1.0/text_encoder_2/config.json` (OpenCLIP ViT-bigG/14).
    pub fn sdxl_encoder2() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 1280,
            intermediate_size: 5120,
            num_hidden_layers: 32,
            num_attention_heads: 20,
            max_position_embeddings: 77,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-5,
            projection_dim: 1280,
            eos_token_id: 2,
        }
    }
    /// Built-in tiny encoder 1 (`vocab_size` from the tiny vocabulary).
    pub fn tiny1(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 16,
            intermediate_size: 37,
            num_hidden_layers: 3,
            num_attention_heads: 2,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            projection_dim: 16,
            eos_token_id: 2,
        }
    }
    /// Built-in tiny encoder 2.
    pub fn tiny2(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 16,
            intermediate_size: 64,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            max_position_embeddings: 77,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-5,
            projection_dim: 16,
            eos_token_id: 2,
        }
    }

    fn validate(&self, component: &str) -> Result<()> {
        let bad = |m: String| Err(EngineError::Unsupported { component: component.into(), message: m });
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_hidden_layers < 2 {
            return bad("SDXL needs the penultimate layer: num_hidden_layers must be >= 2".into());
        }
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return bad(format!("hidden_act {:?}", self.hidden_act));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
}

impl Attention {
    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let hd = c / self.heads;
        let scale = (hd as f64).powf(-0.5);
        let shape = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, n, self.heads, hd))?.transpose(1, 2)?.contiguous()
        };
        let q = shape((self.q.forward(x)? * scale)?)?;
        let k = shape(self.k.forward(x)?)?;
        let v = shape(self.v.forward(x)?)?;
        let dtype = q.dtype();
        let w = q.to_dtype(DType::F32)?.matmul(&k.to_dtype(DType::F32)?.t()?)?.broadcast_add(mask)?;
        let w = candle_nn::ops::softmax_last_dim(&w)?.to_dtype(dtype)?;
        let o = w.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?;
        self.o.forward(&o)
    }
}

#[derive(Debug)]
struct Layer {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    quick_gelu: bool,
}

impl Layer {
    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let h = (x + self.attn.forward(&self.ln1.forward(x)?, mask)?)?;
        let m = self.fc1.forward(&self.ln2.forward(&h)?)?;
        let m = if self.quick_gelu { (&m * candle_nn::ops::sigmoid(&(&m * 1.702)?)?)? } else { m.gelu_erf()? };
        &h + self.fc2.forward(&m)?
    }
}

/// Output of one encoder for SDXL.
#[derive(Debug)]
pub struct ClipOutput {
    /// `hidden_states[-2]`: the input of the last layer, [B, T, hidden].
    pub penultimate: Tensor,
    /// Final-layer-normed hidden state at the EOS position, [B, hidden].
    pub pooled: Tensor,
    /// `text_projection(pooled)` when the model has a projection, [B, projection_dim].
    pub text_embeds: Option<Tensor>,
}

#[derive(Debug)]
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    final_ln: LayerNorm,
    projection: Option<Linear>,
    pub config: ClipTextConfig,
    component: String,
}

impl ClipTextModel {
    /// `vb` is the checkpoint root (it holds `text_model.*` and `text_projection.*`).
    pub fn new(vb: VarBuilder, cfg: &ClipTextConfig, with_projection: bool, component: &str) -> Result<Self> {
        cfg.validate(component)?;
        let build = || -> candle_core::Result<Self> {
            // transformers ≤ 4 saves `text_model.*`; transformers 5 saves CLIPTextModel without it.
            let tm = if vb.contains_tensor("text_model.embeddings.token_embedding.weight")
                || !vb.contains_tensor("embeddings.token_embedding.weight")
            {
                vb.pp("text_model")
            } else {
                vb.clone()
            };
            let emb = tm.pp("embeddings");
            let token_embedding = embedding(cfg.vocab_size, cfg.hidden_size, emb.pp("token_embedding"))?;
            let position_embedding =
                emb.pp("position_embedding").get((cfg.max_position_embeddings, cfg.hidden_size), "weight")?;
            let h = cfg.hidden_size;
            let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
            for i in 0..cfg.num_hidden_layers {
                let l = tm.pp("encoder.layers").pp(i.to_string());
                let a = l.pp("self_attn");
                layers.push(Layer {
                    ln1: layer_norm(h, cfg.layer_norm_eps, l.pp("layer_norm1"))?,
                    attn: Attention {
                        q: linear(h, h, a.pp("q_proj"))?,
                        k: linear(h, h, a.pp("k_proj"))?,
                        v: linear(h, h, a.pp("v_proj"))?,
                        o: linear(h, h, a.pp("out_proj"))?,
                        heads: cfg.num_attention_heads,
                    },
                    ln2: layer_norm(h, cfg.layer_norm_eps, l.pp("layer_norm2"))?,
                    fc1: linear(h, cfg.intermediate_size, l.pp("mlp.fc1"))?,
                    fc2: linear(cfg.intermediate_size, h, l.pp("mlp.fc2"))?,
                    quick_gelu: cfg.hidden_act == "quick_gelu",
                });
            }
            let final_ln = layer_norm(h, cfg.layer_norm_eps, tm.pp("final_layer_norm"))?;
            let projection = if with_projection {
                Some(linear_no_bias(h, cfg.projection_dim, vb.pp("text_projection"))?)
            } else {
                None
            };
            Ok(Self {
                token_embedding,
                position_embedding,
                layers,
                final_ln,
                projection,
                config: cfg.clone(),
                component: component.to_string(),
            })
        };
        build().weights(component)
    }

    pub fn dtype(&self) -> DType {
        self.position_embedding.dtype()
    }

    pub fn device(&self) -> &Device {
        self.position_embedding.device()
    }

    /// Run the encoder on `ids` (`B` rows of `T` token ids, `T ≤ max_position_embeddings`).
    pub fn forward(&self, ids: &[Vec<u32>]) -> Result<ClipOutput> {
        let b = ids.len();
        let t = ids.first().map(|v| v.len()).unwrap_or(0);
        if b == 0 || t == 0 || t > self.config.max_position_embeddings || ids.iter().any(|v| v.len() != t) {
            return Err(EngineError::Shape {
                name: format!("{} input_ids", self.component),
                expected: format!("[B>0, 1..={}] with equal rows", self.config.max_position_embeddings),
                got: format!("{b} rows of lengths {:?}", ids.iter().map(|v| v.len()).collect::<Vec<_>>()),
            });
        }
        if let Some(bad) = ids.iter().flatten().find(|&&i| i as usize >= self.config.vocab_size) {
            return Err(EngineError::InvalidRequest(format!(
                "{}: token id {bad} outside the vocabulary ({})",
                self.component, self.config.vocab_size
            )));
        }
        // EOS position: legacy (eos_token_id == 2) argmax of the ids, else first EOS id.
        let eos_pos: Vec<usize> = ids
            .iter()
            .map(|row| {
                if self.config.eos_token_id == 2 {
                    let max = row.iter().max().copied().unwrap_or(0);
                    row.iter().position(|&i| i == max).unwrap_or(0)
                } else {
                    row.iter().position(|&i| i == self.config.eos_token_id).unwrap_or(t - 1)
                }
            })
            .collect();
        let run = || -> candle_core::Result<ClipOutput> {
            let dev = self.device();
            let flat: Vec<u32> = ids.iter().flatten().copied().collect();
            let ids_t = Tensor::from_vec(flat, (b, t), dev)?;
            let mut x =
                self.token_embedding.forward(&ids_t)?.broadcast_add(&self.position_embedding.narrow(0, 0, t)?)?;
            let mask: Vec<f32> =
                (0..t).flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
            let mask = Tensor::from_vec(mask, (1, 1, t, t), dev)?;
            let n = self.layers.len();
            let mut penultimate = None;
            for (i, layer) in self.layers.iter().enumerate() {
                if i == n - 1 {
                    penultimate = Some(x.clone());
                }
                x = layer.forward(&x, &mask)?;
            }
            let last = self.final_ln.forward(&x)?;
            let mut rows = Vec::with_capacity(b);
            for (i, &p) in eos_pos.iter().enumerate() {
                rows.push(last.i((i, p))?);
            }
            let pooled = Tensor::stack(&rows, 0)?;
            let text_embeds = match &self.projection {
                Some(p) => Some(p.forward(&pooled)?),
                None => None,
            };
            Ok(ClipOutput { penultimate: penultimate.unwrap_or(x), pooled, text_embeds })
        };
        run().ctx(&format!("{} forward", self.component))
    }
}
