//! The one mapping from a job to an engine request.

use std::sync::Arc;

use fleet_core::validate::ControlImageSource;
use fleet_core::{ErrorCode, JobError, JobSpec, Limits};
use fleet_engine::init_image::{init_image_tensor, mask_tensor};
use fleet_engine::{ControlInput, ControlPreprocess, GenerateRequest, InitInput, Pipeline, control_image_tensor};

use crate::models::Models;

/// The engine request of one job, without its ControlNet input ([`attach_control`] adds it).
pub fn job_request(spec: &JobSpec) -> GenerateRequest {
    GenerateRequest {
        prompts: vec![spec.prompt.clone()],
        negative_prompt: spec.negative_prompt.clone(),
        steps: spec.steps as usize,
        guidance: f64::from(spec.guidance),
        width: spec.width as usize,
        height: spec.height as usize,
        seed: spec.seed.unwrap_or_default(),
        num_images: spec.num_images as usize,
        prediction_type: None,
        latents: None,
        controls: Vec::new(),
        init: None,
    }
}

/// Where a job's input image comes from, once checked: its bytes (inline in the job), or an
/// object of an allowed bucket (`limits.allowed_image_buckets`), which the caller reads with its
/// own store's endpoint and credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputImage {
    Inline(Vec<u8>),
    Object { bucket: String, key: String },
}

/// Checks a job's input image (`field`: `controlnet.image`, `init_image` or `mask_image`) against
/// the model's `limits`: inline images are decoded and checked, `s3://` ones must name a bucket in
/// `limits.allowed_image_buckets` (the dispatcher checked the same at submission; a worker checks
/// again with its own limits). Every refusal is the job's own fault.
pub fn input_image(field: &str, image: &str, limits: &Limits) -> Result<InputImage, JobError> {
    let invalid = |m: String| JobError::new(ErrorCode::InvalidSpec, format!("{field}: {m}"));
    match fleet_core::validate::parse_control_image(image, limits).map_err(invalid)? {
        ControlImageSource::Inline { bytes, .. } => Ok(InputImage::Inline(bytes)),
        ControlImageSource::S3 { bucket, key } => Ok(InputImage::Object { bucket, key }),
    }
}

/// The bytes of a job's input images, fetched by the caller (inline or from S3).
#[derive(Debug, Clone, Copy, Default)]
pub struct JobImages<'a> {
    /// `controlnet.image`.
    pub control: Option<&'a [u8]>,
    /// `init_image`.
    pub init: Option<&'a [u8]>,
    /// `mask_image`.
    pub mask: Option<&'a [u8]>,
}

impl JobImages<'_> {
    /// Whether the job has no input image to decode.
    pub fn is_empty(&self) -> bool {
        self.control.is_none() && self.init.is_none() && self.mask.is_none()
    }
}

/// Adds the job's init image (with its strength) and mask, decoded and resized to the request's
/// size. An undecodable image is the job's own fault (`invalid_spec`).
pub fn attach_init(
    spec: &JobSpec,
    init_image: &[u8],
    mask_image: Option<&[u8]>,
    request: &mut GenerateRequest,
) -> Result<(), JobError> {
    let Some(strength) = spec.effective_strength() else { return Ok(()) };
    let invalid =
        |field: &str, e: fleet_engine::EngineError| JobError::new(ErrorCode::InvalidSpec, format!("{field}: {e}"));
    let image = init_image_tensor(init_image, request.width, request.height).map_err(|e| invalid("init_image", e))?;
    let mut init = InitInput::new(image, f64::from(strength));
    if let Some(bytes) = mask_image {
        init.mask = Some(mask_tensor(bytes, request.width, request.height).map_err(|e| invalid("mask_image", e))?);
    }
    request.init = Some(init);
    Ok(())
}

/// Adds the job's ControlNet (by library name) with its control image, decoded and resized to the
/// request's size. A ControlNet that does not fit the pipeline's UNet or an undecodable image is the
/// job's own fault (`invalid_spec`). Blocking: it may load the ControlNet.
pub fn attach_control(
    models: &Models,
    spec: &JobSpec,
    pipeline: &Pipeline,
    control_image: &[u8],
    request: &mut GenerateRequest,
) -> Result<(), JobError> {
    let Some(cn) = &spec.controlnet else { return Ok(()) };
    let model = models.controlnet(&cn.model).map_err(JobError::from)?;
    model.check_fits(&pipeline.unet.config).map_err(|e| JobError::new(ErrorCode::InvalidSpec, e.to_string()))?;
    let image = control_image_tensor(control_image, request.width, request.height, ControlPreprocess::None)
        .map_err(|e| JobError::new(ErrorCode::InvalidSpec, format!("controlnet.image: {e}")))?;
    request.controls.push(ControlInput {
        model,
        image,
        scale: f64::from(cn.scale),
        start: f64::from(cn.start),
        end: f64::from(cn.end),
    });
    Ok(())
}

/// The pipeline of the job's model with its LoRA set fused in (from the cache or built now) and
/// the job's request, with its ControlNet, init image and mask where `images` holds them.
/// Blocking.
pub fn prepare(
    models: &Models,
    spec: &JobSpec,
    images: JobImages<'_>,
) -> Result<(Arc<Pipeline>, GenerateRequest), JobError> {
    let (pipeline, outcome) = models.with_loras(&spec.model, &spec.loras).map_err(JobError::from)?;
    tracing::debug!(model = %spec.model, ?outcome, "pipeline for the job's LoRA set");
    let mut request = job_request(spec);
    if let Some(bytes) = images.control {
        attach_control(models, spec, &pipeline, bytes, &mut request)?;
    }
    if let Some(bytes) = images.init {
        attach_init(spec, bytes, images.mask, &mut request)?;
    }
    Ok((pipeline, request))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_images_come_inline_or_from_an_allowed_bucket() {
        let limits = Limits { allowed_image_buckets: vec!["fleet".into(), "other".into()], ..Limits::default() };
        let own = input_image("init_image", "s3://fleet/in/a.png", &limits).unwrap();
        assert_eq!(own, InputImage::Object { bucket: "fleet".into(), key: "in/a.png".into() });
        let other = input_image("controlnet.image", "s3://other/a.png", &limits).unwrap();
        assert_eq!(other, InputImage::Object { bucket: "other".into(), key: "a.png".into() });
        let e = input_image("controlnet.image", "s3://elsewhere/a.png", &limits).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidSpec);
        assert!(e.message.starts_with("controlnet.image: ") && e.message.contains("elsewhere"), "{}", e.message);
        let e = input_image("mask_image", "not an image", &limits).unwrap_err();
        assert!(e.message.starts_with("mask_image: "), "{}", e.message);
    }

    #[test]
    fn a_job_maps_field_by_field() {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "prompt": "a red bicycle", "negative_prompt": "blur", "model": "tiny", "steps": 2,
            "guidance": 1.5, "width": 128, "height": 64, "seed": 7, "num_images": 3
        }))
        .unwrap();
        let r = job_request(&spec);
        assert_eq!(r.prompts, vec!["a red bicycle".to_string()]);
        assert_eq!(r.negative_prompt.as_deref(), Some("blur"));
        assert_eq!((r.steps, r.guidance, r.width, r.height, r.seed, r.num_images), (2, 1.5, 128, 64, 7, 3));
        assert!(r.controls.is_empty() && r.latents.is_none() && r.prediction_type.is_none());
    }
}
