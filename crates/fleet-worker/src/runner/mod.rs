//! Running one batch end to end: start → generate → encode → upload → succeed → ack.
//!
//! The message of a job is acked only after its images are stored and its status says
//! `succeeded` (or it failed for a reason of its own). Each execution stores its images under
//! its own execution id and the record's compare-and-set picks the one set that counts
//! ([`crate::result_set`]): at-least-once delivery leaves exactly the recorded result set.

//!
//! - [`start`]: a job's record goes to `running` (or the job turns out to need nothing);
//! - [`prepare`]: the pipeline and the engine request of a job (through fleet-render);
//! - [`generate`]: one forward pass on the engine thread, with throttled progress and cancels;
//! - [`store`]: encoding and uploading a job's images, then `succeeded`;
//! - [`settle`]: the status write and the message's ack/requeue for every other outcome;
//! - [`retry`]: transient status/storage failures retried by the fleet's backoff policy.

mod generate;
mod prepare;
pub(crate) mod retry;
mod settle;
mod start;
mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use fleet_core::{ErrorCode, FleetConfig, JobError, JobState, JobStatus};
use fleet_engine::{EngineError, GenerateRequest, Pipeline};
use fleet_render::Models;
use fleet_status::{StatusError, StatusStore};
use fleet_storage::ImageStore;

use crate::engine_thread::EngineThread;
use crate::finishing::Finishing;
use crate::intake::Pending;
use crate::lora_fetch::LoraFetcher;
use crate::metrics::{BATCH_BUCKETS, Histogram, SECONDS_BUCKETS};
use crate::noop::EngineMode;

use generate::generate;
use prepare::{prepare, unsupported};
pub use retry::Transient;
use retry::retry;
use settle::{Interruption, Outcome, log_finished, settle};
use start::begin;
use store::finish;

/// How long transient storage/status failures are retried before the job is handed back.
const TRANSIENT_BUDGET: Duration = Duration::from_secs(120);
/// Least time between two progress writes of the same batch, and from the start of generation
/// to the first: a job done sooner goes from running to succeeded with no progress write.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Everything a batch needs.
#[derive(Clone)]
pub struct RunContext {
    pub worker_id: String,
    pub config: Arc<FleetConfig>,
    pub status: Arc<StatusStore>,
    pub store: Arc<ImageStore>,
    pub models: Arc<Models>,
    pub stats: Arc<Stats>,
    /// The real pipelines, or the benchmark's no-op ([`crate::noop`]).
    pub engine: EngineMode,
    /// Jobs storing their images while the next batch runs.
    pub finishing: Finishing,
    /// Where generations run (one thread keeps the engine's per-thread GPU state).
    pub engine_thread: Arc<EngineThread>,
    /// LoRAs jobs give by URL, and their disk cache.
    pub lora_fetcher: Arc<LoraFetcher>,
}

/// Counters reported in heartbeats.
#[derive(Debug)]
pub struct Stats {
    pub jobs_done: AtomicU64,
    pub jobs_failed: AtomicU64,
    pub images_done: AtomicU64,
    /// Jobs handed back to the queue for a later attempt.
    pub jobs_requeued: AtomicU64,
    pub batches: AtomicU64,
    /// Forward passes run, and the images they made (for heartbeats).
    pub forward_passes: AtomicU64,
    pub forward_images_total: AtomicU64,
    /// Time spent in batches, in microseconds.
    pub batch_micros: AtomicU64,
    /// Jobs received and waiting for a batch.
    pub waiting: AtomicU64,
    pub model_load_micros: AtomicU64,
    /// Failed jobs by error code name.
    pub failures_by_code: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    pub batch_images: Histogram,
    /// Images per forward pass (a batch's compatible jobs share one).
    pub forward_images: Histogram,
    pub queue_wait: Histogram,
    pub step_seconds: Histogram,
    pub encode_seconds: Histogram,
    pub upload_seconds: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            jobs_done: AtomicU64::default(),
            jobs_failed: AtomicU64::default(),
            images_done: AtomicU64::default(),
            jobs_requeued: AtomicU64::default(),
            batches: AtomicU64::default(),
            forward_passes: AtomicU64::default(),
            forward_images_total: AtomicU64::default(),
            batch_micros: AtomicU64::default(),
            waiting: AtomicU64::default(),
            model_load_micros: AtomicU64::default(),
            failures_by_code: std::sync::Mutex::default(),
            batch_images: Histogram::new(BATCH_BUCKETS),
            forward_images: Histogram::new(BATCH_BUCKETS),
            queue_wait: Histogram::new(SECONDS_BUCKETS),
            step_seconds: Histogram::new(SECONDS_BUCKETS),
            encode_seconds: Histogram::new(SECONDS_BUCKETS),
            upload_seconds: Histogram::new(SECONDS_BUCKETS),
        }
    }
}

/// Runs a batch; every message in it is settled (acked, requeued or dead-lettered) on return,
/// except the successfully generated ones, whose storing goes on in [`RunContext::finishing`].
pub async fn run_batch(ctx: &RunContext, batch: Vec<Pending>) {
    ctx.stats.batches.fetch_add(1, Ordering::Relaxed);
    ctx.stats.batch_images.observe(batch.iter().map(|p| f64::from(p.job.spec().num_images)).sum());
    let mut runnable = Vec::with_capacity(batch.len());
    // The jobs' starts at once rather than one after another: a batch of n costs the status
    // store's round trip once, not n times, before generation can begin.
    let checked = Instant::now();
    let begun = futures::future::join_all(batch.iter().map(|job| begin(ctx, job))).await;
    for (mut job, begun) in batch.into_iter().zip(begun) {
        match begun {
            Ok(Some(record)) => {
                // The trace id came from the dispatcher (HTTP → AMQP header); it ties these logs to the request.
                tracing::debug!(job = %job.id(), trace_id = %job.trace_id, attempt = job.delivery_count + 1, "job started");
                job.record = Some(record);
                job.cancel_checked = Some(checked);
                runnable.push(job)
            }
            Ok(None) => job.ack().await,
            Err(reason) => {
                tracing::warn!(job = %job.id(), %reason, "cannot start job; handing it back");
                job.requeue().await;
            }
        }
    }
    if runnable.is_empty() {
        return;
    }
    generate_and_finish(ctx, runnable).await;
}

async fn generate_and_finish(ctx: &RunContext, jobs: Vec<Pending>) {
    let mut runnable = Vec::new();
    for mut job in jobs {
        match unsupported(job.job.spec(), &ctx.models) {
            Some(error) => settle(ctx, &mut job, Outcome::Fail(error)).await,
            None => runnable.push(job),
        }
    }
    if runnable.is_empty() {
        return;
    }
    // Each job's pipeline (its LoRA set fused) and request; jobs whose preparation fails settle
    // here, the others share forward passes by pipeline (one for a batch, whose jobs share a key).
    let mut passes: Vec<(Arc<Pipeline>, Vec<GenerateRequest>, Vec<Pending>)> = Vec::new();
    for mut job in runnable {
        match prepare(ctx, job.job.spec()).await {
            Ok((pipeline, request)) => match passes.iter_mut().find(|(p, r, _)| shares_pass(p, r, &pipeline, &request))
            {
                Some((_, requests, jobs)) => {
                    requests.push(request);
                    jobs.push(job);
                }
                None => passes.push((pipeline, vec![request], vec![job])),
            },
            Err(error) => settle(ctx, &mut job, Outcome::Fail(error)).await,
        }
    }
    for (pipeline, requests, jobs) in passes {
        forward_and_finish(ctx, pipeline, requests, jobs).await;
    }
}

/// Whether a prepared job can join a pass: the same pipeline, the same ControlNet models, the
/// same mode (text-to-image, image-to-image, inpainting) and the same kept steps (the engine
/// refuses anything else by name).
fn shares_pass(
    pipeline: &Arc<Pipeline>,
    requests: &[GenerateRequest],
    other: &Arc<Pipeline>,
    request: &GenerateRequest,
) -> bool {
    let same_controls = |r: &GenerateRequest| {
        r.controls.len() == request.controls.len()
            && r.controls.iter().zip(&request.controls).all(|(a, b)| Arc::ptr_eq(&a.model, &b.model))
    };
    let mode = |r: &GenerateRequest| (r.init.as_ref().map(|i| i.mask.is_some()), r.first_step());
    Arc::ptr_eq(pipeline, other) && requests.first().is_none_or(|r| same_controls(r) && mode(r) == mode(request))
}

/// One forward pass over `jobs`, then their images stored (in [`RunContext::finishing`]) or, on
/// a failure of the pass, every job settled by it.
async fn forward_and_finish(
    ctx: &RunContext,
    pipeline: Arc<Pipeline>,
    requests: Vec<GenerateRequest>,
    mut jobs: Vec<Pending>,
) {
    let model = jobs[0].job.spec().model.clone();
    let images: u32 = jobs.iter().map(|j| j.job.spec().num_images).sum();
    ctx.stats.forward_images.observe(f64::from(images));
    ctx.stats.forward_passes.fetch_add(1, Ordering::Relaxed);
    ctx.stats.forward_images_total.fetch_add(u64::from(images), Ordering::Relaxed);
    match generate(ctx, pipeline.clone(), requests, &mut jobs).await {
        Ok(images) => {
            let ctx = ctx.clone();
            let pixels = images.iter().map(|i| u64::from(i.width()) * u64::from(i.height())).sum();
            let finishing = ctx.finishing.clone();
            finishing.spawn(pixels, async move { finish(&ctx, jobs, images, &model, &pipeline).await }).await;
        }
        Err(EngineError::Cancelled) => {
            // The engine stops a pass only once every job in it was cancelled.
            for mut job in jobs {
                let id = job.id();
                let cancel = |s: &mut JobStatus| if s.state.is_terminal() { Ok(()) } else { s.cancel(Utc::now()) };
                let outcome = match retry(|| ctx.status.update(id, cancel)).await {
                    Ok(_) | Err(StatusError::Illegal(_)) => {
                        log_finished(&job, JobState::Cancelled, 0);
                        Outcome::Settled
                    }
                    Err(e) => Outcome::Requeue(e.into()),
                };
                settle(ctx, &mut job, outcome).await;
            }
        }
        Err(err) => {
            let code = classify(&err);
            let err = Arc::new(err);
            for mut job in jobs {
                let outcome = match code {
                    // Handed back; on its last allowed delivery, settle fails it with this code instead.
                    Some(code) if code.retryable() => Outcome::Requeue(Interruption::Engine(err.clone())),
                    Some(code) => Outcome::Fail(JobError::new(code, err.to_string())),
                    None => Outcome::Fail(JobError::new(ErrorCode::Internal, err.to_string())),
                };
                settle(ctx, &mut job, outcome).await;
            }
        }
    }
}

/// Maps an engine failure to the code a client sees, by the error's kind (`None`: internal).
fn classify(err: &EngineError) -> Option<ErrorCode> {
    match err {
        EngineError::OutOfMemory { .. } => Some(ErrorCode::Oom),
        EngineError::InvalidRequest(_) | EngineError::Shape { .. } => Some(ErrorCode::InvalidSpec),
        EngineError::Image(_) | EngineError::NonFinite { .. } => Some(ErrorCode::InvalidOutput),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use fleet_engine::candle_core;

    use super::*;

    #[test]
    fn engine_errors_are_classified_by_kind() {
        let oom = EngineError::OutOfMemory { context: "unet".into(), source: candle_core::Error::Msg("alloc".into()) };
        assert_eq!(classify(&oom), Some(ErrorCode::Oom));
        assert!(ErrorCode::Oom.retryable(), "an out-of-memory batch is handed back for another attempt");
        // Text that mentions memory is not the kind: only the engine decides what ran out.
        let text =
            EngineError::from_candle("unet", candle_core::Error::Msg("CUDA_ERROR_OUT_OF_MEMORY: out of memory".into()));
        assert_eq!(classify(&text), None);
        assert_eq!(classify(&EngineError::InvalidRequest("steps".into())), Some(ErrorCode::InvalidSpec));
        let nan = EngineError::NonFinite { stage: "vae", count: 1, hint: "" };
        assert_eq!(classify(&nan), Some(ErrorCode::InvalidOutput));
        assert_eq!(classify(&EngineError::Device("cuda:9".into())), None);
    }
}
