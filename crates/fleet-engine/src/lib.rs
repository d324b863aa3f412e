//! # fleet-engine
//!
//! An SDXL / SDXL-Lightning text-to-image engine on candle, checked against diffusers.
//!
//! ```no_run
//! use fleet_engine::{GenerateRequest, ModelSource, Pipeline};
//! let device = candle_core::Device::Cpu;
//! let pipe = Pipeline::load(&ModelSource::Tiny, &device, candle_core::DType::F32)?;
//! let req = GenerateRequest { width: 64, height: 64, ..GenerateRequest::new("a cat") };
//! let out = pipe.generate(&req, &mut |p| eprintln!("step {}/{}", p.step, p.total))?;
//! assert_eq!(out.images.len(), 1);
//! # Ok::<(), fleet_engine::EngineError>(())
//! ```

pub mod activation;
mod allocator;
pub mod attention;
pub mod canny;
pub mod clip;
pub mod control_image;
pub mod controlnet;
pub mod conv;
pub mod cpu_threads;
#[cfg(feature = "cuda")]
mod cuda_kernels;
#[cfg(feature = "cudnn")]
mod cudnn_conv;
pub mod encode;
pub mod error;
mod fast_math;
pub mod files;
#[cfg(feature = "cuda")]
mod group_norm_cuda;
pub mod init_image;
pub mod linear;
#[cfg(feature = "cuda")]
mod linear_cuda;
pub mod lora;
mod matmul;
pub mod metadata;
pub mod norm;
pub mod pipeline;
#[cfg(feature = "cuda")]
mod pointwise_cuda;
pub mod prompt_cache;
pub mod random;
pub mod rng;
pub mod scheduler;
pub mod tokenizer;
pub mod unet;
mod util;
pub mod vae;
pub mod vae_decoder;
pub mod vae_encoder;

pub use control_image::{ControlPreprocess, control_image_tensor};
pub use controlnet::{ControlNetConfig, ControlNetModel};
pub use encode::{EncodeOptions, ImageFormat, PngCompression, encode_image, output_paths, save_images};
pub use error::{EngineError, Result};
pub use files::ModelFiles;
pub use lora::{LoraFile, LoraSpec, resolve_library_lora, resolve_lora};
pub use metadata::{ControlNetUsed, GenerationParams, InitImageUsed, LoraUsed, Provenance, read_generation_params};
pub use pipeline::{
    ControlInput, GenerateOutput, GenerateRequest, InitInput, LoadOptions, ModelSource, Pipeline, Progress,
    PromptEmbeds, RandomPreset, TensorOutput, Timings, check_strength, default_dtype, min_strength, parse_device,
    read_latents,
};
pub use scheduler::{EulerDiscrete, PredictionType, SchedulerConfig};
pub use util::OneOrMany;

/// Re-exports for callers that build tensors (e.g. `--latents`).
pub use candle_core;
