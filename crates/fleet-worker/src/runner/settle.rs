//! Settling a job: its status write, then the message's ack or requeue.

use std::sync::atomic::Ordering;

use chrono::Utc;
use fleet_core::{ErrorCode, JobError, JobState};
use fleet_status::StatusError;

use super::{RunContext, retry};
use crate::intake::Pending;

/// Why a job cannot be completed by this attempt.
pub(super) enum Outcome {
    /// Done: status written, message may be acked.
    Settled,
    /// A fault of the job itself: mark failed with this error and ack.
    Fail(JobError),
    /// A fault of the environment: hand the message back for a later attempt.
    Requeue(Interruption),
}

/// What interrupted an attempt, from outside the job: the message goes back for a later attempt.
#[derive(Debug, thiserror::Error)]
pub(super) enum Interruption {
    #[error("status: {0}")]
    Status(#[from] StatusError),
    #[error("storage: {0}")]
    Storage(#[from] fleet_storage::StorageError),
    /// A failure the engine may not meet again on another attempt (out of memory, say).
    #[error("engine: {0}")]
    Engine(std::sync::Arc<fleet_engine::EngineError>),
}

impl Interruption {
    /// The error a job records when this interruption meets its last allowed delivery.
    fn job_error(&self) -> JobError {
        match self {
            Interruption::Status(e) => JobError::new(ErrorCode::StatusUnavailable, e.to_string()),
            Interruption::Storage(e) => JobError::new(e.code(), e.to_string()),
            Interruption::Engine(e) => JobError::new(super::classify(e).unwrap_or(ErrorCode::Internal), e.to_string()),
        }
    }
}

/// The one line a job that ended on this worker logs (at info; a failure logs its line, with the
/// error, as a warning in [`settle`]).
pub(super) fn log_finished(job: &Pending, state: JobState, images: usize) {
    tracing::info!(
        job = %job.id(),
        model = %job.job.spec().model,
        state = state.as_str(),
        seconds = round_seconds(job),
        images,
        "job finished"
    );
}

/// Seconds since the job reached this worker, to the millisecond.
fn round_seconds(job: &Pending) -> f64 {
    (job.arrived.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

/// Writes the outcome to the status record and settles the message accordingly.
pub(super) async fn settle(ctx: &RunContext, job: &mut Pending, outcome: Outcome) {
    let id = job.id();
    tracing::debug!(job = %id, trace_id = %job.trace_id, "settling");
    let outcome = match outcome {
        // Handed back now, the broker would dead-letter the job as one that kept crashing its
        // workers; its status records the real cause instead.
        Outcome::Requeue(reason) if job.delivery_count >= ctx.config.rabbitmq.delivery_limit => {
            Outcome::Fail(reason.job_error().after_last_attempt(job.delivery_count + 1))
        }
        other => other,
    };
    match outcome {
        Outcome::Settled => job.ack().await,
        Outcome::Fail(error) => {
            tracing::warn!(
                job = %id,
                model = %job.job.spec().model,
                state = JobState::Failed.as_str(),
                seconds = round_seconds(job),
                images = 0,
                code = %error.code,
                message = %error.message,
                "job finished"
            );
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
