//! The `succeeded` record a stored result set stands for, and writing it (never over a record).

use chrono::{DateTime, Utc};
use fleet_core::request_record::ImageRecord;
use fleet_core::{
    ControlNetRecord, JobState, JobStatus, LoraRef, OutputSpec, Priority, Progress, RequestRecord, ValidJob,
};
use fleet_status::{CreateOutcome, StatusError, StatusStore};
use uuid::Uuid;

use super::stored::StoredResult;

/// What writing a rebuilt record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The record is written; with the job's idempotency key when `key_restored`.
    Created {
        /// The idempotency key maps to the job again.
        key_restored: bool,
        /// The key was not restored because it names this other job now (a client retried
        /// after the key was lost and got a second job).
        key_taken_by: Option<Uuid>,
    },
    /// A record of the job exists (written meanwhile): left as it is.
    AlreadyRecorded,
}

/// The record of a job known only from its images (`fleet recover`): the request from the
/// parameters embedded in image 0, model, priority and idempotency key from the objects'
/// metadata. Not kept with the images, so absent: the job's `metadata`, a JPEG's `quality`, the
/// lengths of inline input images, which worker ran it and how often. `created_at` is the time in a v7 job id (the dispatcher's), else
/// `now`; `finished_at` is `now`, when the record was rebuilt.
pub fn from_images(id: Uuid, tenant: &str, result: StoredResult, now: DateTime<Utc>) -> JobStatus {
    let StoredResult { images, params, meta } = result;
    let count = u32::try_from(images.len()).unwrap_or(u32::MAX);
    let steps = u32::try_from(params.steps).unwrap_or(u32::MAX);
    let format = images.first().map(|i| i.format).unwrap_or_default();
    let request = RequestRecord {
        prompt: params.prompt.clone(),
        negative_prompt: params.negative_prompt.clone(),
        width: u32::try_from(params.width).unwrap_or(0),
        height: u32::try_from(params.height).unwrap_or(0),
        steps,
        guidance: params.guidance as f32,
        seed: params.request.seed,
        num_images: count,
        loras: params
            .provenance
            .loras
            .iter()
            .map(|l| {
                // An image records a LoRA given by URL by its URL, without the digest.
                let scale = l.scale as f32;
                if l.name.contains("://") {
                    LoraRef { name: None, url: Some(l.name.clone()), sha256: None, scale }
                } else {
                    LoraRef::library(l.name.clone(), scale)
                }
            })
            .collect(),
        controlnet: params.provenance.controlnet.as_ref().map(|cn| ControlNetRecord {
            model: cn.model.clone(),
            image: cn.image.clone(),
            image_sha256: cn.image_sha256.clone(),
            image_bytes: None,
            scale: cn.scale as f32,
            start: cn.start as f32,
            end: cn.end as f32,
        }),
        // Image-to-image inputs by reference, as the record had them (their lengths are not kept).
        init_image: params.provenance.init.as_ref().map(|i| ImageRecord {
            image: i.image.clone(),
            image_sha256: i.image_sha256.clone(),
            image_bytes: None,
        }),
        strength: params.provenance.init.as_ref().map(|i| i.strength as f32),
        mask_image: params.provenance.init.as_ref().and_then(|i| {
            let image = i.mask.clone()?;
            Some(ImageRecord { image, image_sha256: i.mask_sha256.clone(), image_bytes: None })
        }),
        output: OutputSpec { format, quality: None },
        // Nor the webhook: a rebuilt record calls no one back.
        webhook: None,
    };
    JobStatus {
        id,
        tenant: tenant.to_owned(),
        state: JobState::Succeeded,
        model: meta.model,
        priority: if meta.priority == Priority::Bulk.as_str() { Priority::Bulk } else { Priority::Interactive },
        progress: Progress { step: steps, steps, images_done: count, images_total: count },
        // At least one execution ran; how many is not kept with the images.
        attempts: 1,
        // Neither the broker's count nor clean hand-backs are kept with the images.
        deliveries: 0,
        handbacks: 0,
        worker: None,
        created_at: created_at(id).unwrap_or(now),
        started_at: None,
        finished_at: Some(now),
        result: images,
        error: None,
        metadata: Default::default(),
        waiting_for: None,
        request: Some(request),
        retention_secs: None,
        expires_at: None,
    }
}

/// The record of a job whose message a worker holds, finished by the images it found stored:
/// everything the message says, then started and succeeded with those images.
pub fn from_message(
    job: &ValidJob,
    worker: &str,
    result: StoredResult,
    now: DateTime<Utc>,
) -> Option<Result<JobStatus, fleet_core::status::IllegalTransition>> {
    let mut status = JobStatus::queued(job, now)?;
    if let Some(created) = created_at(status.id) {
        status.created_at = created;
    }
    Some(status.start(worker, now).and_then(|()| status.succeed(result.images, now)).map(|()| status))
}

/// The creation time a UUID v7 carries.
fn created_at(id: Uuid) -> Option<DateTime<Utc>> {
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
}

/// Writes `status` as a new record with `idempotency_key` and the digest of the request it was
/// submitted with (when known), never over an existing record. When the key already names another
/// job, the record is written without it.
pub async fn write(
    store: &StatusStore,
    status: &JobStatus,
    idempotency_key: Option<&str>,
    request_digest: Option<&str>,
) -> Result<Written, StatusError> {
    match store.create_for_request(status, idempotency_key, request_digest).await? {
        CreateOutcome::Created => Ok(Written::Created { key_restored: idempotency_key.is_some(), key_taken_by: None }),
        CreateOutcome::Existing(existing) if existing.id == status.id => Ok(Written::AlreadyRecorded),
        CreateOutcome::DifferentRequest { existing } if existing == status.id => Ok(Written::AlreadyRecorded),
        // The key names another job now (a client retried after the key was lost and got a
        // second job, with the same request or another): the record is written without it.
        CreateOutcome::Existing(JobStatus { id: other, .. }) | CreateOutcome::DifferentRequest { existing: other } => {
            match store.create_for_request(status, None, request_digest).await? {
                CreateOutcome::Created => Ok(Written::Created { key_restored: false, key_taken_by: Some(other) }),
                _ => Ok(Written::AlreadyRecorded),
            }
        }
        // Without admission no limit or quota applies.
        CreateOutcome::InFlightLimit { .. } | CreateOutcome::QuotaExceeded { .. } => Ok(Written::AlreadyRecorded),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rebuilt record of an image-to-image job names its init image, strength and mask as the
    /// original record did (by reference and hash).
    #[test]
    fn a_rebuilt_record_keeps_the_init_image_strength_and_mask() {
        // A 1×1 PNG, base64.
        let inline = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";
        let spec = fleet_core::parse_job(&format!(
            r#"{{"prompt": "a harbour", "model": "tiny", "width": 64, "height": 64, "seed": 5,
                "init_image": "{inline}", "strength": 0.75, "mask_image": "s3://fleet/masks/m.png"}}"#
        ))
        .unwrap();
        let worker = fleet_core::config::WorkerConfig::default();
        let png = fleet_render::encoding::encode_job_image(&spec, &worker, 0, &image::RgbImage::new(8, 8), "epsilon")
            .unwrap();
        let params = fleet_engine::read_generation_params(&png).unwrap().unwrap();
        let meta = fleet_storage::ObjectMeta::example(Uuid::now_v7(), "e", 5);
        let status = from_images(Uuid::now_v7(), "acme", StoredResult { images: Vec::new(), params, meta }, Utc::now());
        let rebuilt = status.request.unwrap();
        let original = RequestRecord::of(&spec);
        let without_length = |r: Option<ImageRecord>| r.map(|r| ImageRecord { image_bytes: None, ..r });
        assert_eq!(rebuilt.init_image, without_length(original.init_image));
        assert_eq!(rebuilt.mask_image, without_length(original.mask_image));
        assert_eq!(rebuilt.strength, Some(0.75));
    }
}
