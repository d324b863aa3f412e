//! The one mapping from a job to an engine request.

use std::sync::Arc;

use fleet_core::{ErrorCode, JobError, JobSpec};
use fleet_engine::{ControlInput, ControlPreprocess, GenerateRequest, Pipeline, control_image_tensor};

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
    }
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
/// the job's request, with its ControlNet when `control_image` is given. Blocking.
pub fn prepare(
    models: &Models,
    spec: &JobSpec,
    control_image: Option<&[u8]>,
) -> Result<(Arc<Pipeline>, GenerateRequest), JobError> {
    let (pipeline, outcome) = models.with_loras(&spec.model, &spec.loras).map_err(JobError::from)?;
    tracing::debug!(model = %spec.model, ?outcome, "pipeline for the job's LoRA set");
    let mut request = job_request(spec);
    if let Some(bytes) = control_image {
        attach_control(models, spec, &pipeline, bytes, &mut request)?;
    }
    Ok((pipeline, request))
}

#[cfg(test)]
mod tests {
    use super::*;

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
