//! Running one batch end to end: start → generate → encode → upload → succeed → ack.
//!
//! The message of a job is acked only after its images are stored and its status says
//! `succeeded` (or it failed for a reason of its own). Object keys depend only on the job id and
//! image index, so a redelivered job overwrites the same objects: at-least-once delivery leaves
//! exactly one result set.

use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use fleet_core::{ErrorCode, FleetConfig, ImageResult, JobError, JobState, JobStatus, Progress};
use fleet_engine::{EncodeOptions, EngineError, GenerateRequest, GenerationParams, Pipeline, PngCompression};
use fleet_status::{CreateOutcome, StatusError, StatusStore, Versioned};
use fleet_storage::{ImageStore, ObjectMeta};
use image::RgbImage;

use crate::engine_thread::EngineThread;
use crate::finishing::Finishing;
use crate::intake::Pending;
use crate::metrics::{BATCH_BUCKETS, Histogram, SECONDS_BUCKETS};
use crate::models::{ModelError, Models};
use crate::noop::EngineMode;
use fleet_core::validate::ControlImageSource;

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
    /// Time spent in batches, in microseconds.
    pub batch_micros: AtomicU64,
    /// Jobs received and waiting for a batch.
    pub waiting: AtomicU64,
    pub model_load_micros: AtomicU64,
    /// Failed jobs by error code name.
    pub failures_by_code: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    pub batch_images: Histogram,
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
            batch_micros: AtomicU64::default(),
            waiting: AtomicU64::default(),
            model_load_micros: AtomicU64::default(),
            failures_by_code: std::sync::Mutex::default(),
            batch_images: Histogram::new(BATCH_BUCKETS),
            queue_wait: Histogram::new(SECONDS_BUCKETS),
            step_seconds: Histogram::new(SECONDS_BUCKETS),
            encode_seconds: Histogram::new(SECONDS_BUCKETS),
            upload_seconds: Histogram::new(SECONDS_BUCKETS),
        }
    }
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
                tracing::info!(job = %job.id(), trace_id = %job.trace_id, attempt = job.delivery_count + 1, "job started");
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

/// Marks the job running and returns its record as written. `Ok(None)`: nothing to do (cancelled
/// or already finished by an earlier delivery) and the message can be acked. `Err`: the status
/// store is unreachable.
async fn begin(ctx: &RunContext, job: &Pending) -> Result<Option<Versioned>, String> {
    let id = job.id();
    // The record and the cancel flag in one round trip; the start below writes from that record.
    let (record, cancelled) = retry(|| ctx.status.read_with_cancel_flag(id)).await.map_err(|e| e.to_string())?;
    if cancelled {
        let _ = ctx.status.update(id, |s| if s.state.is_terminal() { Ok(()) } else { s.cancel(Utc::now()) }).await;
        return Ok(None);
    }
    let worker = ctx.worker_id.clone();
    let start = |s: &mut JobStatus| {
        // A record left `running` by a worker that died is taken over: running → queued → running.
        if s.state == JobState::Running {
            s.requeue(Utc::now())?;
        }
        s.start(&worker, Utc::now())
    };
    let started = match record {
        Some(record) => retry(|| ctx.status.update_from(id, Some(record.clone()), start)).await,
        None => Err(StatusError::NotFound(id)),
    };
    match started {
        Ok(record) => {
            ctx.stats.queue_wait.observe((Utc::now() - record.status.created_at).as_seconds_f64());
            Ok(Some(record))
        }
        Err(StatusError::Illegal(_)) => Ok(None),
        Err(StatusError::NotFound(_)) => {
            // Published straight onto the queue (or its record expired): create the record, then start.
            let Some(queued) = JobStatus::queued(&job.job, Utc::now()) else { return Ok(None) };
            match retry(|| ctx.status.create(&queued, None)).await {
                // (`create` sets no in-flight limit, so it never answers InFlightLimit)
                Ok(CreateOutcome::Created | CreateOutcome::Existing(_) | CreateOutcome::InFlightLimit { .. }) => {}
                Err(e) => return Err(e.to_string()),
            }
            retry(|| ctx.status.update_from(id, None, start)).await.map(Some).map_err(|e| e.to_string())
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
        controls: Vec::new(),
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
    for lora in &spec.loras {
        if !models.has_lora(&lora.name) {
            return Some(JobError::new(ErrorCode::UnknownLora, ModelError::UnknownLora(lora.name.clone()).to_string()));
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
/// request with its ControlNet; building or decoding happens off the async runtime. `Err` is the
/// job's own fault.
async fn prepare(ctx: &RunContext, spec: &fleet_core::JobSpec) -> Result<(Arc<Pipeline>, GenerateRequest), JobError> {
    let mut request = job_request(spec);
    // The common case — a loaded model or a cached LoRA set, no control image to decode — needs
    // no trip to the blocking pool.
    if spec.controlnet.is_none()
        && let Some((pipeline, outcome)) = ctx.models.ready(&spec.model, &spec.loras)
    {
        tracing::debug!(model = %spec.model, ?outcome, "pipeline for the job's LoRA set");
        return Ok((pipeline, request));
    }
    let control_bytes = match &spec.controlnet {
        Some(cn) => Some(control_image_bytes(ctx, &spec.model, &cn.image).await?),
        None => None,
    };
    let models = ctx.models.clone();
    let spec = spec.clone();
    let built = tokio::task::spawn_blocking(move || -> Result<_, JobError> {
        let (pipeline, outcome) = models.with_loras(&spec.model, &spec.loras).map_err(model_job_error)?;
        tracing::debug!(model = %spec.model, ?outcome, "pipeline for the job's LoRA set");
        if let (Some(cn), Some(bytes)) = (&spec.controlnet, control_bytes) {
            let model = models.controlnet(&cn.model).map_err(model_job_error)?;
            model
                .check_fits(&pipeline.unet.config)
                .map_err(|e| JobError::new(ErrorCode::InvalidSpec, e.to_string()))?;
            let image = fleet_engine::control_image_tensor(
                &bytes,
                request.width,
                request.height,
                fleet_engine::ControlPreprocess::None,
            )
            .map_err(|e| JobError::new(ErrorCode::InvalidSpec, format!("controlnet.image: {e}")))?;
            request.controls.push(fleet_engine::ControlInput {
                model,
                image,
                scale: f64::from(cn.scale),
                start: f64::from(cn.start),
                end: f64::from(cn.end),
            });
        }
        Ok((pipeline, request))
    });
    match built.await {
        Ok(r) => r,
        Err(e) => Err(JobError::new(ErrorCode::Internal, format!("pipeline thread: {e}"))),
    }
}

fn model_job_error(e: ModelError) -> JobError {
    match e {
        ModelError::UnknownLora(_) => JobError::new(ErrorCode::UnknownLora, e.to_string()),
        ModelError::UnknownControlNet(_) => JobError::new(ErrorCode::UnknownControlnet, e.to_string()),
        ModelError::NotConfigured(_) => JobError::new(ErrorCode::ModelUnavailable, e.to_string()),
        // A LoRA that does not fit the model (unmatched keys, rank or shape mismatch, bad file)
        // is the job's choice of LoRA: invalid for this model.
        ModelError::Engine { source: EngineError::Lora { .. } | EngineError::LoraUnmatched { .. }, .. }
        | ModelError::Engine { source: EngineError::ControlNet { .. }, .. } => {
            JobError::new(ErrorCode::InvalidSpec, e.to_string())
        }
        ModelError::Engine { .. } => JobError::new(ErrorCode::Internal, e.to_string()),
    }
}

/// The bytes of a job's control image: inline (already checked at intake) or an object of this
/// worker's bucket.
async fn control_image_bytes(ctx: &RunContext, model: &str, image: &str) -> Result<Vec<u8>, JobError> {
    let invalid = |m: String| JobError::new(ErrorCode::InvalidSpec, format!("controlnet.image: {m}"));
    let limits = ctx.config.limits_for(model);
    match fleet_core::validate::parse_control_image(image, &limits).map_err(invalid)? {
        ControlImageSource::Inline { bytes, .. } => Ok(bytes),
        ControlImageSource::S3 { bucket, key } if bucket == ctx.config.s3.bucket => {
            match retry(|| ctx.store.get(&key)).await {
                Ok(Some(obj)) => Ok(obj.body),
                Ok(None) => Err(invalid(format!("s3://{bucket}/{key} does not exist"))),
                Err(e) => Err(JobError::new(ErrorCode::Internal, format!("control image: {e}"))),
            }
        }
        ControlImageSource::S3 { bucket, .. } => Err(invalid(format!(
            "this worker reads control images only from its own bucket `{}`, not `{bucket}`",
            ctx.config.s3.bucket
        ))),
    }
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
    let (pipeline, request) = match prepare(ctx, runnable[0].job.spec()).await {
        Ok(p) => p,
        Err(error) => {
            let Some(mut job) = runnable.into_iter().next() else { return };
            settle(ctx, &mut job, Outcome::Fail(error)).await;
            return;
        }
    };
    match generate(ctx, pipeline.clone(), request, &mut runnable).await {
        Ok(images) => {
            let ctx = ctx.clone();
            let pixels = images.iter().map(|i| u64::from(i.width()) * u64::from(i.height())).sum();
            let finishing = ctx.finishing.clone();
            finishing.spawn(pixels, async move { finish(&ctx, runnable, images, &model, &pipeline).await }).await;
        }
        Err(EngineError::Cancelled) => {
            let Some(mut job) = runnable.into_iter().next() else { return };
            let id = job.id();
            tracing::info!(job = %id, "cancelled mid-run");
            let cancel = |s: &mut JobStatus| if s.state.is_terminal() { Ok(()) } else { s.cancel(Utc::now()) };
            let outcome = match retry(|| ctx.status.update(id, cancel)).await {
                Ok(_) | Err(StatusError::Illegal(_)) => Outcome::Settled,
                Err(e) => Outcome::Requeue(format!("status: {e}")),
            };
            settle(ctx, &mut job, outcome).await;
        }
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
        EngineError::Image(_) | EngineError::NonFinite { .. } => Some(ErrorCode::InvalidOutput),
        _ => None,
    }
}

/// Runs the engine off the async runtime, writing throttled progress for every job of the batch.
async fn generate(
    ctx: &RunContext,
    pipeline: Arc<Pipeline>,
    request: GenerateRequest,
    jobs: &mut [Pending],
) -> Result<Vec<RgbImage>, EngineError> {
    let (tx, mut rx) = tokio::sync::watch::channel((0usize, request.steps));
    let stats = ctx.stats.clone();
    // Set by the reporter when every job of the pass was cancelled; the engine stops at the next step.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_engine = stop.clone();
    let engine = ctx.engine;
    let work = ctx.engine_thread.run(move || {
        if engine == EngineMode::Noop {
            // Every step reported at once, through the same reporter as a real run.
            for step in 1..=request.steps {
                let _ = tx.send((step, request.steps));
            }
            return Ok(crate::noop::fixed_images(&request));
        }
        let mut last = std::time::Duration::ZERO;
        pipeline
            .generate_until(&request, &mut |p| {
                stats.step_seconds.observe_duration(p.elapsed.saturating_sub(last));
                last = p.elapsed;
                // A closed receiver only means progress is no longer wanted.
                let _ = tx.send((p.step, p.total));
                if stop_engine.load(Ordering::Relaxed) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            })
            .map(|out| out.images)
    });
    let status = ctx.status.clone();
    let ids: Vec<(uuid::Uuid, u32)> = jobs.iter().map(|j| (j.id(), j.job.spec().num_images)).collect();
    // Cancelled when the engine is done, so that the reporter's throttling pause never delays the
    // job's completion (it used to add up to PROGRESS_EVERY to every job).
    let done = tokio_util::sync::CancellationToken::new();
    let reporter_done = done.clone();
    // Polled by this task alongside the engine (not spawned): a task per job would cost a
    // wake-up across threads at its start and end.
    let reporter = async move {
        // Whether a progress write was tried (it may have landed even if its reply did not).
        let mut wrote = false;
        // A write costs three Redis round trips (read, compare-and-set with its event, cancel
        // check), a third of a job's status traffic: not worth it for a job that finishes within
        // PROGRESS_EVERY (a 1-step image on a fast GPU). Steps reported meanwhile are not lost: the
        // watch channel keeps the latest for the loop below. A cancel request is noticed here too.
        tokio::select! {
            _ = tokio::time::sleep(PROGRESS_EVERY) => {}
            _ = reporter_done.cancelled() => return wrote,
        }
        while rx.changed().await.is_ok() {
            let (step, steps) = *rx.borrow_and_update();
            let mut cancelled = 0;
            wrote = true;
            for (id, images_total) in &ids {
                let progress =
                    Progress { step: step as u32, steps: steps as u32, images_done: 0, images_total: *images_total };
                if let Err(e) = status.set_progress(*id, progress).await {
                    tracing::debug!(job = %id, error = %e, "progress not recorded");
                }
                if status.is_cancel_requested(*id).await.unwrap_or(false) {
                    cancelled += 1;
                }
            }
            if cancelled == ids.len() {
                stop.store(true, Ordering::Relaxed);
            }
            tokio::select! {
                _ = tokio::time::sleep(PROGRESS_EVERY) => {}
                _ = reporter_done.cancelled() => break,
            }
        }
        wrote
    };
    let engine_done = async {
        let result = work.await;
        done.cancel();
        result
    };
    let (result, wrote) = tokio::join!(engine_done, reporter);
    if wrote {
        // The records moved on past the ones `begin` wrote: the final writes must read them.
        for job in jobs.iter_mut() {
            job.record = None;
        }
    }
    match result {
        Ok(Ok(images)) => Ok(images),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(EngineError::Device(format!("generation thread failed: {e}"))),
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
    // A job that started less than PROGRESS_EVERY ago was checked then: like the progress
    // reporter, notice a cancel at most that late (one Redis round trip less per short job).
    let checked_lately = job.cancel_checked.is_some_and(|at| at.elapsed() < PROGRESS_EVERY);
    let cancelled = if checked_lately { Ok(false) } else { ctx.status.is_cancel_requested(id).await };
    match cancelled {
        Ok(true) => {
            let _ = retry(|| ctx.status.update(id, |s| s.cancel(Utc::now()))).await;
            return Outcome::Settled;
        }
        Ok(false) => {}
        Err(e) => return Outcome::Requeue(e.to_string()),
    }
    let format = engine_format(spec.output.format);
    let encoding = encode_options(spec, &ctx.config.worker);
    let tenant = spec.tenant.clone().unwrap_or_default();
    let prediction = pipeline.scheduler.prediction_type.as_str();
    // The parameters embedded in each image are this job's alone (as `fleet generate` would write
    // them), never the batch's: a batch mixes tenants.
    let own_request = job_request(spec);
    // A job's images are encoded and uploaded side by side, not one after another: an n-image job
    // waits for one PUT round trip, not n (tens of milliseconds each against a remote S3).
    let stores = images.into_iter().enumerate().map(|(i, image)| {
        let params = GenerationParams::for_image(&own_request, i, model, prediction);
        let tenant = tenant.as_str();
        async move {
            let encoded = tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                fleet_engine::encode_image(&image, format, &encoding, Some(&params)).map(|b| (b, started.elapsed()))
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
            let index = i as u32;
            let seed = spec.seed.unwrap_or_default().wrapping_add(u64::from(index));
            let key = fleet_storage::object_key(&ctx.config.s3.prefix, tenant, id, index, spec.output.format);
            let meta = ObjectMeta { seed, model: model.to_owned(), job_id: id, index };
            let content_type = spec.output.format.content_type();
            let upload_started = Instant::now();
            let stored = retry(|| ctx.store.put(&key, bytes.clone(), content_type, &meta))
                .await
                .map_err(|e| Outcome::Requeue(format!("storage: {e}")))?;
            ctx.stats.upload_seconds.observe_duration(upload_started.elapsed());
            Ok(ImageResult {
                index,
                key: stored.key,
                seed,
                width: spec.width,
                height: spec.height,
                format: spec.output.format,
                sha256: stored.sha256,
                bytes: stored.bytes,
            })
        }
    });
    // The first failure settles the job (its other uploads are dropped; their keys are
    // idempotent, so a later attempt overwrites whatever they left).
    let results = match futures::future::try_join_all(stores).await {
        Ok(results) => results,
        Err(outcome) => return outcome,
    };
    let count = results.len() as u64;
    let succeed = |s: &mut JobStatus| s.succeed(results.clone(), Utc::now());
    match retry(|| ctx.status.update_from(id, job.record.clone(), succeed)).await {
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

/// How a job's images are encoded: the job's quality, the worker's configured PNG effort.
pub fn encode_options(spec: &fleet_core::JobSpec, worker: &fleet_core::config::WorkerConfig) -> EncodeOptions {
    EncodeOptions {
        quality: spec.output.quality.unwrap_or(EncodeOptions::default().quality),
        png: match worker.png_compression {
            fleet_core::config::PngCompression::Fast => PngCompression::Fast,
            fleet_core::config::PngCompression::Balanced => PngCompression::Balanced,
            fleet_core::config::PngCompression::High => PngCompression::High,
        },
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
            if let Ok(mut failures) = ctx.stats.failures_by_code.lock() {
                *failures.entry(error.code.name()).or_default() += 1;
            }
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
            ctx.stats.jobs_requeued.fetch_add(1, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    /// The API admits control images by fleet-core's limits and this worker decodes them with the
    /// engine's (which cannot see fleet-core): an image the API accepts must not fail here.
    #[test]
    fn the_api_and_the_engine_agree_on_the_largest_control_image() {
        assert_eq!(
            fleet_core::control_image::MAX_CONTROL_IMAGE_SIDE,
            fleet_engine::control_image::MAX_CONTROL_IMAGE_SIDE
        );
    }

    #[test]
    fn images_are_encoded_with_the_jobs_quality_and_the_workers_png_effort() {
        use fleet_core::config::{PngCompression as Configured, WorkerConfig};
        let mut spec: fleet_core::JobSpec = serde_json::from_value(
            serde_json::json!({"prompt": "p", "model": "tiny", "output": {"format": "jpeg", "quality": 70}}),
        )
        .unwrap();
        let mut worker = WorkerConfig::default();
        assert_eq!(
            super::encode_options(&spec, &worker),
            super::EncodeOptions { quality: 70, png: super::PngCompression::Fast }
        );
        for (configured, engine) in [
            (Configured::Fast, super::PngCompression::Fast),
            (Configured::Balanced, super::PngCompression::Balanced),
            (Configured::High, super::PngCompression::High),
        ] {
            worker.png_compression = configured;
            assert_eq!(super::encode_options(&spec, &worker).png, engine);
        }
        spec.output.quality = None;
        assert_eq!(super::encode_options(&spec, &worker).quality, 90);
    }
}
