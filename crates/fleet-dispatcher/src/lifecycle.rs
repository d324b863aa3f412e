//! The end of a finished job: its images, then its status record, are removed when its retention
//! has passed ([`sweep`], on every dispatcher) or when its owner deletes it (`DELETE
//! /v1/jobs/{id}`); both go through [`remove_job`].
//!
//! Due jobs are found in Redis's expiry set (a job joins it in the same script that records its
//! final state, see `fleet_status::StatusStore::claim_expired`). A sweep claims a batch under a
//! lease, so any number of dispatchers sweep side by side without working on the same job, and a
//! job whose removal did not finish (a crash, an S3 outage) is claimed again once its lease ends.
//! Every step is idempotent: deleting a missing object or record is no error.

use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_core::ErrorCode;
use fleet_status::{ExpiredJob, StatusError};
use fleet_storage::StorageError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::App;

/// Jobs one claim takes; a sweep claims batches until fewer are due.
pub const SWEEP_BATCH: usize = 100;

/// Why a job could not be removed; whatever was removed stays removed, and the rest is retried.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// Listing or deleting the job's images failed.
    #[error("removing the images of job {id}: {source}")]
    Storage { id: Uuid, source: StorageError },
    /// Removing the job's record failed.
    #[error("removing the record of job {id}: {source}")]
    Status { id: Uuid, source: StatusError },
}

impl RemoveError {
    /// The API error code (what the service that failed says).
    pub fn code(&self) -> ErrorCode {
        match self {
            RemoveError::Storage { source, .. } => source.code(),
            RemoveError::Status { source, .. } => source.code(),
        }
    }
}

/// Why a job is removed: the `reason` label of `fleet_jobs_removed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Removal {
    /// The sweeper found it due: its retention passed, or its owner deleted it before it finished
    /// (such a job is due once final, and the sweep cannot tell the two apart).
    Expired,
    /// Its owner deleted it once finished (`DELETE /v1/jobs/{id}`).
    Deleted,
}

impl Removal {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Removal::Expired => "expired",
            Removal::Deleted => "deleted",
        }
    }
}

/// Removes `tenant`'s job `id`: every object under its key prefix, then its record, index and
/// expiry entries (see `fleet_status::StatusStore::remove`). Images go first, so that a failure
/// half-way leaves the record, and the expiry entry that leads a later sweep back to the images.
/// The removal counts under `why` when it removed the record (a job removed twice counts once).
/// Returns how many objects were deleted.
pub async fn remove_job(app: &App, tenant: &str, id: Uuid, why: Removal) -> Result<usize, RemoveError> {
    let prefix = fleet_storage::job_prefix(&app.config.s3.prefix, tenant, id);
    let storage = |source| RemoveError::Storage { id, source };
    let keys = app.store.list(&prefix).await.map_err(storage)?;
    for key in &keys {
        app.store.delete(key).await.map_err(storage)?;
    }
    if app.status.remove(tenant, id).await.map_err(|source| RemoveError::Status { id, source })? {
        app.metrics.removed(why);
    }
    Ok(keys.len())
}

/// Removes every job due at `now`, a batch at a time, and returns those removed. A job whose
/// removal fails is logged and left to a later sweep (after its lease); only a failure to claim
/// stops the sweep.
pub async fn sweep_once(app: &App, now: DateTime<Utc>) -> Result<Vec<ExpiredJob>, StatusError> {
    let lease = Duration::from_secs(app.config.retention.sweep_lease_secs);
    let mut removed = Vec::new();
    loop {
        let claimed = app.status.claim_expired(now, lease, SWEEP_BATCH).await?;
        let full = claimed.len() == SWEEP_BATCH;
        for job in claimed {
            match remove_job(app, &job.tenant, job.id, Removal::Expired).await {
                Ok(objects) => {
                    tracing::debug!(job = %job.id, tenant = %job.tenant, objects, "removed an expired job");
                    removed.push(job);
                }
                Err(e) => tracing::warn!(error = %e, "cannot remove an expired job; retrying after the lease"),
            }
        }
        if !full {
            return Ok(removed);
        }
    }
}

/// Sweeps every `retention.sweep_interval_secs` until `shutdown` (not at all when it is 0).
pub async fn sweep(app: App, shutdown: CancellationToken) {
    let every = app.config.retention.sweep_interval_secs;
    if every == 0 {
        return;
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(every)) => {}
        }
        match sweep_once(&app, Utc::now()).await {
            Ok(removed) if !removed.is_empty() => tracing::info!(jobs = removed.len(), "removed expired jobs"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot claim expired jobs; sweeping again later"),
        }
    }
}
