//! What a job's status record keeps of its request, so that anyone reading the status (the
//! console, `fleet status`, the API) sees what was asked, however the job was submitted.
//!
//! The record is written once, when the record is created (the dispatcher's accept, or a worker's
//! intake of a job published straight onto the queue). Its size is bounded by validation (prompts
//! of at most `max_prompt_chars`, at most `max_loras` LoRAs); control, init and mask images are
//! kept by reference only: the S3 URI, or for an inline image the SHA-256 and length of its bytes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::job::{ControlNetSpec, JobSpec, LoraRef, OutputSpec};
use crate::webhook::WebhookSpec;

/// What an image field (`controlnet.image`, `init_image`, `mask_image`) holds in a record when
/// the job sent the image inline.
pub const INLINE_IMAGE: &str = "inline";

/// Hex SHA-256 of `bytes`: how records and image metadata name a control image.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The validated request of a job, as its status record keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RequestRecord {
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub guidance: f32,
    /// Seed of the first image; image i uses seed + i.
    pub seed: u64,
    pub num_images: u32,
    /// LoRAs in fusing order, with their scales.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controlnet: Option<ControlNetRecord>,
    /// Image-to-image: the init image by reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<ImageRecord>,
    /// The strength the job runs with (its own or the default), with `init_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f32>,
    /// Inpainting: the mask by reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_image: Option<ImageRecord>,
    pub output: OutputSpec,
    /// The webhook the job's events are delivered to: its own, else its tenant's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
}

/// An input image of a job (init image, mask) by reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImageRecord {
    /// `s3://bucket/key`, or `inline` for an image sent in the job (its bytes are not kept).
    pub image: String,
    /// Hex SHA-256 of an inline image's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
    /// Length of an inline image's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_bytes: Option<u64>,
}

impl ImageRecord {
    /// The record of an image field (an inline image is decoded to be hashed).
    pub fn of(image: &str) -> ImageRecord {
        let (image, image_sha256, image_bytes) = image_reference(image);
        ImageRecord { image, image_sha256, image_bytes }
    }
}

/// An image field as records keep it: the S3 URI, or `inline` with the hash and length of its
/// bytes.
fn image_reference(image: &str) -> (String, Option<String>, Option<u64>) {
    if image.starts_with("s3://") {
        return (image.to_owned(), None, None);
    }
    // Validated already: the text decodes. Should it not, the record says only "inline".
    match crate::validate::decode_inline_image(image, usize::MAX) {
        Ok(bytes) => (INLINE_IMAGE.to_owned(), Some(sha256_hex(&bytes)), Some(bytes.len() as u64)),
        Err(_) => (INLINE_IMAGE.to_owned(), None, None),
    }
}

/// A job's ControlNet settings, with its control image by reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ControlNetRecord {
    /// Library name of the ControlNet model.
    pub model: String,
    /// `s3://bucket/key`, or `inline` for an image sent in the job (its bytes are not kept).
    pub image: String,
    /// Hex SHA-256 of an inline image's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
    /// Length of an inline image's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_bytes: Option<u64>,
    pub scale: f32,
    pub start: f32,
    pub end: f32,
}

impl RequestRecord {
    /// The record of a job's request. The seed is the one the job runs with (`ValidJob::assign`
    /// gives every job one before its record is made).
    pub fn of(spec: &JobSpec) -> RequestRecord {
        RequestRecord {
            prompt: spec.prompt.clone(),
            negative_prompt: spec.negative_prompt.clone(),
            width: spec.width,
            height: spec.height,
            steps: spec.steps,
            guidance: spec.guidance,
            seed: spec.seed.unwrap_or_default(),
            num_images: spec.num_images,
            loras: spec.loras.clone(),
            controlnet: spec.controlnet.as_ref().map(ControlNetRecord::of),
            init_image: spec.init_image.as_deref().map(ImageRecord::of),
            strength: spec.effective_strength(),
            mask_image: spec.mask_image.as_deref().map(ImageRecord::of),
            output: spec.output.clone(),
            webhook: spec.webhook.clone(),
        }
    }
}

impl ControlNetRecord {
    /// The record of a job's ControlNet settings (an inline image is decoded to be hashed).
    pub fn of(cn: &ControlNetSpec) -> ControlNetRecord {
        let (image, image_sha256, image_bytes) = image_reference(&cn.image);
        ControlNetRecord {
            model: cn.model.clone(),
            image,
            image_sha256,
            image_bytes,
            scale: cn.scale,
            start: cn.start,
            end: cn.end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn with_control(image: String) -> JobSpec {
        let mut spec = JobSpec::new("edges of a cat");
        spec.controlnet = Some(ControlNetSpec { model: "canny".into(), image, scale: 0.7, start: 0.1, end: 0.9 });
        spec
    }

    #[test]
    fn an_s3_control_image_is_kept_by_its_uri() {
        let record = RequestRecord::of(&with_control("s3://controls/a.png".into()));
        let cn = record.controlnet.unwrap();
        assert_eq!((cn.image.as_str(), cn.image_sha256, cn.image_bytes), ("s3://controls/a.png", None, None));
        assert_eq!((cn.model.as_str(), cn.scale, cn.start, cn.end), ("canny", 0.7, 0.1, 0.9));
    }

    #[test]
    fn an_inline_control_image_is_kept_as_its_hash_and_length_never_its_bytes() {
        let bytes = b"\x89PNG\r\n\x1a\n not really a png, only hashed".to_vec();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let record = RequestRecord::of(&with_control(format!("data:image/png;base64,{encoded}")));
        let cn = record.controlnet.as_ref().unwrap();
        assert_eq!(cn.image, INLINE_IMAGE);
        assert_eq!(cn.image_sha256, Some(sha256_hex(&bytes)));
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(cn.image_bytes, Some(bytes.len() as u64));
        let json = serde_json::to_string(&record).unwrap();
        assert!(!json.contains(&encoded), "{json}");
    }
}
