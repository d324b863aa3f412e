//! Accepting a job: validate → admit → record status (and the tenant's in-flight limit) → publish
//! with confirm.
//!
//! The status record is written before the publish so that a worker never runs a job the API
//! cannot show, and a job whose publish was not confirmed is discarded again rather than left
//! looking queued.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use fleet_core::config::TenantQuota;
use fleet_core::usage::{next_day_start, pixel_steps};
use fleet_core::validate::new_job_id;
use fleet_core::{ErrorCode, FieldError, JobError, JobSpec, JobState, JobStatus, ValidJob};
use fleet_queue::QueueError;
use fleet_queue::topology::JobQueue;
use fleet_status::{Admission, CreateOutcome, Quota};

use crate::App;
use crate::auth::Caller;
use crate::error::ApiError;

/// How long a queue depth read from the broker is trusted.
const DEPTH_TTL: Duration = Duration::from_secs(1);

/// Queue depths, refreshed at most once per [`DEPTH_TTL`] so admission costs no broker round trip per job.
#[derive(Debug, Default)]
pub struct DepthCache {
    entries: Mutex<HashMap<String, (Instant, u32)>>,
}

impl DepthCache {
    async fn depth(&self, app: &App, queue: &str) -> Result<u32, ApiError> {
        if let Ok(entries) = self.entries.lock()
            && let Some((at, n)) = entries.get(queue)
            && at.elapsed() < DEPTH_TTL
        {
            return Ok(*n);
        }
        let depth = app.broker.depth(queue).await?.messages;
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(queue.to_owned(), (Instant::now(), depth));
        }
        Ok(depth)
    }
}

/// What became of one submitted job.
#[derive(Debug)]
pub struct Accepted {
    pub status: JobStatus,
    /// False when an idempotency key matched an existing job.
    pub created: bool,
}

/// Validates a parsed job for `caller`: limits of its model, then id, seed and tenant assigned (a
/// missing seed derives from the id, so a republish of the job draws the same images).
/// A model this fleet does not serve is a field error like any other: no retry can make it valid.
pub fn validate_for(app: &App, caller: &Caller, spec: JobSpec, field_prefix: &str) -> Result<ValidJob, ApiError> {
    let limits = app.config.limits_for(&spec.model);
    let unknown_model = (!app.config.models.contains_key(&spec.model)).then(|| FieldError {
        field: "model".to_owned(),
        message: format!("unknown model `{}`; this fleet serves: {}", spec.model.escape_debug(), model_list(app)),
    });
    // A retention over the tenant's maximum names the key that sets the maximum.
    let too_long = app
        .config
        .retention_for(&caller.tenant, spec.retention)
        .err()
        .map(|e| FieldError { field: "retention".to_owned(), message: e.to_string() });
    let refused = || unknown_model.clone().into_iter().chain(too_long.clone());
    match spec.validate(&limits) {
        Ok(job) if refused().next().is_none() => {
            if job.spec().webhook.is_some() {
                check_webhooks_allowed(app, &caller.tenant, field_prefix)?;
            }
            Ok(job.assign(&caller.tenant, new_job_id))
        }
        Ok(_) => Err(ApiError::invalid(field_prefix, refused().collect())),
        Err(errors) => Err(ApiError::invalid(field_prefix, refused().chain(errors.0).collect())),
    }
}

/// 422 `webhook_not_allowed` unless this deployment delivers webhooks and `tenant` has a secret
/// to sign them with.
fn check_webhooks_allowed(app: &App, tenant: &str, field_prefix: &str) -> Result<(), ApiError> {
    let why = if !app.config.webhooks.enabled {
        "webhooks are not enabled in this deployment (webhooks.enabled)".to_owned()
    } else if app.config.tenants.settings(tenant).webhooks.key().is_none() {
        format!("tenant `{tenant}` has no webhook secret (tenants.{tenant}.webhooks.secret)")
    } else {
        return Ok(());
    };
    Err(ApiError::new(ErrorCode::WebhookNotAllowed, format!("{field_prefix}webhook: {why}")))
}

/// The tenant's default webhook, for a job that names none (only where webhooks are enabled and
/// the tenant can sign them).
fn default_webhook(app: &App, tenant: &str) -> Option<fleet_core::webhook::WebhookSpec> {
    let settings = &app.config.tenants.settings(tenant).webhooks;
    (app.config.webhooks.enabled && settings.key().is_some()).then(|| settings.default_webhook()).flatten()
}

/// Admits, records and publishes one validated job.
///
/// Runs in its own task: a client that goes away mid-request (a killed `fleet bulk`) drops the
/// handler, and a job must never be left recorded (its idempotency key taken) but not published.
pub async fn accept(app: &App, job: ValidJob, trace_id: &str) -> Result<Accepted, ApiError> {
    let (app, trace_id) = (app.clone(), trace_id.to_owned());
    tokio::spawn(async move { accept_here(&app, job, &trace_id).await })
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("accepting the job failed: {e}")))?
}

async fn accept_here(app: &App, job: ValidJob, trace_id: &str) -> Result<Accepted, ApiError> {
    let started = Instant::now();
    let spec = job.spec();
    let tenant = spec.tenant.clone().unwrap_or_default();
    let route = route_of(app, spec)?;
    app.lanes.ensure(app, &route).await?;
    let queue = &route.name;
    let depth = app.depths.depth(app, queue).await?;
    if u64::from(depth) >= app.config.rabbitmq.max_queue_depth {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "queue `{queue}` holds {depth} jobs (limit {}); try again later",
                app.config.rabbitmq.max_queue_depth
            ),
        )
        .with_retry_after(30));
    }

    let Some(mut status) = JobStatus::queued(&job, Utc::now()) else {
        return Err(ApiError::new(ErrorCode::Internal, "job has no id or tenant after assignment"));
    };
    if let Some(request) = status.request.as_mut().filter(|r| r.webhook.is_none()) {
        request.webhook = default_webhook(app, &tenant);
    }
    // Checked by `validate_for`; the record keeps what the job resolved to, so a later change of
    // the tenant's default does not move the expiry of jobs already accepted.
    let retention = app.config.retention_for(&tenant, spec.retention).map_err(|e| {
        ApiError::invalid("", vec![FieldError { field: "retention".to_owned(), message: e.to_string() }])
    })?;
    let status = status.with_retention(retention);
    // The tenant's in-flight limit and quotas are checked by the create itself: one round trip,
    // and concurrent submissions cannot overshoot them.
    let max_in_flight = app.config.http.max_in_flight_per_tenant;
    let quota = &app.config.tenants.settings(&tenant).quota;
    let admission =
        Admission { max_in_flight, max_queued: quota.max_queued_jobs, daily_pixel_steps: quota.daily_pixel_steps() };
    let digest = job.request_digest();
    match app.status.create_within(&status, spec.idempotency_key.as_deref(), Some(&digest), &admission).await? {
        CreateOutcome::InFlightLimit { in_flight } => {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!("tenant `{tenant}` has {in_flight} jobs queued or running (limit {max_in_flight})"),
            )
            .with_retry_after(10));
        }
        CreateOutcome::QuotaExceeded { quota: which, used } => {
            return Err(over_quota(&tenant, quota, which, used, &status));
        }
        CreateOutcome::Existing(existing)
            if existing.state == JobState::Queued
                && existing.attempts == 0
                && !app.status.is_published(existing.id).await? =>
        {
            return publish_again(app, job, existing, trace_id).await;
        }
        CreateOutcome::Existing(existing) => return Ok(Accepted { status: existing, created: false }),
        CreateOutcome::DifferentRequest { existing } => return Err(different_request(spec, existing)),
        CreateOutcome::Created => {}
    }
    if let Err(err) = publish_to(app, &route, &job, trace_id).await {
        // Not accepted: undo the record and the idempotency key so a retry with the same key creates the job
        // afresh. If an unconfirmed message did reach a queue after all, the worker finds no record and
        // treats it like a job published straight onto the queue.
        if let Err(undo) = app.status.discard(&status, spec.idempotency_key.as_deref()).await {
            tracing::error!(job = %status.id, error = %undo, "could not discard the record of an unpublished job");
            let error = JobError::new(err.code(), format!("not queued: {err}"));
            let _ = app.status.update(status.id, |s| s.fail(error.clone(), Utc::now())).await;
        }
        return Err(err.into());
    }
    if job.findable_by_retry() {
        mark_published(app, status.id, false).await;
    }
    app.metrics.accepted(&spec.model, spec.priority, started.elapsed().as_secs_f64());
    tracing::info!(job = %status.id, tenant = %tenant, model = %spec.model, trace_id, "job accepted");
    Ok(Accepted { status, created: true })
}

/// 429 `quota_exceeded`: names the quota, the tenant's use of it, the job's cost and when the
/// quota resets; `Retry-After` is the time to the reset (the next UTC day) for the daily budget,
/// a short wait for the queued-jobs limit (it frees up as jobs start).
fn over_quota(tenant: &str, quota: &TenantQuota, which: Quota, used: u64, status: &JobStatus) -> ApiError {
    let key = format!("tenants.{tenant}.quota.{}", which.key());
    let (message, retry_after) = match which {
        Quota::MaxQueuedJobs => (
            format!(
                "tenant `{tenant}` has {used} jobs queued, its quota `{key}` allows {}; it frees up as queued jobs start",
                quota.max_queued_jobs.unwrap_or_default()
            ),
            10,
        ),
        Quota::DailyMegapixelSteps => {
            let reset = next_day_start(status.created_at);
            let cost = status.request.as_ref().map_or(0, |r| pixel_steps(r.width, r.height, r.steps, r.num_images));
            (
                format!(
                    "tenant `{tenant}` has used {:.3} of its {} megapixel-steps today (quota `{key}`); this job \
                     costs {:.3}; the quota resets at {}",
                    used as f64 / 1e6,
                    quota.daily_megapixel_steps.unwrap_or_default(),
                    cost as f64 / 1e6,
                    reset.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                ),
                u64::try_from((reset - status.created_at).num_seconds()).unwrap_or(0).max(1),
            )
        }
    };
    ApiError::new(ErrorCode::QuotaExceeded, message).with_retry_after(retry_after)
}

/// 409: the idempotency key (or the client's job id) already stands for a job with another request.
fn different_request(spec: &JobSpec, existing: uuid::Uuid) -> ApiError {
    let what = match &spec.idempotency_key {
        Some(key) => format!("idempotency key `{}`", key.escape_debug()),
        None => format!("job id {existing}"),
    };
    let mut error = ApiError::new(
        ErrorCode::Conflict,
        format!(
            "{what} was already used for job {existing} with a different request; send the same request \
             to get that job, or use a new key for a new job"
        ),
    );
    error.job_id = Some(existing);
    error
}

/// Records that the job's message is on its queue (`again`: a second one, see [`publish_again`]).
/// Failing that only costs a second publish if the client retries with the same key, so it does
/// not fail the request.
async fn mark_published(app: &App, id: uuid::Uuid, again: bool) {
    let marked = if again { app.status.mark_published_again(id).await } else { app.status.mark_published(id).await };
    if let Err(e) = marked {
        tracing::warn!(job = %id, error = %e, "published, but not noted as published");
    }
}

/// A retry (same idempotency key) of a job that is recorded as queued, never started and not
/// noted as published: the first request died with its dispatcher between recording the job and
/// publishing it (or before noting the publish), leaving a record that perhaps no message stands
/// for, so the job would stay queued for ever. It is published again under its recorded id and
/// with its recorded seed (the one its first message carried and its record shows). If the first
/// publish did go through, the worker that gets the second message finds the job finished (or
/// takes it over, with the same object keys and seed) and nothing is stored twice; the cost is at
/// most one repeated generation.
async fn publish_again(app: &App, job: ValidJob, existing: JobStatus, trace_id: &str) -> Result<Accepted, ApiError> {
    // A record without its request (written before records kept it) leaves the seed to the id's rule.
    let seed = existing.request.as_ref().map(|request| request.seed);
    // The request as the client sent it, so the message carries the digest the record has.
    let job = job.as_recorded(existing.id, seed).assign(&existing.tenant, new_job_id);
    // On failure the record stays (it is the first request's); the client retries again.
    let route = route_of(app, job.spec())?;
    app.lanes.ensure(app, &route).await?;
    publish_to(app, &route, &job, trace_id).await?;
    mark_published(app, existing.id, true).await;
    tracing::info!(job = %existing.id, trace_id, "retried job was still queued: published again");
    Ok(Accepted { status: existing, created: false })
}

/// The queue a job is published to: its tenant's lane, or the shared queue of its model and
/// priority ([`fleet_queue::Topology::route`]).
fn route_of(app: &App, spec: &JobSpec) -> Result<JobQueue, ApiError> {
    app.broker.topology().route(&spec.model, spec.priority, spec.tenant.as_deref()).ok_or_else(|| {
        ApiError::new(
            ErrorCode::ModelUnavailable,
            format!("model `{}` is not served by this fleet (configured: {})", spec.model, model_list(app)),
        )
    })
}

/// Publishes a job to `route` (its lane declared by [`crate::lanes::Lanes::ensure`]); a lane the
/// broker has no queue for any more is forgotten, so the next job declares it again.
async fn publish_to(app: &App, route: &JobQueue, job: &ValidJob, trace_id: &str) -> Result<(), QueueError> {
    let published = app.publisher.publish(job, trace_id).await;
    if matches!(published, Err(QueueError::Unroutable { .. })) {
        app.lanes.forget(route);
    }
    published
}

fn model_list(app: &App) -> String {
    app.config.models.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
}
