//! The text-to-image pipeline: load once, generate many times.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;
use serde::{Deserialize, Serialize};

use crate::clip::{ClipTextConfig, ClipTextModel};
use crate::controlnet::{ControlNetModel, controlled};
use crate::error::{CandleContext, EngineError, Result};
use crate::files::ModelFiles;
use crate::lora::{Component, LoraFile, LoraSet, LoraSpec};
use crate::prompt_cache::{CachedPrompt, PromptCache};
use crate::rng::SplitMix64;
use crate::scheduler::{EulerDiscrete, PredictionType, SchedulerConfig};
use crate::tokenizer::{ClipTokenizer, EOS_TOKEN, tiny_vocab};
use crate::unet::{AddedCond, ControlResiduals, UNet2DConditionModel, UNetConfig};
use crate::vae::{Vae, VaeConfig};

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// The built-in tiny random model (see [`Pipeline::load`]).
    Tiny,
    /// A mid-sized random SDXL-shaped model, for benchmarks (`random-medium`).
    RandomMedium,
    /// Random weights in the full SDXL-base shapes (`random-sdxl`, ~14 GB in f32), for
    /// benchmarks without a download.
    RandomSdxl,
    /// A local diffusers-layout folder.
    Dir(PathBuf),
    /// A Hugging Face Hub repository id.
    Hub(String),
}

impl std::str::FromStr for ModelSource {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(EngineError::InvalidRequest("empty model name".into()));
        }
        Ok(match s {
            "tiny" => Self::Tiny,
            "random-medium" => Self::RandomMedium,
            "random-sdxl" => Self::RandomSdxl,
            _ => {
                let p = Path::new(s);
                let looks_like_hub =
                    s.matches('/').count() == 1 && !s.starts_with('.') && !s.starts_with('/') && !p.exists();
                if looks_like_hub { Self::Hub(s.to_string()) } else { Self::Dir(p.to_path_buf()) }
            }
        })
    }
}

/// Options for [`Pipeline::load_with`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A UNet weights file replacing the model's UNet weights (e.g.
    /// `sdxl_lightning_4step_unet.safetensors`); the UNet config stays the model's. For the
    /// `ByteDance/SDXL-Lightning` hub id a bare file name selects that repository's file.
    pub unet_override: Option<PathBuf>,
    /// Overrides `scheduler/scheduler_config.json`'s prediction type.
    pub prediction_type: Option<PredictionType>,
    /// Prefer `*.fp16.safetensors` files (default: when dtype is f16).
    pub prefer_fp16_variant: Option<bool>,
    /// LoRAs fused into the weights while the model is built (UNet and text encoders).
    pub loras: Vec<LoraSpec>,
    /// Accept LoRA entries that match no module of the model (default: an error listing them).
    pub allow_unmatched_lora: bool,
}

/// One ControlNet applied to a request (several are summed, like diffusers' `MultiControlNetModel`).
#[derive(Debug, Clone)]
pub struct ControlInput {
    pub model: Arc<ControlNetModel>,
    /// [1, 3, H, W] f32 in [0, 1] at the request's size (see [`crate::control_image`]).
    pub image: Tensor,
    /// `controlnet_conditioning_scale`.
    pub scale: f64,
    /// `control_guidance_start` / `control_guidance_end`, fractions of the steps.
    pub start: f64,
    pub end: f64,
}

impl ControlInput {
    pub fn new(model: Arc<ControlNetModel>, image: Tensor) -> Self {
        Self { model, image, scale: 1.0, start: 0.0, end: 1.0 }
    }
}

/// One generation job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// One or more prompts; each yields `num_images` images.
    pub prompts: Vec<String>,
    /// Used when guidance > 1; `None` or empty means zero negative embeddings
    /// (SDXL's `force_zeros_for_empty_prompt`).
    #[serde(default)]
    pub negative_prompt: Option<String>,
    pub steps: usize,
    /// Classifier-free guidance scale; CFG runs only when > 1 (Lightning: 0).
    pub guidance: f64,
    pub width: usize,
    pub height: usize,
    /// Image `i` (prompt-major order) uses seed `seed + i`.
    pub seed: u64,
    pub num_images: usize,
    /// Overrides the model's prediction type for this request.
    #[serde(default)]
    pub prediction_type: Option<PredictionType>,
    /// Unit-variance initial noise [B, C, H/8, W/8] (f32); multiplied by the initial sigma.
    #[serde(skip)]
    pub latents: Option<Tensor>,
    /// ControlNets with their conditioning images.
    #[serde(skip)]
    pub controls: Vec<ControlInput>,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        Self {
            prompts: vec![String::new()],
            negative_prompt: None,
            steps: 4,
            guidance: 0.0,
            width: 1024,
            height: 1024,
            seed: 0,
            num_images: 1,
            prediction_type: None,
            latents: None,
            controls: Vec::new(),
        }
    }
}

impl GenerateRequest {
    pub fn new(prompt: impl Into<String>) -> Self {
        Self { prompts: vec![prompt.into()], ..Self::default() }
    }
    /// Total number of images.
    pub fn batch_size(&self) -> usize {
        self.prompts.len() * self.num_images
    }
    /// Seeds of each image, in output order.
    pub fn seeds(&self) -> Vec<u64> {
        (0..self.batch_size() as u64).map(|i| self.seed.wrapping_add(i)).collect()
    }
}

/// Per-stage wall-clock times of one call.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timings {
    pub text_encode: Duration,
    pub denoise: Duration,
    pub vae_decode: Duration,
}

impl Timings {
    pub fn total(&self) -> Duration {
        self.text_encode + self.denoise + self.vae_decode
    }
}

/// Progress report after each denoising step.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// 1-based step just finished.
    pub step: usize,
    pub total: usize,
    pub timestep: f64,
    pub elapsed: Duration,
}

/// Images of one call.
#[derive(Debug, Clone)]
pub struct GenerateOutput {
    pub images: Vec<image::RgbImage>,
    pub seeds: Vec<u64>,
    pub timings: Timings,
}

/// Images as a tensor, before quantisation.
#[derive(Debug, Clone)]
pub struct TensorOutput {
    /// [B, 3, H, W] f32 in [0, 1], on the CPU.
    pub images: Tensor,
    /// Final latents [B, C, H/8, W/8] f32 (before VAE scaling).
    pub latents: Tensor,
    pub seeds: Vec<u64>,
    pub timings: Timings,
}

/// Prompt embeddings of a batch.
#[derive(Debug, Clone)]
pub struct PromptEmbeds {
    /// [B, 77, ctx] (encoders' penultimate states concatenated).
    pub embeds: Tensor,
    /// [B, projection_dim] (encoder 2's `text_embeds`).
    pub pooled: Tensor,
}

/// An SDXL / SDXL-Lightning text-to-image pipeline.
#[derive(Debug)]
pub struct Pipeline {
    pub tokenizer: ClipTokenizer,
    pub tokenizer_2: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub text_encoder_2: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub vae: Vae,
    pub scheduler: SchedulerConfig,
    pub force_zeros_for_empty_prompt: bool,
    pub device: Device,
    pub dtype: DType,
    pub model_name: String,
    /// The LoRAs fused into this pipeline (file stem, scale), in load order.
    pub loras: Vec<(String, f64)>,
    /// LoRA entries that matched no module (only with `allow_unmatched_lora`).
    pub lora_unmatched: Vec<String>,
    /// Embeddings of recently seen prompts ([`crate::prompt_cache`]).
    pub prompt_cache: PromptCache,
}

/// Seed of the built-in tiny model's weights.
pub const TINY_SEED: u64 = 0x5D1_71A7;

/// The default dtype of a device: f32 on CPU, f16 on GPUs.
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() { DType::F32 } else { DType::F16 }
}

/// Parse `cpu`, `cuda`, `cuda:N` or `metal` into a device (GPU ones need the cargo feature).
pub fn parse_device(name: &str) -> Result<Device> {
    let err = |e: candle_core::Error| {
        EngineError::Device(format!("{name}: {e} (was the engine built with the matching cargo feature?)"))
    };
    match name {
        "cpu" => Ok(Device::Cpu),
        "metal" => Device::new_metal(0).map_err(err),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let ord = n
                .strip_prefix("cuda:")
                .map(|o| o.parse::<usize>())
                .transpose()
                .map_err(|_| EngineError::Device(format!("bad device {name:?}")))?;
            Device::new_cuda(ord.unwrap_or(0)).map_err(err)
        }
        other => Err(EngineError::Device(format!("unknown device {other:?} (cpu, cuda, cuda:N, metal)"))),
    }
}

#[allow(unsafe_code)]
fn mmap_backend(files: &[PathBuf], component: &str) -> Result<Box<dyn SimpleBackend>> {
    for f in files {
        if !f.is_file() {
            return Err(EngineError::MissingFile { component: component.into(), path: f.clone(), hint: String::new() });
        }
    }
    // SAFETY: the files are memory-mapped read-only; like every safetensors loader we rely on
    // them not being modified while the pipeline lives.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(files) }.weights(component)?;
    Ok(Box::new(st))
}

pub(crate) fn mmap_vb(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
    component: &str,
) -> Result<VarBuilder<'static>> {
    Ok(VarBuilder::from_backend(mmap_backend(files, component)?, dtype, device.clone()))
}

/// The LoRAs of a load, parsed and resolved against the UNet config.
struct Fuse {
    set: Option<LoraSet>,
    names: Vec<(String, f64)>,
}

impl Fuse {
    fn new(specs: &[LoraSpec], unet: &UNetConfig) -> Result<Self> {
        if specs.is_empty() {
            return Ok(Self { set: None, names: Vec::new() });
        }
        let files = specs.iter().map(|s| Ok((LoraFile::load(&s.path)?, s.scale))).collect::<Result<Vec<_>>>()?;
        let names = files.iter().map(|(f, s)| (f.name.clone(), *s)).collect();
        Ok(Self { set: Some(LoraSet::new(&files, unet)?), names })
    }

    /// A component's `VarBuilder`, adding the LoRA updates as tensors are fetched.
    fn vb(&self, base: Box<dyn SimpleBackend>, c: Component, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let backend = match &self.set {
            Some(set) => set.backend(c, base),
            None => base,
        };
        VarBuilder::from_backend(backend, dtype, device.clone())
    }

    /// After the build: unmatched entries are an error unless allowed.
    fn finish(&self, p: &mut Pipeline, allow_unmatched: bool) -> Result<()> {
        if let Some(set) = &self.set {
            p.lora_unmatched = set.check_unmatched(allow_unmatched)?;
        }
        p.loras = self.names.clone();
        Ok(())
    }
}

impl Pipeline {
    /// Load a pipeline. `source`: [`ModelSource::Tiny`] builds a deterministic
    /// randomly-initialised SDXL-architecture model in code (seeded, tiny vocabulary, a
    /// fraction of a second per image on a CPU; it draws noise-like pictures, not content).
    pub fn load(source: &ModelSource, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_with(source, device, dtype, &LoadOptions::default())
    }

    pub fn load_with(source: &ModelSource, device: &Device, dtype: DType, opts: &LoadOptions) -> Result<Self> {
        if device.is_cpu() && !matches!(dtype, DType::F32 | DType::F16) {
            return Err(EngineError::Device(format!(
                "{dtype:?} is not supported on the CPU (candle has no CPU {dtype:?} convolution); use f32 or a GPU device"
            )));
        }
        let prefer_fp16 = opts.prefer_fp16_variant.unwrap_or(dtype == DType::F16);
        let mut p = match source {
            ModelSource::Tiny => Self::random_with(RandomPreset::Tiny, device, dtype, opts)?,
            ModelSource::RandomMedium => Self::random_with(RandomPreset::Medium, device, dtype, opts)?,
            ModelSource::RandomSdxl => Self::random_with(RandomPreset::Sdxl, device, dtype, opts)?,
            ModelSource::Dir(dir) => {
                let files = ModelFiles::from_dir_with_unet(dir, prefer_fp16, opts.unet_override.as_deref())?;
                Self::from_files_with(&files, device, dtype, opts)?
            }
            ModelSource::Hub(id) => {
                // For ByteDance/SDXL-Lightning a bare file name picks that repository's UNet file.
                let lightning_file = if id == crate::files::LIGHTNING_REPO {
                    opts.unet_override
                        .as_ref()
                        .filter(|u| !u.exists() && u.components().count() == 1)
                        .and_then(|u| u.to_str())
                } else {
                    None
                };
                let mut files = crate::files::from_hub(id, prefer_fp16, lightning_file)?;
                if let (Some(u), None) = (&opts.unet_override, lightning_file) {
                    files.unet_weights = vec![u.clone()];
                }
                Self::from_files_with(&files, device, dtype, opts)?
            }
        };
        // The 1-step Lightning UNet (`..._x0.safetensors`) predicts x0.
        let x0_unet = opts
            .unet_override
            .as_ref()
            .and_then(|u| u.file_name())
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with("_x0.safetensors"));
        if x0_unet {
            p.scheduler.prediction_type = PredictionType::Sample;
        }
        if let Some(pt) = opts.prediction_type {
            p.scheduler.prediction_type = pt;
        }
        Ok(p)
    }

    /// Build from resolved files.
    pub fn from_files(files: &ModelFiles, device: &Device, dtype: DType) -> Result<Self> {
        Self::from_files_with(files, device, dtype, &LoadOptions::default())
    }

    /// [`Pipeline::from_files`] with LoRAs from `opts` fused in.
    pub fn from_files_with(files: &ModelFiles, device: &Device, dtype: DType, opts: &LoadOptions) -> Result<Self> {
        if device.is_cpu() {
            crate::allocator::keep_freed_memory();
        }
        let ucfg = UNetConfig::from_file(&files.unet_config)?;
        let fuse = Fuse::new(&opts.loras, &ucfg)?;
        let mut force_zeros = true;
        if let Some(mi) = &files.model_index {
            let v: serde_json::Value = crate::util::read_json(mi, "model_index")?;
            if let Some(b) = v.get("force_zeros_for_empty_prompt").and_then(|b| b.as_bool()) {
                force_zeros = b;
            }
        }
        let tokenizer = ClipTokenizer::from_dir(&files.tokenizer_dir, "tokenizer")?;
        let tokenizer_2 = ClipTokenizer::from_dir(&files.tokenizer_2_dir, "tokenizer_2")?;
        let c1: ClipTextConfig = crate::util::read_json(&files.text_encoder_config, "text_encoder")?;
        let c2: ClipTextConfig = crate::util::read_json(&files.text_encoder_2_config, "text_encoder_2")?;
        let te1 = mmap_backend(&files.text_encoder_weights, "text_encoder")?;
        let text_encoder =
            ClipTextModel::new(fuse.vb(te1, Component::TextEncoder, dtype, device), &c1, false, "text_encoder")?;
        let te2 = mmap_backend(&files.text_encoder_2_weights, "text_encoder_2")?;
        let text_encoder_2 =
            ClipTextModel::new(fuse.vb(te2, Component::TextEncoder2, dtype, device), &c2, true, "text_encoder_2")?;
        let unet_backend = mmap_backend(&files.unet_weights, "unet")?;
        let unet = UNet2DConditionModel::new(fuse.vb(unet_backend, Component::Unet, dtype, device), &ucfg)?;
        let vcfg = VaeConfig::from_file(&files.vae_config)?;
        let vae_dtype = if dtype == DType::F16 && vcfg.force_upcast { DType::F32 } else { dtype };
        let vae = Vae::new(mmap_vb(&files.vae_weights, vae_dtype, device, "vae")?, &vcfg)?;
        let scheduler = match &files.scheduler_config {
            Some(p) => SchedulerConfig::from_file(p)?,
            None => SchedulerConfig::default(),
        };
        let mut p = Self {
            tokenizer,
            tokenizer_2,
            text_encoder,
            text_encoder_2,
            unet,
            vae,
            scheduler,
            force_zeros_for_empty_prompt: force_zeros,
            device: device.clone(),
            dtype,
            model_name: files.name.clone(),
            loras: Vec::new(),
            lora_unmatched: Vec::new(),
            prompt_cache: PromptCache::default(),
        };
        p.check_consistency()?;
        fuse.finish(&mut p, opts.allow_unmatched_lora)?;
        Ok(p)
    }

    /// A deterministic random-weight model built in code.
    pub fn random(preset: RandomPreset, device: &Device, dtype: DType) -> Result<Self> {
        Self::random_with(preset, device, dtype, &LoadOptions::default())
    }

    /// [`Pipeline::random`] with LoRAs from `opts` fused in.
    pub fn random_with(preset: RandomPreset, device: &Device, dtype: DType, opts: &LoadOptions) -> Result<Self> {
        let (vocab, merges) = tiny_vocab();
        let tokenizer = ClipTokenizer::from_strings(&vocab, &merges, EOS_TOKEN, 77, "tokenizer")?;
        let tokenizer_2 = ClipTokenizer::from_strings(&vocab, &merges, "!", 77, "tokenizer_2")?;
        let v = tokenizer.vocab_size();
        let (c1, c2, ucfg, vcfg, name) = match preset {
            RandomPreset::Tiny => {
                let (c1, c2) = (ClipTextConfig::tiny1(v), ClipTextConfig::tiny2(v));
                let u = UNetConfig::tiny(c1.hidden_size + c2.hidden_size, c2.projection_dim);
                (c1, c2, u, VaeConfig::tiny(), "tiny")
            }
            RandomPreset::Medium => {
                let c1 = ClipTextConfig {
                    hidden_size: 128,
                    intermediate_size: 512,
                    num_hidden_layers: 6,
                    num_attention_heads: 4,
                    ..ClipTextConfig::tiny1(v)
                };
                let c2 = ClipTextConfig {
                    hidden_size: 256,
                    intermediate_size: 1024,
                    num_hidden_layers: 8,
                    num_attention_heads: 4,
                    projection_dim: 256,
                    ..ClipTextConfig::tiny2(v)
                };
                let u = UNetConfig::medium(c1.hidden_size + c2.hidden_size, c2.projection_dim);
                let vc = VaeConfig {
                    block_out_channels: vec![32, 64, 128, 128],
                    layers_per_block: 2,
                    norm_num_groups: 32,
                    ..VaeConfig::sdxl()
                };
                (c1, c2, u, vc, "random-medium")
            }
            RandomPreset::Sdxl => {
                let c1 = ClipTextConfig { vocab_size: v, ..ClipTextConfig::sdxl_encoder1() };
                let c2 = ClipTextConfig { vocab_size: v, ..ClipTextConfig::sdxl_encoder2() };
                let vc = VaeConfig { force_upcast: false, ..VaeConfig::sdxl() };
                (c1, c2, UNetConfig::sdxl_base(), vc, "random-sdxl")
            }
        };
        let fuse = Fuse::new(&opts.loras, &ucfg)?;
        let rb = |k: u64| -> Box<dyn SimpleBackend> {
            Box::new(crate::random::RandomBackend { seed: TINY_SEED.wrapping_add(k) })
        };
        let mut p = Self {
            text_encoder: ClipTextModel::new(
                fuse.vb(rb(1), Component::TextEncoder, dtype, device),
                &c1,
                false,
                "text_encoder",
            )?,
            text_encoder_2: ClipTextModel::new(
                fuse.vb(rb(2), Component::TextEncoder2, dtype, device),
                &c2,
                true,
                "text_encoder_2",
            )?,
            unet: UNet2DConditionModel::new(fuse.vb(rb(3), Component::Unet, dtype, device), &ucfg)?,
            vae: Vae::new(VarBuilder::from_backend(rb(4), dtype, device.clone()), &vcfg)?,
            tokenizer,
            tokenizer_2,
            scheduler: SchedulerConfig::default(),
            force_zeros_for_empty_prompt: true,
            device: device.clone(),
            dtype,
            model_name: name.into(),
            loras: Vec::new(),
            lora_unmatched: Vec::new(),
            prompt_cache: PromptCache::default(),
        };
        p.check_consistency()?;
        fuse.finish(&mut p, opts.allow_unmatched_lora)?;
        Ok(p)
    }

    fn check_consistency(&self) -> Result<()> {
        let ctx = self.text_encoder.config.hidden_size + self.text_encoder_2.config.hidden_size;
        if ctx != self.unet.cross_attention_dim() {
            return Err(EngineError::Shape {
                name: "unet cross_attention_dim".into(),
                expected: format!("{ctx} (text_encoder + text_encoder_2 hidden sizes)"),
                got: self.unet.cross_attention_dim().to_string(),
            });
        }
        if let (Some(p), Some(d)) =
            (self.unet.config.projection_class_embeddings_input_dim, self.unet.config.addition_time_embed_dim)
        {
            let want = self.text_encoder_2.config.projection_dim + 6 * d;
            if p != want {
                return Err(EngineError::Shape {
                    name: "unet projection_class_embeddings_input_dim".into(),
                    expected: format!("{want} (text_encoder_2 projection_dim + 6 × addition_time_embed_dim)"),
                    got: p.to_string(),
                });
            }
        }
        if self.unet.config.in_channels != self.vae.config.latent_channels {
            return Err(EngineError::Shape {
                name: "unet in_channels".into(),
                expected: format!("{} (vae latent_channels)", self.vae.config.latent_channels),
                got: self.unet.config.in_channels.to_string(),
            });
        }
        Ok(())
    }

    /// Latent channels and the image→latent scale (8 for SDXL).
    pub fn latent_shape(&self, width: usize, height: usize) -> (usize, usize, usize) {
        let f = self.vae.config.scale_factor();
        (self.vae.config.latent_channels, height / f, width / f)
    }

    /// Encode prompts with both encoders: penultimate states concatenated, pooled from encoder 2.
    /// Each prompt is encoded on its own and kept in [`Pipeline::prompt_cache`], so a repeated
    /// prompt costs nothing and its embedding never depends on the rest of the batch.
    pub fn encode_prompts(&self, prompts: &[String]) -> Result<PromptEmbeds> {
        let rows = prompts
            .iter()
            .map(|p| self.prompt_cache.get_or_encode(p, |p| self.encode_one(p)))
            .collect::<Result<Vec<_>>>()?;
        if let [one] = rows.as_slice() {
            return Ok(PromptEmbeds { embeds: one.embeds.clone(), pooled: one.pooled.clone() });
        }
        let embeds = rows.iter().map(|r| &r.embeds).collect::<Vec<_>>();
        let pooled = rows.iter().map(|r| &r.pooled).collect::<Vec<_>>();
        Ok(PromptEmbeds {
            embeds: Tensor::cat(&embeds, 0).ctx("prompt embeddings")?,
            pooled: Tensor::cat(&pooled, 0).ctx("pooled prompt embeddings")?,
        })
    }

    /// One prompt through both tokenizers and encoders (batch 1).
    fn encode_one(&self, prompt: &str) -> Result<CachedPrompt> {
        let o1 = self.text_encoder.forward(&[self.tokenizer.encode(prompt)])?;
        let o2 = self.text_encoder_2.forward(&[self.tokenizer_2.encode(prompt)])?;
        let embeds = Tensor::cat(&[&o1.penultimate, &o2.penultimate], 2).ctx("concat prompt embeddings")?;
        let pooled = o2.text_embeds.ok_or_else(|| EngineError::Unsupported {
            component: "text_encoder_2".into(),
            message: "no text_projection".into(),
        })?;
        Ok(CachedPrompt { embeds, pooled })
    }

    fn validate(&self, req: &GenerateRequest) -> Result<()> {
        let bad = |m: String| Err(EngineError::InvalidRequest(m));
        let f = self.vae.config.scale_factor();
        if req.prompts.is_empty() {
            return bad("at least one prompt is required".into());
        }
        if req.num_images == 0 {
            return bad("num_images must be at least 1".into());
        }
        if req.batch_size() > 256 {
            return bad(format!("{} images in one call is too many (at most 256)", req.batch_size()));
        }
        if req.width == 0 || req.height == 0 || !req.width.is_multiple_of(f) || !req.height.is_multiple_of(f) {
            return bad(format!(
                "unsupported size {}x{}: width and height must be positive multiples of {f}",
                req.width, req.height
            ));
        }
        if req.width > 8192 || req.height > 8192 {
            return bad(format!("unsupported size {}x{}: at most 8192 per side", req.width, req.height));
        }
        if req.steps == 0 || req.steps > self.scheduler.num_train_timesteps {
            return bad(format!(
                "steps must be between 1 and {}, got {}",
                self.scheduler.num_train_timesteps, req.steps
            ));
        }
        if !req.guidance.is_finite() || req.guidance < 0.0 {
            return bad(format!("guidance must be a finite number >= 0, got {}", req.guidance));
        }
        for c in &req.controls {
            let name = &c.model.name;
            if !c.scale.is_finite() {
                return bad(format!("ControlNet {name}: scale must be finite, got {}", c.scale));
            }
            if !(0.0..=1.0).contains(&c.start) || !(0.0..=1.0).contains(&c.end) || c.start >= c.end {
                return bad(format!(
                    "ControlNet {name}: start {} and end {} must satisfy 0 <= start < end <= 1",
                    c.start, c.end
                ));
            }
            let want = [1, 3, req.height, req.width];
            if c.image.dims() != want {
                return Err(EngineError::Shape {
                    name: format!("ControlNet {name} image"),
                    expected: format!("{want:?} (the output size; see control_image_tensor)"),
                    got: format!("{:?}", c.image.dims()),
                });
            }
            c.model.check_fits(&self.unet.config)?;
        }
        Ok(())
    }

    /// Summed residuals of the ControlNets active at step `i` of `n` (`None` when none is).
    #[allow(clippy::too_many_arguments)]
    fn control_residuals(
        &self,
        controls: &[(ControlInput, Tensor)],
        i: usize,
        n: usize,
        x: &Tensor,
        t: f64,
        embeds: &Tensor,
        added: &AddedCond,
    ) -> Result<Option<ControlResiduals>> {
        let mut sum: Option<ControlResiduals> = None;
        // diffusers runs inactive ControlNets with scale 0; skipping them adds the same zeros.
        for (c, cond_emb) in controls.iter().filter(|(c, _)| controlled(i, n, c.start, c.end)) {
            let r = c.model.forward_embedded(x, t, embeds, Some(added), cond_emb, c.scale)?;
            sum = Some(match sum {
                None => r,
                Some(s) => {
                    let add = |a: &Tensor, b: &Tensor| (a + b).ctx("sum control residuals");
                    let down = s.down.iter().zip(&r.down).map(|(a, b)| add(a, b)).collect::<Result<Vec<_>>>()?;
                    ControlResiduals { down, mid: add(&s.mid, &r.mid)? }
                }
            });
        }
        Ok(sum)
    }

    /// Initial unit-variance noise of a request: the user's latents or the documented RNG.
    pub fn initial_noise(&self, req: &GenerateRequest) -> Result<Tensor> {
        let (c, h, w) = self.latent_shape(req.width, req.height);
        let b = req.batch_size();
        if let Some(l) = &req.latents {
            if l.dims() != [b, c, h, w] {
                return Err(EngineError::Shape {
                    name: "latents".into(),
                    expected: format!("[{b}, {c}, {h}, {w}]"),
                    got: format!("{:?}", l.dims()),
                });
            }
            return l.to_dtype(DType::F32).and_then(|l| l.to_device(&self.device)).ctx("user latents");
        }
        let mut data = Vec::with_capacity(b * c * h * w);
        for s in req.seeds() {
            data.extend(SplitMix64::new(s).normals(c * h * w));
        }
        Tensor::from_vec(data, (b, c, h, w), &Device::Cpu).and_then(|t| t.to_device(&self.device)).ctx("initial noise")
    }

    /// Generate images as a float tensor (what the parity tests compare).
    pub fn generate_tensor(&self, req: &GenerateRequest, progress: &mut dyn FnMut(Progress)) -> Result<TensorOutput> {
        self.generate_tensor_until(req, &mut |p| {
            progress(p);
            ControlFlow::Continue(())
        })
    }

    /// Like [`Self::generate_tensor`], but `progress` may stop the run after any denoising step:
    /// `Break` ends it with [`EngineError::Cancelled`] (a worker whose job was cancelled mid-run).
    pub fn generate_tensor_until(
        &self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<TensorOutput> {
        self.validate(req)?;
        let b = req.batch_size();
        let cfg_on = req.guidance > 1.0;
        let sched = EulerDiscrete::new(
            &self.scheduler,
            req.steps,
            req.prediction_type.or(Some(self.scheduler.prediction_type)),
        )?;
        let noise = self.initial_noise(req)?;

        // Text encoding.
        let t0 = Instant::now();
        let pos = self.on_pool(|| self.encode_prompts(&req.prompts))?;
        let repeat = |t: &Tensor| -> candle_core::Result<Tensor> {
            // prompt-major: prompt p → images p·n .. p·n+n-1
            let n = req.num_images;
            if n == 1 {
                return Ok(t.clone());
            }
            let mut reps = vec![1usize; t.rank()];
            reps[0] = n;
            let rows: Vec<Tensor> =
                (0..t.dim(0)?).map(|i| t.narrow(0, i, 1)?.repeat(&reps[..])).collect::<candle_core::Result<_>>()?;
            Tensor::cat(&rows, 0)
        };
        let (embeds, pooled) = (repeat(&pos.embeds).ctx("repeat")?, repeat(&pos.pooled).ctx("repeat")?);
        let (embeds, pooled) = if cfg_on {
            let neg_text = req.negative_prompt.clone().unwrap_or_default();
            let (ne, np) = if neg_text.is_empty() && self.force_zeros_for_empty_prompt {
                (embeds.zeros_like().ctx("zeros")?, pooled.zeros_like().ctx("zeros")?)
            } else {
                let neg = self.on_pool(|| self.encode_prompts(&vec![neg_text; req.prompts.len()]))?;
                (repeat(&neg.embeds).ctx("repeat")?, repeat(&neg.pooled).ctx("repeat")?)
            };
            (Tensor::cat(&[&ne, &embeds], 0).ctx("cfg batch")?, Tensor::cat(&[&np, &pooled], 0).ctx("cfg batch")?)
        } else {
            (embeds, pooled)
        };
        // GPU kernels run asynchronously: wait for them before reading the clock.
        self.device.synchronize().ctx("sync")?;
        let text_encode = t0.elapsed();

        // Denoising.
        let t1 = Instant::now();
        let ub = if cfg_on { 2 * b } else { b };
        let (h, w) = (req.height as f32, req.width as f32);
        let time_ids = Tensor::from_vec([h, w, 0.0, 0.0, h, w].repeat(ub), (ub, 6), &self.device).ctx("time ids")?;
        let added = AddedCond { text_embeds: pooled, time_ids };
        let mut latents = (noise * sched.init_noise_sigma()).ctx("init latents")?;
        // Control images repeated to the UNet batch (both CFG halves get the image, as diffusers)
        // and through each ControlNet's conditioning embedding once: it does not change per step.
        let model_input_shape = if cfg_on { Tensor::cat(&[&latents, &latents], 0) } else { Ok(latents.clone()) };
        let model_input_shape = model_input_shape.ctx("cfg input")?;
        let controls = req
            .controls
            .iter()
            .map(|c| {
                let img = c.image.to_device(&self.device).and_then(|i| i.repeat((ub, 1, 1, 1))).ctx("control image")?;
                Ok((c.clone(), c.model.embed_condition(&img, &model_input_shape)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let total = sched.timesteps.len();
        for (i, &t) in sched.timesteps.iter().enumerate() {
            let x = if cfg_on { Tensor::cat(&[&latents, &latents], 0).ctx("cfg input")? } else { latents.clone() };
            let x = (x * sched.input_scale(i)).ctx("scale input")?;
            let out = self.on_pool(|| {
                let control = self.control_residuals(&controls, i, total, &x, t, &embeds, &added)?;
                self.unet.forward(&x, t, &embeds, Some(&added), control.as_ref())
            })?;
            let out = out.to_dtype(DType::F32).ctx("unet output")?;
            let out = if cfg_on {
                let (u, c) = (out.narrow(0, 0, b).ctx("cfg")?, out.narrow(0, b, b).ctx("cfg")?);
                (&u + ((c - &u).ctx("cfg")? * req.guidance).ctx("cfg")?).ctx("cfg")?
            } else {
                out
            };
            latents = sched.step(i, &out, &latents).ctx("scheduler step")?;
            self.device.synchronize().ctx("sync")?;
            if progress(Progress { step: i + 1, total, timestep: t, elapsed: t1.elapsed() }).is_break() {
                return Err(EngineError::Cancelled);
            }
        }
        let denoise = t1.elapsed();

        // A NaN image must never reach a caller (or S3): check both stages, naming the guilty one.
        ensure_finite(
            &latents,
            "denoising (UNet)",
            "the UNet or scheduler diverged (f16 overflow or broken weights); the image was not decoded",
        )?;
        let t2 = Instant::now();
        let images = self.on_pool(|| self.vae.decode(&latents))?.to_device(&Device::Cpu).ctx("images to cpu")?;
        ensure_finite(
            &images,
            "VAE decode",
            "the stock SDXL VAE overflows in f16: use the fp16-fix VAE or decode in f32",
        )?;
        let vae_decode = t2.elapsed();
        Ok(TensorOutput {
            images,
            latents: latents.to_device(&Device::Cpu).ctx("latents to cpu")?,
            seeds: req.seeds(),
            timings: Timings { text_encode, denoise, vae_decode },
        })
    }

    /// Runs a stage of a CPU pipeline on a rayon worker thread. Called from outside the pool,
    /// every parallel op (the kernels' loops, gemm's products) injects its work into the pool and
    /// blocks the caller until a worker is done: two thread hand-offs per op, a few hundred per
    /// UNet step. From inside, the ops split their work with the other workers directly, and the
    /// caller hands over once. GPU pipelines stay on the caller's thread (the device context is
    /// bound there).
    fn on_pool<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if !self.device.is_cpu() || rayon::current_thread_index().is_some() {
            return f();
        }
        rayon::scope(|_| f())
    }

    /// Generate RGB images.
    pub fn generate(&self, req: &GenerateRequest, progress: &mut dyn FnMut(Progress)) -> Result<GenerateOutput> {
        let out = self.generate_tensor(req, progress)?;
        Ok(GenerateOutput { images: tensor_to_images(&out.images)?, seeds: out.seeds, timings: out.timings })
    }

    /// Generate RGB images, stoppable between steps (see [`Self::generate_tensor_until`]).
    pub fn generate_until(
        &self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<GenerateOutput> {
        let out = self.generate_tensor_until(req, progress)?;
        Ok(GenerateOutput { images: tensor_to_images(&out.images)?, seeds: out.seeds, timings: out.timings })
    }
}

/// Fails with [`EngineError::NonFinite`] when `t` holds any NaN or infinity.
pub(crate) fn ensure_finite(t: &Tensor, stage: &'static str, hint: &'static str) -> Result<()> {
    let values = t.flatten_all().and_then(|v| v.to_dtype(DType::F32)).and_then(|v| v.to_vec1::<f32>()).ctx(stage)?;
    let count = values.iter().filter(|v| !v.is_finite()).count();
    if count == 0 { Ok(()) } else { Err(EngineError::NonFinite { stage, count, hint }) }
}

/// Read `--latents FILE`: a safetensors file with one float tensor `latents`
/// [batch, 4, H/8, W/8] of unit-variance noise (converted to f32).
pub fn read_latents(path: &Path) -> Result<Tensor> {
    if !path.is_file() {
        return Err(EngineError::MissingFile {
            component: "latents".into(),
            path: path.to_path_buf(),
            hint: String::new(),
        });
    }
    let mut ts = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| EngineError::Config {
        component: "latents".into(),
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let t = ts.remove("latents").ok_or_else(|| EngineError::Config {
        component: "latents".into(),
        path: path.to_path_buf(),
        message: "no tensor named `latents`".into(),
    })?;
    if t.rank() != 4 {
        return Err(EngineError::Shape {
            name: "latents".into(),
            expected: "[batch, 4, H/8, W/8]".into(),
            got: format!("{:?}", t.dims()),
        });
    }
    t.to_dtype(DType::F32).ctx("latents")
}

/// Which random model [`Pipeline::random`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RandomPreset {
    Tiny,
    Medium,
    /// SDXL-base shapes (the vocabulary is the tiny one).
    Sdxl,
}

/// [B, 3, H, W] f32 in [0, 1] → RGB images (`round(x·255)`, as diffusers' `numpy_to_pil`).
pub fn tensor_to_images(t: &Tensor) -> Result<Vec<image::RgbImage>> {
    let (b, c, h, w) = t.dims4().ctx("images")?;
    if c != 3 {
        return Err(EngineError::Shape {
            name: "images".into(),
            expected: "[B, 3, H, W]".into(),
            got: format!("{:?}", t.dims()),
        });
    }
    let data = ((t.to_dtype(DType::F32).ctx("images")?.clamp(0f32, 1f32).ctx("images")? * 255.0).ctx("images")?)
        .round()
        .and_then(|x| x.permute((0, 2, 3, 1)))
        .and_then(|x| x.flatten_all())
        .and_then(|x| x.to_vec1::<f32>())
        .ctx("images")?;
    let per = h * w * 3;
    (0..b)
        .map(|i| {
            let px: Vec<u8> = data[i * per..(i + 1) * per].iter().map(|&v| v as u8).collect();
            image::RgbImage::from_raw(w as u32, h as u32, px).ok_or_else(|| EngineError::Image("buffer size".into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Pipeline>();
        assert_send_sync::<GenerateRequest>();
        assert_send_sync::<GenerateOutput>();
    }

    #[test]
    fn seeds_are_seed_plus_index_in_prompt_major_order() {
        let r = GenerateRequest {
            prompts: vec!["a".into(), "b".into()],
            num_images: 3,
            seed: u64::MAX - 1,
            ..GenerateRequest::default()
        };
        assert_eq!(r.batch_size(), 6);
        assert_eq!(r.seeds(), vec![u64::MAX - 1, u64::MAX, 0, 1, 2, 3]);
    }
}
