//! What a job's status record keeps of its request, so that anyone reading the status (the
//! console, `fleet status`, the API) sees what was asked, however the job was submitted.
//!
//! The record is written once, when the record is created (the dispatcher's accept, or a worker's
//! intake of a job published straight onto the queue). Its size is bounded by validation (prompts
//! of at most `max_prompt_chars`, at most `max_loras` LoRAs); a control image is kept by
//! reference only: its S3 URI, or for an inline image the SHA-256 and length of its bytes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::job::{ControlNetSpec, JobSpec, LoraRef, OutputSpec};

/// What `controlnet.image` holds in a record when the job sent the image inline.
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
    pub output: OutputSpec,
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
            output: spec.output.clone(),
        }
    }
}

impl ControlNetRecord {
    /// The record of a job's ControlNet settings (an inline image is decoded to be hashed).
    pub fn of(cn: &ControlNetSpec) -> ControlNetRecord {
        let (image, image_sha256, image_bytes) = if cn.image.starts_with("s3://") {
            (cn.image.clone(), None, None)
        } else {
            // Validated already: the text decodes. Should it not, the record says only "inline".
            match crate::validate::decode_inline_image(&cn.image, usize::MAX) {
                Ok(bytes) => (INLINE_IMAGE.to_owned(), Some(sha256_hex(&bytes)), Some(bytes.len() as u64)),
                Err(_) => (INLINE_IMAGE.to_owned(), None, None),
            }
        };
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
