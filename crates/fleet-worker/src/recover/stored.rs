//! Reading one listed result set back and judging it: every object there, written by the fleet
//! for this job and index, its bytes matching the SHA-256 recorded at upload, the seeds those of
//! one execution, and images `0..num_images` all present.

use fleet_core::ImageResult;
use fleet_engine::metadata::{GenerationParams, read_generation_params};
use fleet_storage::{ImageStore, ListedSet, ObjectMeta, StorageError, StoredObject, sha256_hex};

/// A whole, consistent result set: what a `succeeded` record of the job says.
#[derive(Debug, Clone)]
pub struct StoredResult {
    /// One entry per image, by index, as a record lists them.
    pub images: Vec<ImageResult>,
    /// The generation parameters embedded in image 0 (the request, LoRAs, ControlNet).
    pub params: GenerationParams,
    /// Image 0's object metadata (model, idempotency key, priority).
    pub meta: ObjectMeta,
}

/// What the caller knows of the job already (a worker holds its message; `fleet recover` knows
/// nothing and takes both from the images).
#[derive(Debug, Clone, Copy, Default)]
pub struct Expected {
    /// Images the job makes.
    pub num_images: Option<u32>,
    /// Seed of image 0.
    pub seed: Option<u64>,
}

/// Reads the set's objects and returns its result, or why it is no whole result set of the job
/// (`Ok(Err(reason))`). Only the store failing is an error.
pub async fn read_set(
    store: &ImageStore,
    set: &ListedSet,
    expected: Expected,
) -> Result<Result<StoredResult, String>, StorageError> {
    // One after another: a job has at most a few images, and recovery is no hot path.
    let mut objects: Vec<Option<StoredObject>> = Vec::with_capacity(set.images.len());
    for image in &set.images {
        objects.push(store.get(&image.key).await?);
    }
    Ok(judge(set, objects, expected))
}

fn judge(set: &ListedSet, objects: Vec<Option<StoredObject>>, expected: Expected) -> Result<StoredResult, String> {
    let mut checked = Vec::with_capacity(objects.len());
    for (image, object) in set.images.iter().zip(objects) {
        let object = object.ok_or_else(|| format!("{} vanished while it was read", image.key))?;
        let meta = object
            .meta()
            .ok_or_else(|| format!("{} carries no fleet metadata (seed, model, job id, index)", image.key))?;
        if meta.job_id != set.job_id || meta.index != image.index {
            return Err(format!("{}: its metadata names job {} image {}", image.key, meta.job_id, meta.index));
        }
        let sha256 = sha256_hex(&object.body);
        if object.sha256().is_some_and(|recorded| recorded != sha256) {
            return Err(format!("{}: its bytes do not match the SHA-256 recorded at upload", image.key));
        }
        checked.push((image, object, meta, sha256));
    }
    let Some((_, first, first_meta, _)) = checked.first() else { return Err("no images".into()) };
    let params = read_generation_params(&first.body)
        .map_err(|e| format!("{}: {e}", set.images[0].key))?
        .ok_or_else(|| format!("{}: no generation parameters embedded", set.images[0].key))?;
    let num_images = expected.num_images.unwrap_or(u32::try_from(params.request.num_images).unwrap_or(u32::MAX));
    if !set.is_complete(num_images) {
        return Err(format!("{} of {num_images} images stored", set.images.len()));
    }
    let base = expected.seed.unwrap_or(params.request.seed);
    if let Some((image, _, meta, _)) =
        checked.iter().find(|(image, _, meta, _)| meta.seed != base.wrapping_add(u64::from(image.index)))
    {
        return Err(format!(
            "{}: seed {} is not seed {base} + {} (images of two executions)",
            image.key, meta.seed, image.index
        ));
    }
    let (width, height) = (u32::try_from(params.width).unwrap_or(0), u32::try_from(params.height).unwrap_or(0));
    let meta = first_meta.clone();
    let images = checked
        .into_iter()
        .map(|(image, object, meta, sha256)| ImageResult {
            index: image.index,
            key: image.key.clone(),
            seed: meta.seed,
            width,
            height,
            format: image.format,
            sha256,
            bytes: object.body.len() as u64,
            url: None,
            url_expires_at: None,
        })
        .collect();
    Ok(StoredResult { images, params, meta })
}
