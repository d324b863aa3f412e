//! A job's start: its record goes to `running`, or the job turns out to need nothing.

use chrono::Utc;
use fleet_core::{JobState, JobStatus};
use fleet_status::{StatusError, Versioned};

use super::{RunContext, retry};
use crate::intake::Pending;
use crate::recover::{self, RecoverError};

/// Marks the job running and returns its record as written. `Ok(None)`: nothing to do (cancelled
/// or already finished by an earlier delivery) and the message can be acked. `Err`: the status
/// store is unreachable.
pub(super) async fn begin(ctx: &RunContext, job: &Pending) -> Result<Option<Versioned>, StatusError> {
    let id = job.id();
    // The record and the cancel flag in one round trip; the start below writes from that record.
    let (record, cancelled) = retry(|| ctx.status.read_with_cancel_flag(id)).await?;
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
        s.start(&worker, Utc::now())?;
        s.note_delivery(job.delivery_count, job.handbacks());
        Ok(())
    };
    let started = match &record {
        Some(record) => retry(|| ctx.status.update_from(id, Some(record.clone()), start)).await,
        None => Err(StatusError::NotFound(id)),
    };
    match started {
        Ok(record) => {
            ctx.stats.queue_wait.observe((Utc::now() - record.status.created_at).as_seconds_f64());
            Ok(Some(record))
        }
        Err(StatusError::Illegal(_)) => {
            // A delivery of a job that already succeeded: nothing is uploaded, and objects an
            // execution that lost left behind (it died before removing them) go now.
            if let Some(done) = record.filter(|r| r.status.state == JobState::Succeeded) {
                sweep_in_background(ctx, done.status);
            }
            Ok(None)
        }
        Err(StatusError::NotFound(_)) => {
            // Published straight onto the queue, or its record was lost (or expired): when its
            // images are all stored, an earlier execution finished it and only the record is rebuilt.
            if restored(ctx, job).await? {
                return Ok(None);
            }
            // Otherwise the record is created from the message (with its idempotency key), then started.
            let Some(mut queued) = JobStatus::queued(&job.job, Utc::now()) else { return Ok(None) };
            // Without its own retention the job is kept as long as its tenant's default says.
            if queued.retention_secs.is_none() {
                queued.retention_secs = ctx.config.retention_for(&queued.tenant, None).ok();
            }
            let key = job.job.spec().idempotency_key.as_deref();
            retry(|| recover::record::write(&ctx.status, &queued, key, job.request_digest.as_deref())).await?;
            retry(|| ctx.status.update_from(id, None, start)).await.map(Some)
        }
        Err(e) => Err(e),
    }
}

/// Removes objects of `record`'s job that its result does not name, without holding up the batch.
fn sweep_in_background(ctx: &RunContext, record: JobStatus) {
    let (store, prefix) = (ctx.store.clone(), ctx.config.s3.prefix.clone());
    tokio::spawn(async move {
        match crate::result_set::sweep(&store, &prefix, &record).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(job = %record.id, objects = n, "removed objects of executions that lost"),
            Err(e) => tracing::warn!(job = %record.id, error = %e, "cannot list the job's objects to remove strays"),
        }
    });
}

/// Whether the job's record was rebuilt from a whole result set found in the image store. A
/// store that cannot be listed only costs running the job again.
async fn restored(ctx: &RunContext, job: &Pending) -> Result<bool, StatusError> {
    let found = recover::restore_from_store(&ctx.status, &ctx.store, &ctx.config.s3.prefix, &job.job, &ctx.worker_id);
    match found.await {
        Ok(Some(written)) => {
            tracing::warn!(job = %job.id(), ?written, "the job's record was missing and its images are all stored: record rebuilt from them");
            Ok(true)
        }
        Ok(None) => Ok(false),
        Err(RecoverError::Status(e)) => Err(e),
        Err(RecoverError::Storage(e)) => {
            tracing::warn!(job = %job.id(), error = %e, "cannot look for the job's stored images; running it");
            Ok(false)
        }
    }
}
