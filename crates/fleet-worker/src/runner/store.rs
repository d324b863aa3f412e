//! Storing a job's results: encode and upload its images side by side under this execution's
//! keys, then mark it succeeded (see [`crate::result_set`]).

use std::sync::atomic::Ordering;
use std::time::Instant;

use chrono::Utc;
use fleet_core::{ErrorCode, JobError, JobState};
use fleet_engine::Pipeline;
use fleet_storage::ObjectMeta;
use image::RgbImage;

use super::settle::{Outcome, log_finished, settle};
use super::{PROGRESS_EVERY, RunContext, retry};
use crate::intake::Pending;
use crate::result_set::{self, Committed};

pub(super) async fn finish(
    ctx: &RunContext,
    jobs: Vec<Pending>,
    images: Vec<RgbImage>,
    model: &str,
    pipeline: &Pipeline,
) {
    let mut images = images.into_iter();
    for mut job in jobs {
        let n = job.job.spec().num_images as usize;
        let mine: Vec<_> = images.by_ref().take(n).collect();
        let outcome = store_job(ctx, &job, mine, model, pipeline).await;
        settle(ctx, &mut job, outcome).await;
    }
}

/// What a failed upload means for the job: a store that refuses it (no such bucket, access
/// denied, a request it rejects) fails the job with the store's answer at once, since no later
/// attempt fares better until the configuration changes; a store still unreachable after the
/// retries hands the job back (and [`settle`] fails it on its last delivery).
fn storage_outcome(error: fleet_storage::StorageError) -> Outcome {
    if error.is_transient() {
        Outcome::Requeue(error.into())
    } else {
        Outcome::Fail(JobError::new(error.code(), error.to_string()))
    }
}

/// Encodes and uploads one job's images and marks it succeeded.
async fn store_job(
    ctx: &RunContext,
    job: &Pending,
    images: Vec<RgbImage>,
    model: &str,
    pipeline: &Pipeline,
) -> Outcome {
    let spec = job.job.spec();
    let id = job.id();
    // A job that started less than PROGRESS_EVERY ago was checked then: like the progress
    // reporter, notice a cancel at most that late (one Redis round trip less per short job).
    let checked_lately = job.cancel_checked.is_some_and(|at| at.elapsed() < PROGRESS_EVERY);
    let cancelled = if checked_lately { Ok(false) } else { ctx.status.is_cancel_requested(id).await };
    match cancelled {
        Ok(true) => {
            let _ = retry(|| ctx.status.update(id, |s| s.cancel(Utc::now()))).await;
            log_finished(job, JobState::Cancelled, 0);
            return Outcome::Settled;
        }
        Ok(false) => {}
        Err(e) => return Outcome::Requeue(e.into()),
    }
    let tenant = spec.tenant.clone().unwrap_or_default();
    let prediction = pipeline.scheduler.prediction_type.as_str();
    // This execution's own keys: another execution of the job (a redelivery, a duplicate
    // message) writes elsewhere, and the record's compare-and-set picks one set.
    let execution = fleet_storage::new_execution_id();
    let keys: Vec<String> = (0..images.len() as u32)
        .map(|i| fleet_storage::object_key(&ctx.config.s3.prefix, &tenant, id, &execution, i, spec.output.format))
        .collect();
    // A job's images are encoded and uploaded side by side, not one after another: an n-image job
    // waits for one PUT round trip, not n (tens of milliseconds each against a remote S3).
    let stores = images.into_iter().zip(&keys).enumerate().map(|(i, (image, key))| {
        let meta = ObjectMeta {
            seed: spec.seed.unwrap_or_default().wrapping_add(i as u64),
            model: model.to_owned(),
            job_id: id,
            index: i as u32,
            execution: execution.clone(),
            tenant: tenant.clone(),
            priority: spec.priority.as_str().to_owned(),
            images: spec.num_images,
            width: spec.width,
            height: spec.height,
            idempotency_key: spec.idempotency_key.clone(),
            request_digest: job.request_digest.clone(),
        };
        let (own_spec, config) = (spec.clone(), ctx.config.clone());
        async move {
            let encoded = tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                fleet_render::encode_job_image(&own_spec, &config.worker, i, &image, prediction)
                    .map(|b| (b, started.elapsed()))
            });
            let bytes = match encoded.await {
                Ok(Ok((bytes, took))) => {
                    ctx.stats.encode_seconds.observe_duration(took);
                    bytes
                }
                Ok(Err(e)) => return Err(Outcome::Fail(JobError::new(ErrorCode::InvalidOutput, e.to_string()))),
                Err(e) => {
                    return Err(Outcome::Fail(JobError::new(ErrorCode::Internal, format!("encoder thread: {e}"))));
                }
            };
            let upload_started = Instant::now();
            let result =
                result_set::upload(&ctx.store, key, bytes, &meta, spec.output.format).await.map_err(storage_outcome)?;
            ctx.stats.upload_seconds.observe_duration(upload_started.elapsed());
            Ok(result)
        }
    });
    // The first failure settles the job; whatever this execution stored so far is removed (no
    // record will name it).
    let results = match futures::future::try_join_all(stores).await {
        Ok(results) => results,
        Err(outcome) => {
            result_set::remove(&ctx.store, &keys).await;
            return outcome;
        }
    };
    let count = results.len();
    match result_set::commit(&ctx.status, &ctx.store, &ctx.config.s3.prefix, job.record.clone(), id, results).await {
        Ok(Committed::Won(_)) => {
            ctx.stats.jobs_done.fetch_add(1, Ordering::Relaxed);
            ctx.stats.images_done.fetch_add(count as u64, Ordering::Relaxed);
            log_finished(job, JobState::Succeeded, count);
            Outcome::Settled
        }
        // Finished by another execution, or cancelled meanwhile: the record stands, and this
        // execution's objects are gone.
        Ok(Committed::Lost(state)) => {
            tracing::info!(job = %id, %execution, record = state.as_str(), "another outcome was recorded first; this execution's images were removed");
            Outcome::Settled
        }
        Err(e) => Outcome::Requeue(e.into()),
    }
}
