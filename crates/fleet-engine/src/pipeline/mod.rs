//! The text-to-image pipeline: load once, generate many times.
//!
//! - [`load`]: where a model comes from ([`ModelSource`], [`LoadOptions`]) and building a
//!   [`Pipeline`] from files, the Hub or random weights (`Pipeline::load*`, `from_files*`,
//!   `random*`), LoRAs fused as the weights are read.
//! - [`request`]: what a caller asks for and gets back ([`GenerateRequest`], [`ControlInput`],
//!   [`Progress`], [`Timings`], the outputs) and the latents file format.
//! - [`generate`]: requests through text encoding, the denoising loop and the VAE decode
//!   (`Pipeline::generate*`, `generate_batch*`: several requests in one pass), with a tracing span
//!   per stage.
//! - `batch`: where each request's rows sit in a shared pass (guidance layout, ControlNet rows).

mod batch;
mod generate;
mod load;
mod request;

use candle_core::{DType, Device};

use crate::clip::ClipTextModel;
use crate::prompt_cache::PromptCache;
use crate::scheduler::SchedulerConfig;
use crate::tokenizer::ClipTokenizer;
use crate::unet::UNet2DConditionModel;
use crate::vae::Vae;

pub use generate::tensor_to_images;
pub(crate) use load::mmap_vb;
pub use load::{LoadOptions, ModelSource, RandomPreset, TINY_SEED, default_dtype, parse_device};
pub use request::{
    ControlInput, GenerateOutput, GenerateRequest, InitInput, Progress, PromptEmbeds, TensorOutput, Timings,
    check_strength, min_strength, read_latents,
};

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
