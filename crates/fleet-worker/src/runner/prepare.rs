//! What a job runs on: whether this worker can serve it at all, and its pipeline and request
//! (through fleet-render, as every path that renders jobs builds them).

use std::sync::Arc;

use fleet_core::{ErrorCode, JobError, LoraSource};
use fleet_engine::{GenerateRequest, Pipeline};
use fleet_render::{InputImage, JobImages, ModelError, Models, job_request};

use super::{RunContext, retry};
use crate::lora_fetch::{Pinned, masked_url};

/// Reasons a job cannot run on this worker at all, before any compute.
pub(super) fn unsupported(spec: &fleet_core::JobSpec, models: &Models) -> Option<JobError> {
    if models.get(&spec.model).is_none() {
        return Some(JobError::new(
            ErrorCode::ModelUnavailable,
            format!("this worker does not serve model `{}`", spec.model),
        ));
    }
    // LoRAs given by URL are fetched in [`prepare`]; only library names are known now.
    for lora in &spec.loras {
        if let Some(LoraSource::Library(name)) = lora.source()
            && !models.has_lora(name)
        {
            return Some(JobError::new(ErrorCode::UnknownLora, ModelError::UnknownLora(name.to_owned()).to_string()));
        }
    }
    if let Some(cn) = &spec.controlnet
        && let Err(e) = models.controlnet_dir(&cn.model)
    {
        return Some(JobError::new(ErrorCode::UnknownControlnet, e.to_string()));
    }
    None
}

/// The pipeline (with the job's LoRA set fused in, from the cache or built now) and the
/// request with its ControlNet, init image and mask; building or decoding happens off the async
/// runtime. LoRAs given by URL are fetched first (unless their fused pipeline is cached) and stay
/// pinned in the LoRA cache until the fuse has read them. `Err` is the job's own fault.
pub(super) async fn prepare(
    ctx: &RunContext,
    spec: &fleet_core::JobSpec,
) -> Result<(Arc<Pipeline>, GenerateRequest), JobError> {
    // The common case — a loaded model or a cached LoRA set, no input image to decode — needs
    // no trip to the blocking pool.
    if spec.controlnet.is_none()
        && spec.init_image.is_none()
        && let Some((pipeline, outcome)) = ctx.models.ready(&spec.model, &spec.loras)
    {
        tracing::debug!(model = %spec.model, ?outcome, "pipeline for the job's LoRA set");
        return Ok((pipeline, job_request(spec)));
    }
    let control_bytes = match &spec.controlnet {
        Some(cn) => Some(image_bytes(ctx, &spec.model, "controlnet.image", &cn.image).await?),
        None => None,
    };
    let init_bytes = match &spec.init_image {
        Some(image) => Some(image_bytes(ctx, &spec.model, "init_image", image).await?),
        None => None,
    };
    let mask_bytes = match &spec.mask_image {
        Some(image) => Some(image_bytes(ctx, &spec.model, "mask_image", image).await?),
        None => None,
    };
    let pinned = fetch_url_loras(ctx, spec).await?;
    let models = ctx.models.clone();
    let spec = spec.clone();
    let built = tokio::task::spawn_blocking(move || {
        let images =
            JobImages { control: control_bytes.as_deref(), init: init_bytes.as_deref(), mask: mask_bytes.as_deref() };
        let prepared = fleet_render::prepare(&models, &spec, images);
        drop(pinned);
        prepared
    });
    match built.await {
        Ok(r) => r,
        Err(e) => Err(JobError::new(ErrorCode::Internal, format!("pipeline thread: {e}"))),
    }
}

/// The job's LoRAs given by URL, in the LoRA cache and pinned there (fetched now if not cached).
async fn fetch_url_loras(ctx: &RunContext, spec: &fleet_core::JobSpec) -> Result<Vec<Pinned>, JobError> {
    let mut pinned = Vec::new();
    for lora in &spec.loras {
        let Some(LoraSource::Url { url, sha256 }) = lora.source() else { continue };
        match ctx.lora_fetcher.fetch(url, sha256).await {
            Ok((file, outcome)) => {
                tracing::debug!(url = %masked_url(url), sha256, ?outcome, "LoRA from URL");
                pinned.push(file);
            }
            Err(e) => return Err(e.job_error(url)),
        }
    }
    Ok(pinned)
}

/// The bytes of a job's input image (`field`: `controlnet.image`, `init_image` or `mask_image`):
/// inline (already checked at intake) or an object of an allowed bucket
/// (`limits.allowed_image_buckets`), read at this worker's S3 endpoint with its credentials.
async fn image_bytes(ctx: &RunContext, model: &str, field: &str, image: &str) -> Result<Vec<u8>, JobError> {
    match fleet_render::input_image(field, image, &ctx.config.limits_for(model))? {
        InputImage::Inline(bytes) => Ok(bytes),
        InputImage::Object { bucket, key } => match retry(|| ctx.store.get_from(&bucket, &key)).await {
            Ok(Some(obj)) => Ok(obj.body),
            Ok(None) => {
                Err(JobError::new(ErrorCode::InvalidSpec, format!("{field}: s3://{bucket}/{key} does not exist")))
            }
            Err(e) => Err(JobError::new(ErrorCode::Internal, format!("{field}: {e}"))),
        },
    }
}
