//! Loading a pipeline: model sources, load options, and building the components from files,
//! the Hugging Face Hub or random weights, with LoRAs fused in as the weights are read.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use super::Pipeline;
use crate::clip::{ClipTextConfig, ClipTextModel};
use crate::error::{CandleContext, EngineError, Result};
use crate::files::ModelFiles;
use crate::lora::{Component, LoraFile, LoraSet, LoraSpec};
use crate::prompt_cache::PromptCache;
use crate::scheduler::{PredictionType, SchedulerConfig};
use crate::tokenizer::{ClipTokenizer, EOS_TOKEN, tiny_vocab};
use crate::unet::{UNet2DConditionModel, UNetConfig};
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

/// Which random model [`Pipeline::random`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RandomPreset {
    Tiny,
    Medium,
    /// SDXL-base shapes (the vocabulary is the tiny one).
    Sdxl,
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
}
