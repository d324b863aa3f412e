//! `fleet generate` as one call: the CLI's flags as a struct, loading + generation + saving.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::control_image::{ControlPreprocess, control_image_tensor};
use crate::controlnet::ControlNetModel;
use crate::encode::{EncodeOptions, ImageFormat, PngCompression, save_images};
use crate::error::{EngineError, Result};
use crate::files::DEFAULT_HUB_MODEL;
use crate::lora::{LoraSpec, resolve_lora};
use crate::pipeline::{
    ControlInput, GenerateRequest, LoadOptions, ModelSource, Pipeline, Progress, Timings, default_dtype, parse_device,
    read_latents,
};
use crate::scheduler::PredictionType;

/// `fleet generate --prompt TEXT [--prompt TEXT ...] [--negative-prompt TEXT]
/// [--model tiny|DIR|HUB_ID] [--unet FILE] [--steps N] [--guidance F] [--width W]
/// [--height H] [--seed S] [--num-images N] [--latents FILE]
/// [--prediction-type epsilon|sample] [--device cpu|cuda|metal]
/// [--lora FILE_OR_NAME[:SCALE] ...] [--lora-allow-unmatched]
/// [--controlnet DIR --control-image FILE [--control-scale F] [--control-start F]
/// [--control-end F] [--control-preprocess none|canny]] --out PATH`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateCommand {
    pub prompts: Vec<String>,
    pub negative_prompt: Option<String>,
    /// `tiny`, a diffusers folder or a hub id (default `ByteDance/SDXL-Lightning`).
    pub model: String,
    pub unet: Option<PathBuf>,
    pub steps: usize,
    pub guidance: f64,
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    pub num_images: usize,
    pub latents: Option<PathBuf>,
    pub prediction_type: Option<PredictionType>,
    pub device: String,
    pub out: PathBuf,
    /// JPEG quality (1–100).
    pub quality: u8,
    /// PNG's deflate effort.
    #[serde(default)]
    pub png_compression: PngCompression,
    /// `FILE_OR_NAME[:SCALE]` (scale default 1.0), fused in order.
    pub loras: Vec<String>,
    /// Where LoRA names (not files) are looked up: `<dir>/NAME.safetensors`.
    pub lora_dir: Option<PathBuf>,
    /// Accept LoRA entries that match no module.
    pub allow_unmatched_lora: bool,
    /// A diffusers-layout ControlNet folder.
    pub controlnet: Option<PathBuf>,
    /// The conditioning image (PNG/JPEG/WebP), resized to the output size.
    pub control_image: Option<PathBuf>,
    pub control_scale: f64,
    pub control_start: f64,
    pub control_end: f64,
    pub control_preprocess: ControlPreprocess,
}

impl Default for GenerateCommand {
    fn default() -> Self {
        Self {
            prompts: vec![],
            negative_prompt: None,
            model: DEFAULT_HUB_MODEL.into(),
            unet: None,
            steps: 4,
            guidance: 0.0,
            width: 1024,
            height: 1024,
            seed: 0,
            num_images: 1,
            latents: None,
            prediction_type: None,
            device: "cpu".into(),
            out: PathBuf::from("out.png"),
            quality: 90,
            png_compression: PngCompression::default(),
            loras: Vec::new(),
            lora_dir: None,
            allow_unmatched_lora: false,
            controlnet: None,
            control_image: None,
            control_scale: 1.0,
            control_start: 0.0,
            control_end: 1.0,
            control_preprocess: ControlPreprocess::None,
        }
    }
}

/// What [`GenerateCommand::run`] did.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateReport {
    pub paths: Vec<PathBuf>,
    pub seeds: Vec<u64>,
    pub timings: Timings,
    pub load_seconds: f64,
    /// Encoding and writing the image files.
    pub save_seconds: f64,
}

impl GenerateCommand {
    /// The request part (without loading anything).
    pub fn request(&self) -> Result<GenerateRequest> {
        Ok(GenerateRequest {
            prompts: self.prompts.clone(),
            negative_prompt: self.negative_prompt.clone(),
            steps: self.steps,
            guidance: self.guidance,
            width: self.width,
            height: self.height,
            seed: self.seed,
            num_images: self.num_images,
            prediction_type: self.prediction_type,
            latents: self.latents.as_deref().map(read_latents).transpose()?,
            controls: Vec::new(),
        })
    }

    /// The `--lora` flags as files with scales.
    pub fn lora_specs(&self) -> Result<Vec<LoraSpec>> {
        self.loras
            .iter()
            .map(|l| {
                let (name, scale) = LoraSpec::parse(l)?;
                Ok(LoraSpec { path: resolve_lora(&name, self.lora_dir.as_deref())?, scale })
            })
            .collect()
    }

    /// Check the ControlNet flags and read the control image (before loading any model).
    fn control_bytes(&self) -> Result<Option<Vec<u8>>> {
        match (&self.controlnet, &self.control_image) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(EngineError::InvalidRequest("--controlnet needs --control-image FILE".into())),
            (None, Some(_)) => Err(EngineError::InvalidRequest("--control-image needs --controlnet DIR".into())),
            (Some(_), Some(img)) => std::fs::read(img).map(Some).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    EngineError::MissingFile {
                        component: "control image".into(),
                        path: img.clone(),
                        hint: String::new(),
                    }
                } else {
                    EngineError::Io { path: img.clone(), source: e }
                }
            }),
        }
    }

    /// Load the model, generate, write the images (`out`, or `<stem>_<i>.<ext>` for several).
    pub fn run(&self, progress: &mut dyn FnMut(Progress)) -> Result<GenerateReport> {
        if self.prompts.is_empty() {
            return Err(EngineError::InvalidRequest("at least one --prompt is required".into()));
        }
        ImageFormat::from_path(&self.out)?; // fail before loading a model
        let mut req = self.request()?;
        let control_bytes = self.control_bytes()?;
        // Decode the control image before loading: a bad file fails fast.
        let control_image = control_bytes
            .map(|b| control_image_tensor(&b, self.width, self.height, self.control_preprocess))
            .transpose()?;
        let device = parse_device(&self.device)?;
        let dtype = default_dtype(&device);
        let source: ModelSource = self.model.parse()?;
        let opts = LoadOptions {
            unet_override: self.unet.clone(),
            prediction_type: self.prediction_type,
            prefer_fp16_variant: None,
            loras: self.lora_specs()?,
            allow_unmatched_lora: self.allow_unmatched_lora,
        };
        let t = std::time::Instant::now();
        let pipe = Pipeline::load_with(&source, &device, dtype, &opts)?;
        if let (Some(dir), Some(image)) = (&self.controlnet, control_image) {
            let model = std::sync::Arc::new(ControlNetModel::load(dir, &device, dtype)?);
            model.check_fits(&pipe.unet.config)?;
            req.controls.push(ControlInput {
                model,
                image,
                scale: self.control_scale,
                start: self.control_start,
                end: self.control_end,
            });
        }
        let load_seconds = t.elapsed().as_secs_f64();
        let out = pipe.generate(&req, progress)?;
        let pt = req.prediction_type.unwrap_or(pipe.scheduler.prediction_type).to_string();
        let encoding = EncodeOptions { quality: self.quality, png: self.png_compression };
        let t = std::time::Instant::now();
        let paths = save_images(&self.out, &out.images, &req, &pipe.model_name, &pt, &encoding)?;
        let save_seconds = t.elapsed().as_secs_f64();
        Ok(GenerateReport { paths, seeds: out.seeds, timings: out.timings, load_seconds, save_seconds })
    }
}
