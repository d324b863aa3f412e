//! What a caller asks of a pipeline and gets back: the request, its ControlNets, progress
//! reports, timings and outputs, and the file format of user-given latents.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::controlnet::ControlNetModel;
use crate::error::{CandleContext, EngineError, Result};
use crate::scheduler::PredictionType;

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

/// The image an image-to-image or inpainting request starts from (diffusers'
/// `StableDiffusionXLImg2ImgPipeline` / `StableDiffusionXLInpaintPipeline`).
#[derive(Debug, Clone)]
pub struct InitInput {
    /// [1, 3, H, W] f32 in [0, 1] at the request's size (see [`crate::init_image`]).
    pub image: Tensor,
    /// Fraction of the schedule that runs, 0 < strength ≤ 1: the last
    /// `min(⌊steps · strength⌋, steps)` timesteps (diffusers' `get_timesteps`).
    pub strength: f64,
    /// Inpainting: [1, 1, H, W] f32, 1 = repaint and 0 = keep, binarised at the request's size
    /// (see [`crate::init_image::mask_tensor`]); `None` repaints everything (image-to-image).
    pub mask: Option<Tensor>,
}

impl InitInput {
    pub fn new(image: Tensor, strength: f64) -> Self {
        Self { image, strength, mask: None }
    }

    /// Index of the first timestep kept of a `steps`-step schedule (diffusers' `t_start`).
    pub fn first_step(&self, steps: usize) -> usize {
        steps - kept_steps(steps, self.strength)
    }
}

/// Timesteps of a `steps`-step schedule that `strength` keeps: `min(⌊steps · strength⌋, steps)`.
fn kept_steps(steps: usize, strength: f64) -> usize {
    ((steps as f64 * strength) as usize).min(steps)
}

/// Smallest strength that keeps at least one of `steps` steps: `1/steps`.
pub fn min_strength(steps: usize) -> f64 {
    1.0 / steps.max(1) as f64
}

/// [`min_strength`] rounded up to 4 decimals, for messages (a value that keeps a step).
pub(crate) fn min_strength_display(steps: usize) -> f64 {
    (min_strength(steps) * 1e4).ceil() / 1e4
}

/// Whether `strength` is usable for a `steps`-step request: 0 < strength ≤ 1 and at least one
/// step kept; else `InvalidRequest` naming the minimum for the step count. Callers check it
/// before loading a model; [`crate::Pipeline::generate`] checks it again.
pub fn check_strength(strength: f64, steps: usize) -> Result<()> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(EngineError::InvalidRequest(format!("strength must be in (0, 1], got {strength}")));
    }
    if kept_steps(steps, strength) == 0 {
        return Err(EngineError::InvalidRequest(format!(
            "strength {strength} keeps no step of {steps} (diffusers runs the last ⌊steps × strength⌋ steps): \
             use strength >= {} for {steps} steps",
            min_strength_display(steps),
        )));
    }
    Ok(())
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
    /// Image-to-image / inpainting; `None` is text-to-image.
    #[serde(skip)]
    pub init: Option<InitInput>,
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
            init: None,
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
    /// Index of the first timestep this request runs (0 without an init image).
    pub fn first_step(&self) -> usize {
        self.init.as_ref().map_or(0, |i| i.first_step(self.steps))
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

/// Read a latents file: a safetensors file with one float tensor `latents`
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
