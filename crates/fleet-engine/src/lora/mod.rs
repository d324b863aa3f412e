//! LoRA files fused into the base weights while a model is built.
//!
//! Formats (diffusers `loaders/lora_conversion_utils.py`, peft `tuners/lora/layer.py`):
//! * kohya: `lora_unet_<module>.lora_down.weight` / `.lora_up.weight` / `.alpha`,
//!   `lora_te1_…` / `lora_te_…` (text encoder 1), `lora_te2_…`; module names either in the
//!   diffusers layout (`down_blocks_1_attentions_0_…`) or the original SGM layout
//!   (`input_blocks_4_1_…`, `middle_block_1_…`, `output_blocks_…`, `time_embed_0`, `label_emb_0_0`,
//!   `out_2`), which kohya's sd-scripts writes for SDXL;
//! * diffusers/PEFT: `unet.<path>.lora_A.weight` (down) / `.lora_B.weight` (up), same with
//!   `text_encoder.` / `text_encoder_2.`; alphas from `<path>.alpha` tensors or the
//!   `lora_adapter_metadata` that diffusers writes into the safetensors header
//!   (`unet.lora_alpha`, `unet.r`, `unet.alpha_pattern`, `unet.rank_pattern`).
//!
//! Fused weight: `W + scale · (alpha / rank) · up @ down` (alpha defaults to rank; convs are
//! reshaped to 2-D and back). A `VarBuilder` backend ([`fuse`]) adds the deltas as the model
//! fetches its tensors, so the fused model is built in one pass without a second copy of the
//! base weights.
//!
//! The files here, one job each:
//! - [`format`]: reading kohya and diffusers/PEFT files into [`LoraFile`] (keys, alphas, checks);
//! - [`keys`]: mapping module names between layouts (SGM → diffusers, lookup keys);
//! - [`fuse`]: [`LoraSet`] and the `VarBuilder` backend that adds the updates as weights load;
//! - [`spec`]: the user-facing pieces ([`LoraSpec`], library names, [`resolve_lora`]).

mod format;
mod fuse;
mod keys;
mod spec;

pub use format::{LoraFile, LoraFormat};
pub use fuse::LoraSet;
pub use keys::sgm_to_diffusers;
pub use spec::{LIGHTNING_LORAS, LoraSpec, is_library_name, resolve_library_lora, resolve_lora};

/// Which model of the pipeline a LoRA entry changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Unet,
    TextEncoder,
    TextEncoder2,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unet => "unet",
            Self::TextEncoder => "text_encoder",
            Self::TextEncoder2 => "text_encoder_2",
        }
    }
}
