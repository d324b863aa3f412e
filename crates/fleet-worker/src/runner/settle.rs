//! Settling a job: its status write, then the message's ack or requeue.

use std::sync::atomic::Ordering;

use chrono::Utc;
use fleet_core::{JobError, JobState};
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

/// Writes the outcome to the status record and settles the message accordingly.
pub(super) async fn settle(ctx: &RunContext, job: &mut Pending, outcome: Outcome) {
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
