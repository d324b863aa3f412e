//! Rebuilding finished jobs' records from S3 alone, for when Redis lost them (a Redis without
//! persistence restarted, an asynchronous replica took over before it had the last writes).
//!
//! A job's images are stored under `<prefix>/<tenant>/<job id>/…` with the job id, index, seed,
//! model, priority and idempotency key as object metadata and the request embedded in each image.
//! A whole, consistent set of them ([`stored::read_set`]) is what a `succeeded` record of the job
//! says, so the record is written again from it, with its idempotency key — never over a record
//! that exists. Two callers:
//!
//! - `fleet recover` ([`Recovery::run`]): every job of a tenant (or all, or one job) that has a
//!   whole result set stored and no record, or a record a lost write left unfinished (`queued`,
//!   or `running` on a worker that is gone): that record is marked `succeeded` with the set;
//! - a worker given a job whose record is missing ([`restore_from_store`]): when the job's images
//!   are all stored, the job is done, and its record is rebuilt instead of running it again.

pub mod record;
pub mod stored;

use std::collections::{BTreeMap, HashSet};

use chrono::Utc;
use fleet_core::{JobState, ValidJob};
use fleet_status::{StatusError, StatusStore};
use fleet_storage::{ImageStore, ListedSet, StorageError};
use uuid::Uuid;

pub use record::Written;
pub use stored::{Expected, StoredResult, read_set};

/// Why recovery stopped: a store it reads or writes failed.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// Listing or reading the images failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Reading or writing a record failed.
    #[error(transparent)]
    Status(#[from] StatusError),
}

/// Which jobs `fleet recover` looks at.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Only this tenant's jobs (all tenants when `None`).
    pub tenant: Option<String>,
    /// Only this job.
    pub job: Option<Uuid>,
    /// Report what would be written, write nothing.
    pub dry_run: bool,
}

/// What happened to one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// It has a record: left alone.
    Recorded,
    /// Its record was rebuilt (or would be, in a dry run).
    Rebuilt {
        /// Its idempotency key maps to it again (or would).
        key_restored: bool,
        /// The key was left to this other job, which holds it now.
        key_taken_by: Option<Uuid>,
    },
    /// Its record was unfinished (`queued`, or `running` on a worker that is gone) while a whole
    /// result set is stored: marked `succeeded` with that set (or would be, in a dry run).
    Finished {
        /// The state the record was left in.
        was: JobState,
    },
    /// No whole, consistent result set: nothing written. One reason per set found.
    NotWhole(Vec<String>),
}

/// The worker name a record finished by `fleet recover` from `queued` is started under.
pub const RECOVERER: &str = "fleet-recover";

/// The tally `fleet recover` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Jobs with images found.
    pub jobs: u64,
    /// Jobs that had a record.
    pub recorded: u64,
    /// Records rebuilt (or, in a dry run, that would be).
    pub rebuilt: u64,
    /// Idempotency keys restored with them.
    pub keys_restored: u64,
    /// Keys left to the other job that holds them now.
    pub keys_taken: u64,
    /// Jobs whose images are no whole result set (still running, failed while storing, or
    /// mixed): left without a record.
    pub not_whole: u64,
    /// Unfinished records marked `succeeded` from their stored set (or, in a dry run, that would be).
    pub finished: u64,
}

impl Summary {
    fn count(&mut self, outcome: &JobOutcome) {
        self.jobs += 1;
        match outcome {
            JobOutcome::Recorded => self.recorded += 1,
            JobOutcome::Rebuilt { key_restored, key_taken_by } => {
                self.rebuilt += 1;
                self.keys_restored += u64::from(*key_restored);
                self.keys_taken += u64::from(key_taken_by.is_some());
            }
            JobOutcome::NotWhole(_) => self.not_whole += 1,
            JobOutcome::Finished { .. } => self.finished += 1,
        }
    }
}

/// The stores `fleet recover` works between.
#[derive(Debug)]
pub struct Recovery<'a> {
    pub status: &'a StatusStore,
    pub images: &'a ImageStore,
    /// `s3.prefix`.
    pub prefix: &'a str,
}

impl Recovery<'_> {
    /// Rebuilds the record of every job in `scope` that has a whole result set and no record, and
    /// finishes its unfinished record; `on_job` hears of each job as it is done (for printing).
    pub async fn run(
        &self,
        scope: &Scope,
        mut on_job: impl FnMut(Uuid, &str, &JobOutcome),
    ) -> Result<Summary, RecoverError> {
        let sets = self.images.result_sets(self.prefix, scope.tenant.as_deref(), scope.job).await?;
        let mut jobs: BTreeMap<(String, Uuid), Vec<ListedSet>> = BTreeMap::new();
        for set in sets {
            jobs.entry((set.tenant.clone(), set.job_id)).or_default().push(set);
        }
        // A `running` record of a worker that is alive may be about to succeed: left to it.
        let alive: HashSet<String> = self.status.workers().await?.into_iter().map(|w| w.id).collect();
        let mut summary = Summary::default();
        for ((tenant, id), sets) in jobs {
            let outcome = self.job(id, &tenant, &sets, scope.dry_run, &alive).await?;
            summary.count(&outcome);
            on_job(id, &tenant, &outcome);
        }
        Ok(summary)
    }

    /// One job: its record if it has one and it is finished or being run, else the first whole
    /// set of its sets (in execution order) makes its record, or finishes the unfinished one.
    async fn job(
        &self,
        id: Uuid,
        tenant: &str,
        sets: &[ListedSet],
        dry_run: bool,
        alive: &HashSet<String>,
    ) -> Result<JobOutcome, RecoverError> {
        let unfinished = match self.status.get(id).await? {
            // A job id belongs to one tenant; one listed under another is not this record's.
            Some(existing) if existing.tenant == tenant => {
                let running_here = existing.state == JobState::Running
                    && existing.worker.as_ref().is_some_and(|worker| alive.contains(worker));
                if existing.state.is_terminal() || running_here {
                    return Ok(JobOutcome::Recorded);
                }
                Some(existing)
            }
            _ => None,
        };
        let mut reasons = Vec::new();
        for set in sets {
            let result = match read_set(self.images, set, Expected::default()).await? {
                Ok(result) => result,
                Err(reason) => {
                    reasons.push(reason);
                    continue;
                }
            };
            if let Some(judged) = &unfinished {
                return self.finish(judged, result, dry_run).await;
            }
            let (key, digest) = (result.meta.idempotency_key.clone(), result.meta.request_digest.clone());
            if dry_run {
                return Ok(JobOutcome::Rebuilt { key_restored: key.is_some(), key_taken_by: None });
            }
            let status = record::from_images(id, tenant, result, Utc::now());
            return Ok(match record::write(self.status, &status, key.as_deref(), digest.as_deref()).await? {
                Written::Created { key_restored, key_taken_by } => JobOutcome::Rebuilt { key_restored, key_taken_by },
                Written::AlreadyRecorded => JobOutcome::Recorded,
            });
        }
        if unfinished.is_some() {
            // Nothing whole stored: its message (if any) runs it; not a recovery's to decide.
            return Ok(JobOutcome::Recorded);
        }
        Ok(JobOutcome::NotWhole(reasons))
    }

    /// Marks the unfinished record `judged` `succeeded` with a whole stored set, unless it moved on
    /// meanwhile (finished, or started by a worker: a new start is left to that worker), and
    /// removes the other executions' objects as a worker's winning commit does. An execution
    /// already under way then loses its commit and removes its own objects; one whose set this is
    /// wins it (its commit finds its own keys recorded).
    async fn finish(
        &self,
        judged: &fleet_core::JobStatus,
        result: StoredResult,
        dry_run: bool,
    ) -> Result<JobOutcome, RecoverError> {
        let (id, was) = (judged.id, judged.state);
        if dry_run {
            return Ok(JobOutcome::Finished { was });
        }
        let images = result.images;
        let finish = |s: &mut fleet_core::JobStatus| {
            if s.state != judged.state || s.attempts != judged.attempts || s.worker != judged.worker {
                return Ok(());
            }
            if s.state == JobState::Queued {
                s.start(RECOVERER, Utc::now())?;
            }
            s.succeed(images.clone(), Utc::now())
        };
        let record = self.status.update(id, finish).await?;
        if record.state != JobState::Succeeded || record.result != images {
            return Ok(JobOutcome::Recorded);
        }
        crate::result_set::sweep(self.images, self.prefix, &record).await?;
        Ok(JobOutcome::Finished { was })
    }
}

/// For a worker holding a job whose record is missing: when a whole result set of the job is
/// stored (an earlier execution finished, and Redis lost its record), writes the `succeeded`
/// record from it, with the job's idempotency key, and returns it. `Ok(None)`: nothing whole is
/// stored, so the job must run.
pub async fn restore_from_store(
    status: &StatusStore,
    images: &ImageStore,
    prefix: &str,
    job: &ValidJob,
    worker: &str,
) -> Result<Option<Written>, RecoverError> {
    let spec = job.spec();
    let (Some(id), Some(tenant)) = (spec.id, spec.tenant.as_deref()) else { return Ok(None) };
    let expected = Expected { num_images: Some(spec.num_images), seed: spec.seed };
    for set in images.result_sets(prefix, Some(tenant), Some(id)).await? {
        let Ok(result) = read_set(images, &set, expected).await? else { continue };
        let digest = result.meta.request_digest.clone();
        let Some(Ok(record)) = record::from_message(job, worker, result, Utc::now()) else { return Ok(None) };
        return Ok(Some(record::write(status, &record, spec.idempotency_key.as_deref(), digest.as_deref()).await?));
    }
    Ok(None)
}
