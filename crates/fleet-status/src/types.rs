//! Values the store hands out: create outcomes, pages, events, heartbeats and counters.

use chrono::{DateTime, Utc};
use fleet_core::{JobState, JobStatus, Progress};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What [`crate::StatusStore::create`] (or [`crate::StatusStore::create_within`]) did.
// Made once per submitted job and matched at once; boxing the status would only cost an
// allocation and make matching clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// The record was written; the job is new.
    Created,
    /// The idempotency key (or the job id) was already used by this tenant: this is that job,
    /// and nothing was written. The caller must not enqueue the job again.
    Existing(JobStatus),
    /// The idempotency key (or the job id) was already used by this tenant for a request with
    /// another digest: nothing was written, and the caller answers with a conflict naming the
    /// job. Only when a digest was given and the existing job has one (records written without a
    /// digest count as the same request).
    DifferentRequest {
        /// The job the key (or id) stands for.
        existing: Uuid,
    },
    /// Only from [`crate::StatusStore::create_within`]: the tenant is at or above its limit of
    /// jobs queued or running, so nothing was written.
    InFlightLimit {
        /// The tenant's jobs queued or running.
        in_flight: u64,
    },
    /// Only from [`crate::StatusStore::create_within`]: admitting the job would take the tenant
    /// over one of its quotas, so nothing was written.
    QuotaExceeded {
        /// The quota the job would go over.
        quota: Quota,
        /// What the tenant has used of it: jobs queued, or pixel-steps charged today.
        used: u64,
    },
}

/// A tenant quota that admission checks (`[tenants.<name>.quota]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// `max_queued_jobs`: jobs queued (not yet started) at once.
    MaxQueuedJobs,
    /// `daily_megapixel_steps`: megapixel-steps of the jobs admitted in one UTC day.
    DailyMegapixelSteps,
}

impl Quota {
    /// The quota's configuration key under `[tenants.<name>.quota]`.
    pub const fn key(self) -> &'static str {
        match self {
            Quota::MaxQueuedJobs => "max_queued_jobs",
            Quota::DailyMegapixelSteps => "daily_megapixel_steps",
        }
    }
}

/// The limits [`crate::StatusStore::create_within`] admits a job within, all checked in the
/// same atomic step as the write, after the idempotency key and id (so a retry of an admitted
/// job gets that job even at a limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Most jobs the tenant may have queued or running.
    pub max_in_flight: u64,
    /// Most jobs the tenant may have queued.
    pub max_queued: Option<u64>,
    /// Pixel-steps the tenant's jobs admitted in one UTC day may cost. A job's cost is charged
    /// when it is admitted (from its request record) and given back if it is discarded.
    pub daily_pixel_steps: Option<u64>,
}

impl Admission {
    /// Only the in-flight limit.
    pub const fn in_flight(max_in_flight: u64) -> Admission {
        Admission { max_in_flight, max_queued: None, daily_pixel_steps: None }
    }
}

/// A job record as of one revision: what a read returned or a compare-and-set wrote. A writer
/// that keeps the record its own write returned can start its next compare-and-set from it
/// ([`crate::StatusStore::update_from`]) instead of reading the record again.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    /// The record's revision (1 at creation, +1 per write).
    pub rev: u64,
    /// The status at that revision.
    pub status: JobStatus,
}

/// One page of a tenant's jobs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobPage {
    /// Up to `limit` jobs, newest first.
    pub jobs: Vec<JobStatus>,
    /// Pass this back to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// A change to one job, as published to subscribers and streamed to clients (e.g. over SSE).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The job.
    pub id: Uuid,
    /// Revision of the record after this change (1 at creation, +1 per write). Strictly
    /// increasing per job, so it can serve as an SSE event id and to drop duplicates.
    pub rev: u64,
    /// The job's state after the change.
    pub state: JobState,
    /// The job's progress after the change.
    pub progress: Progress,
    /// The whole status after the change.
    pub status: JobStatus,
}

impl JobEvent {
    /// The event describing `status` at revision `rev`.
    pub fn new(rev: u64, status: JobStatus) -> Self {
        JobEvent { id: status.id, rev, state: status.state, progress: status.progress.clone(), status }
    }
}

/// The batch a worker is running right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchInfo {
    /// Jobs in the batch.
    pub job_ids: Vec<Uuid>,
    /// Images the batch makes in total.
    pub images: u32,
    /// When the batch started.
    pub started_at: DateTime<Utc>,
}

/// What a worker reports about itself every heartbeat interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerHeartbeat {
    /// Unique worker id (also part of its Redis key).
    pub id: String,
    /// Host name the worker runs on.
    pub host: String,
    /// Models the worker serves.
    pub models: Vec<String>,
    /// Device it generates on (`cuda:0`, `cpu`, …).
    pub device: String,
    /// The batch in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_batch: Option<BatchInfo>,
    /// Jobs finished successfully since the worker started.
    pub jobs_done: u64,
    /// Images stored since the worker started.
    pub images_done: u64,
    /// Jobs that failed since the worker started.
    pub jobs_failed: u64,
    /// Forward passes run since the worker started (each over one batch of compatible jobs).
    #[serde(default)]
    pub forward_passes: u64,
    /// Images those passes made: `forward_images / forward_passes` is the mean batch a GPU ran.
    #[serde(default)]
    pub forward_images: u64,
    /// When the worker process started.
    pub started_at: DateTime<Utc>,
    /// When this heartbeat was sent.
    pub last_seen: DateTime<Utc>,
}

/// Per-model job counts since the counters were last reset (they are never expired).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounters {
    /// Jobs created.
    pub accepted: u64,
    /// Jobs that reached `succeeded`.
    pub succeeded: u64,
    /// Jobs that reached `failed`.
    pub failed: u64,
    /// Jobs that reached `cancelled`.
    pub cancelled: u64,
}

/// Whether a request fits the tenant's rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    /// Within the limit.
    Allowed,
    /// Over the limit.
    Limited {
        /// When the current window ends.
        retry_after: std::time::Duration,
    },
}
