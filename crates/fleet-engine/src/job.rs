//! `fleet generate` as one call: the CLI's flags as a struct, loading + generation + saving.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::encode::{ImageFormat, save_images};
use crate::error::{EngineError, Result};
use crate::files::DEFAULT_HUB_MODEL;
use crate::pipeline::{
    GenerateRequest, LoadOptions, ModelSource, Pipeline, Progress, Timings, default_dtype, parse_device, read_latents,
};
use crate::scheduler::PredictionType;

/// `fleet generate --prompt TEXT [--prompt TEXT ...] [--negative-prompt TEXT]
/// [--model tiny|DIR|HUB_ID] [--unet FILE] [--steps N] [--guidance F] [--width W]
/// [--height H] [--seed S] [--num-images N] [--latents FILE]
/// [--prediction-type epsilon|sample] [--device cpu|cuda|metal] --out PATH`
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
        })
    }

    /// Load the model, generate, write the images (`out`, or `<stem>_<i>.<ext>` for several).
    pub fn run(&self, progress: &mut dyn FnMut(Progress)) -> Result<GenerateReport> {
        if self.prompts.is_empty() {
            return Err(EngineError::InvalidRequest("at least one --prompt is required".into()));
        }
        ImageFormat::from_path(&self.out)?; // fail before loading a model
        let req = self.request()?;
        let device = parse_device(&self.device)?;
        let source: ModelSource = self.model.parse()?;
        let opts = LoadOptions {
            unet_override: self.unet.clone(),
            prediction_type: self.prediction_type,
            prefer_fp16_variant: None,
        };
        let t = std::time::Instant::now();
        let pipe = Pipeline::load_with(&source, &device, default_dtype(&device), &opts)?;
        let load_seconds = t.elapsed().as_secs_f64();
        let out = pipe.generate(&req, progress)?;
        let pt = req.prediction_type.unwrap_or(pipe.scheduler.prediction_type).to_string();
        let paths = save_images(&self.out, &out.images, &req, &pipe.model_name, &pt, self.quality)?;
        Ok(GenerateReport { paths, seeds: out.seeds, timings: out.timings, load_seconds })
    }
}
