//! Running one batch end to end: start → generate → encode → upload → succeed → ack.
//!
//! The message of a job is acked only after its images are stored and its status says
//! `succeeded` (or it failed for a reason of its own). Object keys depend only on the job id and
//! image index, so a redelivered job overwrites the same objects: at-least-once delivery leaves
//! exactly one result set.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use fleet_core::{ErrorCode, FleetConfig, ImageResult, JobError, JobState, JobStatus, Progress};
use fleet_engine::{EngineError, GenerateRequest, GenerationParams, Pipeline};
use fleet_status::{CreateOutcome, StatusError, StatusStore};
use fleet_storage::{ImageStore, ObjectMeta};
use image::RgbImage;

use crate::intake::Pending;
use crate::models::Models;

/// How long transient storage/status failures are retried before the job is handed back.
const TRANSIENT_BUDGET: Duration = Duration::from_secs(120);
/// Least time between two progress writes of the same batch.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Everything a batch needs.
pub struct RunContext {
    pub worker_id: String,
    pub config: Arc<FleetConfig>,
    pub status: Arc<StatusStore>,
    pub store: Arc<ImageStore>,
    pub models: Arc<Models>,
    pub stats: Arc<Stats>,
}

/// Counters reported in heartbeats.
#[derive(Debug, Default)]
pub struct Stats {
    pub jobs_done: AtomicU64,
    pub jobs_failed: AtomicU64,
    pub images_done: AtomicU64,
    pub batches: AtomicU64,
}

/// Why a job cannot be completed by this attempt.
enum Outcome {
    /// Done: status written, message may be acked.
    Settled,
    /// A fault of the job itself: mark failed with this error and ack.
    Fail(JobError),
    /// A fault of the environment: hand the message back for a later attempt.
    Requeue(String),
}

/// Runs a batch; every message in it is settled (acked, requeued or dead-lettered) on return.
pub async fn run_batch(ctx: &RunContext, batch: Vec<Pending>) {
    ctx.stats.batches.fetch_add(1, Ordering::Relaxed);
    let mut runnable = Vec::with_capacity(batch.len());
    for mut job in batch {
        match begin(ctx, &job).await {
            Ok(true) => {
                // The trace id came from the dispatcher (HTTP → AMQP header); it ties these logs to the request.
                tracing::info!(job = %job.id(), trace_id = %job.trace_id, attempt = job.delivery_count + 1, "job started");
                runnable.push(job)
            }
            Ok(false) => job.ack().await,
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

/// Marks the job running. `Ok(false)`: nothing to do (cancelled or already finished by an earlier
/// delivery) and the message can be acked. `Err`: the status store is unreachable.
async fn begin(ctx: &RunContext, job: &Pending) -> Result<bool, String> {
    let id = job.id();
    if retry(|| ctx.status.is_cancel_requested(id)).await.map_err(|e| e.to_string())? {
        let _ = ctx.status.update(id, |s| if s.state.is_terminal() { Ok(()) } else { s.cancel(Utc::now()) }).await;
        return Ok(false);
    }
    let worker = ctx.worker_id.clone();
    let start = |s: &mut JobStatus| {
        // A record left `running` by a worker that died is taken over: running → queued → running.
        if s.state == JobState::Running {
            s.requeue(Utc::now())?;
        }
        s.start(&worker, Utc::now())
    };
    match retry(|| ctx.status.update(id, start)).await {
        Ok(_) => Ok(true),
        Err(StatusError::Illegal(_)) => Ok(false),
        Err(StatusError::NotFound(_)) => {
            // Published straight onto the queue (or its record expired): create the record, then start.
            let Some(record) = JobStatus::queued(&job.job, Utc::now()) else { return Ok(false) };
            match retry(|| ctx.status.create(&record, None)).await {
                Ok(CreateOutcome::Created | CreateOutcome::Existing(_)) => {}
                Err(e) => return Err(e.to_string()),
            }
            retry(|| ctx.status.update(id, start)).await.map(|_| true).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The engine request of one job, exactly as `fleet generate` builds it from the same flags.
pub fn job_request(spec: &fleet_core::JobSpec) -> GenerateRequest {
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
    }
}

/// Reasons a job cannot run on this worker at all, before any compute.
fn unsupported(spec: &fleet_core::JobSpec, models: &Models) -> Option<JobError> {
    if models.get(&spec.model).is_none() {
        return Some(JobError::new(
            ErrorCode::ModelUnavailable,
            format!("this worker does not serve model `{}`", spec.model),
        ));
    }
    if let Some(lora) = spec.loras.first() {
        return Some(JobError::new(
            ErrorCode::UnknownLora,
            format!("LoRA `{}` is not in this worker's library", lora.name),
        ));
    }
    if let Some(cn) = &spec.controlnet {
        return Some(JobError::new(
            ErrorCode::UnknownControlnet,
            format!("ControlNet `{}` is not in this worker's library", cn.model),
        ));
    }
    None
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
    if runnable.len() > 1 {
        // A batch shares its model, size and steps, but each job gets its own forward pass: a
        // forward over several jobs differs from a single run by float rounding (≈1e-4 on CPU),
        // which flips some 8-bit pixels, and a job must give the same pixels as `fleet generate`.
        for job in runnable {
            Box::pin(generate_and_finish(ctx, vec![job])).await;
        }
        return;
    }
    let model = runnable[0].job.spec().model.clone();
    let Some(pipeline) = ctx.models.get(&model) else { return };
    let request = job_request(runnable[0].job.spec());
    match generate(ctx, pipeline.clone(), request, &runnable).await {
        Ok(images) => finish(ctx, runnable, images, &model, &pipeline).await,
        Err(err) => {
            let Some(mut job) = runnable.into_iter().next() else { return };
            let outcome = match classify(&err) {
                Some(code) if code.retryable() && job.delivery_count < ctx.config.rabbitmq.delivery_limit => {
                    Outcome::Requeue(err.to_string())
                }
                Some(code) => Outcome::Fail(JobError::new(code, err.to_string())),
                None => Outcome::Fail(JobError::new(ErrorCode::Internal, err.to_string())),
            };
            settle(ctx, &mut job, outcome).await;
        }
    }
}

/// Maps an engine failure to the code a client sees.
fn classify(err: &EngineError) -> Option<ErrorCode> {
    let text = err.to_string().to_lowercase();
    if text.contains("out of memory") || text.contains("cuda_error_out_of_memory") {
        return Some(ErrorCode::Oom);
    }
    match err {
        EngineError::InvalidRequest(_) | EngineError::Shape { .. } => Some(ErrorCode::InvalidSpec),
        EngineError::Image(_) => Some(ErrorCode::InvalidOutput),
        _ => None,
    }
}

/// Runs the engine off the async runtime, writing throttled progress for every job of the batch.
async fn generate(
    ctx: &RunContext,
    pipeline: Arc<Pipeline>,
    request: GenerateRequest,
    jobs: &[Pending],
) -> Result<Vec<RgbImage>, EngineError> {
    let (tx, mut rx) = tokio::sync::watch::channel((0usize, request.steps));
    let work = tokio::task::spawn_blocking(move || {
        pipeline.generate(&request, &mut |p| {
            // A closed receiver only means progress is no longer wanted.
            let _ = tx.send((p.step, p.total));
        })
    });
    let status = ctx.status.clone();
    let ids: Vec<(uuid::Uuid, u32)> = jobs.iter().map(|j| (j.id(), j.job.spec().num_images)).collect();
    let reporter = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let (step, steps) = *rx.borrow_and_update();
            for (id, images_total) in &ids {
                let progress =
                    Progress { step: step as u32, steps: steps as u32, images_done: 0, images_total: *images_total };
                if let Err(e) = status.set_progress(*id, progress).await {
                    tracing::debug!(job = %id, error = %e, "progress not recorded");
                }
            }
            tokio::time::sleep(PROGRESS_EVERY).await;
        }
    });
    let result = work.await;
    let _ = reporter.await;
    match result {
        Ok(Ok(out)) => Ok(out.images),
        Ok(Err(e)) => Err(e),
        Err(join) => Err(EngineError::Device(format!("generation thread failed: {join}"))),
    }
}

async fn finish(ctx: &RunContext, jobs: Vec<Pending>, images: Vec<RgbImage>, model: &str, pipeline: &Pipeline) {
    let mut images = images.into_iter();
    for mut job in jobs {
        let n = job.job.spec().num_images as usize;
        let mine: Vec<_> = images.by_ref().take(n).collect();
        let outcome = store_job(ctx, &job, mine, model, pipeline).await;
        settle(ctx, &mut job, outcome).await;
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
    match ctx.status.is_cancel_requested(id).await {
        Ok(true) => {
            let _ = retry(|| ctx.status.update(id, |s| s.cancel(Utc::now()))).await;
            return Outcome::Settled;
        }
        Ok(false) => {}
        Err(e) => return Outcome::Requeue(e.to_string()),
    }
    let format = engine_format(spec.output.format);
    let quality = spec.output.quality.unwrap_or(90);
    let tenant = spec.tenant.clone().unwrap_or_default();
    let prediction = pipeline.scheduler.prediction_type.as_str();
    // The parameters embedded in each image are this job's alone (as `fleet generate` would write
    // them), never the batch's: a batch mixes tenants.
    let own_request = job_request(spec);
    let mut results = Vec::with_capacity(images.len());
    for (i, image) in images.into_iter().enumerate() {
        let params = GenerationParams::for_image(&own_request, i, model, prediction);
        let bytes = match tokio::task::spawn_blocking(move || {
            fleet_engine::encode_image(&image, format, quality, Some(&params))
        })
        .await
        {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => return Outcome::Fail(JobError::new(ErrorCode::InvalidOutput, e.to_string())),
            Err(e) => return Outcome::Fail(JobError::new(ErrorCode::Internal, format!("encoder thread: {e}"))),
        };
        let index = i as u32;
        let seed = spec.seed.unwrap_or_default().wrapping_add(u64::from(index));
        let key = fleet_storage::object_key(&ctx.config.s3.prefix, &tenant, id, index, spec.output.format);
        let meta = ObjectMeta { seed, model: model.to_owned(), job_id: id, index };
        let content_type = spec.output.format.content_type();
        let stored = match retry(|| ctx.store.put(&key, bytes.clone(), content_type, &meta)).await {
            Ok(stored) => stored,
            Err(e) => return Outcome::Requeue(format!("storage: {e}")),
        };
        results.push(ImageResult {
            index,
            key: stored.key,
            seed,
            width: spec.width,
            height: spec.height,
            format: spec.output.format,
            sha256: stored.sha256,
            bytes: stored.bytes,
        });
    }
    let count = results.len() as u64;
    match retry(|| ctx.status.update(id, |s| s.succeed(results.clone(), Utc::now()))).await {
        Ok(_) => {
            ctx.stats.jobs_done.fetch_add(1, Ordering::Relaxed);
            ctx.stats.images_done.fetch_add(count, Ordering::Relaxed);
            Outcome::Settled
        }
        // Cancelled meanwhile (or finished by another delivery): the objects are harmless, the state stands.
        Err(StatusError::Illegal(_)) => Outcome::Settled,
        Err(e) => Outcome::Requeue(format!("status: {e}")),
    }
}

/// The engine's image format for a job's output format.
pub fn engine_format(format: fleet_core::ImageFormat) -> fleet_engine::ImageFormat {
    match format {
        fleet_core::ImageFormat::Png => fleet_engine::ImageFormat::Png,
        fleet_core::ImageFormat::Jpeg => fleet_engine::ImageFormat::Jpeg,
        fleet_core::ImageFormat::Webp => fleet_engine::ImageFormat::WebP,
    }
}

/// Writes the outcome to the status record and settles the message accordingly.
async fn settle(ctx: &RunContext, job: &mut Pending, outcome: Outcome) {
    let id = job.id();
    tracing::debug!(job = %id, trace_id = %job.trace_id, "settling");
    match outcome {
        Outcome::Settled => job.ack().await,
        Outcome::Fail(error) => {
            tracing::warn!(job = %id, code = %error.code, message = %error.message, "job failed");
            ctx.stats.jobs_failed.fetch_add(1, Ordering::Relaxed);
            match retry(|| ctx.status.update(id, |s| s.fail(error.clone(), Utc::now()))).await {
                Ok(_) | Err(StatusError::Illegal(_)) => job.ack().await,
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "failure not recorded; handing the job back");
                    job.requeue().await;
                }
            }
        }
        Outcome::Requeue(reason) => {
            tracing::warn!(job = %id, %reason, "handing the job back for a later attempt");
            let _ = ctx
                .status
                .update(id, |s| if s.state == JobState::Running { s.requeue(Utc::now()) } else { Ok(()) })
                .await;
            job.requeue().await;
        }
    }
}

/// Retries an operation while its error is transient, with backoff, for at most [`TRANSIENT_BUDGET`].
async fn retry<T, E, F, Fut>(mut op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Transient + std::fmt::Display,
{
    let started = Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && started.elapsed() + delay < TRANSIENT_BUDGET => {
                tracing::debug!(error = %e, ?delay, "transient failure; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Errors worth retrying.
pub trait Transient {
    fn is_transient(&self) -> bool;
}

impl Transient for StatusError {
    fn is_transient(&self) -> bool {
        matches!(self, StatusError::Unavailable { .. } | StatusError::Conflict(_))
    }
}

impl Transient for fleet_storage::StorageError {
    fn is_transient(&self) -> bool {
        fleet_storage::StorageError::is_transient(self)
    }
}
