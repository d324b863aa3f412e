//! One execution's result set: its images stored under the execution's own keys, then the job's
//! record compare-and-set to `succeeded` with them — or, when another execution (or a cancel)
//! got there first, its own objects removed.
//!
//! Every execution of a job (the first run, a redelivery after a crash, a duplicate message)
//! draws its own execution id ([`fleet_storage::new_execution_id`]) and writes
//! `<prefix>/<tenant>/<job id>/<execution>/<index>.<ext>`, so no execution can overwrite objects
//! another one recorded. The record's compare-and-set (`succeeded` is reached once; a second
//! `succeed` is an illegal transition) picks the one set that counts, and the record names its
//! keys, sizes and SHA-256s exactly.
//!
//! The crash window: an execution that dies mid-upload, or loses and dies before removing its
//! objects, leaves them behind, unreferenced (readers only ever follow the record's keys). The
//! winner of a job started more than once removes them when it commits, and a later delivery
//! of a succeeded job does too ([`sweep`]). What remains: objects of an execution that uploads
//! after the winner's sweep and dies before it learns that it lost (between two S3 calls), and
//! those of a job that ends failed or cancelled after a crash mid-upload; they stay, unreferenced,
//! until an operator removes them (an S3 lifecycle rule on the prefix, or a listing compared
//! with the records).

use chrono::Utc;
use fleet_core::{ImageResult, JobState};
use fleet_status::{StatusError, StatusStore, Versioned};
use fleet_storage::{ImageStore, ObjectMeta, StorageError};
use uuid::Uuid;

use crate::runner::retry;

/// What became of an execution's result set.
#[derive(Debug)]
pub enum Committed {
    /// The record now says `succeeded` with these images.
    Won(Box<Versioned>),
    /// The job had already ended (another execution succeeded, or it was cancelled or failed):
    /// this execution's objects were removed, and the record stands as it was.
    Lost(JobState),
}

/// Stores one image of an execution (retrying transient failures) and returns its result entry.
pub async fn upload(
    store: &ImageStore,
    key: &str,
    bytes: Vec<u8>,
    meta: &ObjectMeta,
    format: fleet_core::ImageFormat,
) -> Result<ImageResult, StorageError> {
    let stored = retry::retry(|| store.put(key, bytes.clone(), format.content_type(), meta)).await?;
    Ok(ImageResult {
        index: meta.index,
        key: stored.key,
        seed: meta.seed,
        width: meta.width,
        height: meta.height,
        format,
        sha256: stored.sha256,
        bytes: stored.bytes,
        url: None,
        url_expires_at: None,
    })
}

/// Marks the job succeeded with `results` (compare-and-set from `known`, the record as this
/// worker last wrote it). When the record refuses — the job already succeeded through another
/// execution, or was cancelled or failed meanwhile — the execution's objects are removed and
/// [`Committed::Lost`] says what the record holds. A winner whose job was started more than once
/// removes what the other executions left (`s3_prefix` is `s3.prefix`): an execution that
/// crashed mid-upload never cleans up after itself. With one start there is nothing to remove,
/// and no listing is made: every execution records its start before it uploads, and none can
/// start once the job has succeeded.
pub async fn commit(
    status: &StatusStore,
    store: &ImageStore,
    s3_prefix: &str,
    known: Option<Versioned>,
    id: Uuid,
    results: Vec<ImageResult>,
) -> Result<Committed, StatusError> {
    // A retry of a write whose reply was lost (the call timed out across a stall, the connection
    // dropped after the write) finds the job succeeded with this very set, and so does an
    // execution whose set `fleet recover` recorded while it was committing (an unfinished record
    // finished from S3): that is this execution's win, not a loss. The keys carry this
    // execution's id, so no other set matches.
    let succeed = |s: &mut fleet_core::JobStatus| {
        if s.state == JobState::Succeeded && s.result.iter().map(|r| &r.key).eq(results.iter().map(|r| &r.key)) {
            return Ok(());
        }
        s.succeed(results.clone(), Utc::now())
    };
    match retry::retry(|| status.update_from(id, known.clone(), succeed)).await {
        Ok(record) => {
            if record.status.attempts > 1 {
                match sweep(store, s3_prefix, &record.status).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(job = %id, objects = n, "removed objects of other executions"),
                    Err(e) => tracing::warn!(job = %id, error = %e, "cannot list the job's objects to remove strays"),
                }
            }
            Ok(Committed::Won(Box::new(record)))
        }
        Err(StatusError::Illegal(refused)) => {
            let keys: Vec<String> = results.into_iter().map(|r| r.key).collect();
            remove(store, &keys).await;
            Ok(Committed::Lost(refused.from))
        }
        Err(e) => Err(e),
    }
}

/// Removes objects (best effort: a failure is logged; the objects are unreferenced either way).
pub async fn remove(store: &ImageStore, keys: &[String]) {
    for key in keys {
        if let Err(e) = retry::retry(|| store.delete(key)).await {
            tracing::warn!(%key, error = %e, "cannot remove an object no record refers to");
        }
    }
}

/// Removes every object under the job's prefix that `record` (a succeeded job's) does not name:
/// what executions that lost and died before cleaning up left behind. Returns how many went.
pub async fn sweep(store: &ImageStore, s3_prefix: &str, record: &fleet_core::JobStatus) -> Result<usize, StorageError> {
    if record.state != JobState::Succeeded {
        return Ok(0);
    }
    let prefix = fleet_storage::job_prefix(s3_prefix, &record.tenant, record.id);
    let mut stray = retry::retry(|| store.list(&prefix)).await?;
    stray.retain(|key| record.result.iter().all(|r| &r.key != key));
    remove(store, &stray).await;
    Ok(stray.len())
}
