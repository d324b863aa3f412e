//! The job status model and its checked state machine:
//! `queued → running → succeeded | failed | cancelled`.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error_code::ErrorCode;
use crate::job::{ImageFormat, Priority};
use crate::request_record::RequestRecord;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Accepted and durably on the queue.
    Queued,
    /// A worker is generating it.
    Running,
    /// Every image is in storage.
    Succeeded,
    /// It ended with an error; see `error`.
    Failed,
    /// Its owner cancelled it.
    Cancelled,
}

impl JobState {
    /// Whether nothing can happen to the job any more.
    pub const fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether `self → next` is a legal transition.
    ///
    /// `running → queued` is legal: a worker that dies mid-batch leaves its jobs to be redelivered.
    /// `queued → failed` covers jobs refused before any worker ran them (dead-lettered, unknown LoRA).
    pub const fn can_become(self, next: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, next),
            (Queued, Running | Failed | Cancelled) | (Running, Succeeded | Failed | Cancelled | Queued)
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An illegal state change was asked for; nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {id}: illegal transition {from} → {to}")]
pub struct IllegalTransition {
    pub id: Uuid,
    pub from: JobState,
    pub to: JobState,
}

/// How far a running job is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Progress {
    /// Denoising step the current batch is on (1-based; 0 before the first).
    pub step: u32,
    /// Steps per image.
    pub steps: u32,
    /// Images finished and stored.
    pub images_done: u32,
    /// Images this job makes.
    pub images_total: u32,
}

/// One stored result image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageResult {
    /// Index within the job (0-based).
    pub index: u32,
    /// Object key in the bucket (`<prefix>/<tenant>/<job id>/<index>.<ext>`).
    pub key: String,
    /// Seed this image was made with.
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub format: ImageFormat,
    /// Hex SHA-256 of the stored bytes.
    pub sha256: String,
    /// Size of the stored object.
    pub bytes: u64,
    /// A URL that fetches the image without credentials (presigned on each read by the
    /// dispatcher, never stored); absent when images are in a local directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// When `url` stops working (`s3.presign_ttl_secs` after the read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_expires_at: Option<DateTime<Utc>>,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobError {
    /// Stable machine code.
    pub code: ErrorCode,
    /// Human explanation.
    pub message: String,
    /// Whether submitting the same job again may succeed. False for a job that failed on its
    /// last allowed attempt (`rabbitmq.delivery_limit`), whatever the code: its retries are spent.
    pub retryable: bool,
}

impl JobError {
    /// An error whose `retryable` follows the code's table entry.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        JobError { code, message: message.into(), retryable: code.retryable() }
    }

    /// The error of a job whose last allowed attempt failed: not retryable, whatever its code,
    /// and the message says the attempts are spent.
    pub fn after_last_attempt(self, attempts: u32) -> Self {
        JobError {
            message: format!("{} (failed on its last allowed attempt, {attempts} in all)", self.message),
            retryable: false,
            ..self
        }
    }
}

/// Everything known about one job, as served to clients and stored in Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobStatus {
    pub id: Uuid,
    pub tenant: String,
    pub state: JobState,
    pub model: String,
    pub priority: Priority,
    #[serde(default)]
    pub progress: Progress,
    /// Times a worker has started this job (real starts, whatever ended them).
    #[serde(default)]
    pub attempts: u32,
    /// Returns of the job's message the broker counted against `rabbitmq.delivery_limit` when a
    /// worker last started it (its `x-delivery-count`): crashes, lost connections, outages. A
    /// clean hand-back (a worker stopping) is not among them, see `handbacks`.
    #[serde(default)]
    pub deliveries: u32,
    /// Times a worker that stopped cleanly handed the job back unstarted (its message published
    /// afresh, so the broker's count did not grow), as of its last start.
    #[serde(default)]
    pub handbacks: u32,
    /// The worker that runs (or last ran) it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub result: Vec<ImageResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// The job's `metadata`, untouched.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Why a queued job is not starting, e.g. "no worker serves model X; last seen …". Set by the
    /// dispatcher in its answers (never stored): the job stays queued, since workers may scale
    /// from zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// What the job asked for (absent from records written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestRecord>,
    /// Seconds the job is kept after it finishes (its `retention`, else its tenant's default);
    /// absent from records written before retention was kept, which expire as they always did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_secs: Option<u64>,
    /// When the job's images and record are removed: `retention_secs` after `finished_at`
    /// (set when it finishes). Removal happens at the next sweep after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl JobStatus {
    /// The status of a job just accepted onto the queue.
    pub fn queued(job: &crate::ValidJob, now: DateTime<Utc>) -> Option<Self> {
        let spec = job.spec();
        let mut status = Self::fresh(spec.id?, spec.tenant.as_deref()?, &spec.model, spec.priority, now);
        status.progress = Progress { step: 0, steps: spec.steps, images_done: 0, images_total: spec.num_images };
        status.metadata = spec.metadata.clone();
        status.request = Some(RequestRecord::of(spec));
        status.retention_secs = spec.retention;
        Some(status)
    }

    /// The record of a message that is not a valid job but names one: `failed` with `error`
    /// (`invalid_spec` and every validation error), so its producer finds out why. `model` is
    /// empty when the message named none.
    pub fn refused(
        id: Uuid,
        tenant: &str,
        model: &str,
        priority: Priority,
        error: JobError,
        now: DateTime<Utc>,
    ) -> Self {
        let mut status = Self::fresh(id, tenant, model, priority, now);
        (status.state, status.finished_at, status.error) = (JobState::Failed, Some(now), Some(error));
        status
    }

    /// A queued record with nothing but its identity.
    fn fresh(id: Uuid, tenant: &str, model: &str, priority: Priority, now: DateTime<Utc>) -> Self {
        JobStatus {
            id,
            tenant: tenant.to_owned(),
            state: JobState::Queued,
            model: model.to_owned(),
            priority,
            progress: Progress::default(),
            attempts: 0,
            deliveries: 0,
            handbacks: 0,
            worker: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            result: Vec::new(),
            error: None,
            metadata: serde_json::Map::new(),
            waiting_for: None,
            request: None,
            retention_secs: None,
            expires_at: None,
        }
    }

    fn transition(&mut self, to: JobState, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        if !self.state.can_become(to) {
            return Err(IllegalTransition { id: self.id, from: self.state, to });
        }
        self.state = to;
        if to.is_terminal() {
            self.finished_at = Some(now);
            self.expires_at = self.retention_secs.and_then(|secs| expiry(now, secs));
        }
        Ok(())
    }

    /// The job is kept `secs` seconds after it finishes.
    pub fn with_retention(mut self, secs: u64) -> Self {
        self.retention_secs = Some(secs);
        self
    }

    /// A worker picked the job up.
    pub fn start(&mut self, worker: &str, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        self.transition(JobState::Running, now)?;
        self.attempts += 1;
        self.worker = Some(worker.to_owned());
        self.started_at = Some(now);
        self.progress.step = 0;
        Ok(())
    }

    /// What the broker and clean hand-backs say about the message a worker starts the job from:
    /// its `x-delivery-count` and the hand-backs it carries (see `deliveries`, `handbacks`).
    pub fn note_delivery(&mut self, deliveries: u32, handbacks: u32) {
        (self.deliveries, self.handbacks) = (deliveries, handbacks);
    }

    /// The worker died or gave the job back; it waits on the queue again.
    pub fn requeue(&mut self, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        self.transition(JobState::Queued, now)
    }

    /// Every image is stored.
    pub fn succeed(&mut self, result: Vec<ImageResult>, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        self.transition(JobState::Succeeded, now)?;
        self.progress.images_done = u32::try_from(result.len()).unwrap_or(u32::MAX);
        self.progress.step = self.progress.steps;
        self.result = result;
        Ok(())
    }

    /// The job ended with an error.
    pub fn fail(&mut self, error: JobError, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        self.transition(JobState::Failed, now)?;
        self.error = Some(error);
        Ok(())
    }

    /// Its owner cancelled it. `finished_at` says when; the message says where it stopped (the
    /// progress last recorded), which `progress` keeps too.
    pub fn cancel(&mut self, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        let was = self.state;
        self.transition(JobState::Cancelled, now)?;
        let p = &self.progress;
        let message = if was == JobState::Running {
            format!(
                "cancelled by its owner while running, at step {}/{} of image {}/{}",
                p.step,
                p.steps,
                (p.images_done + 1).min(p.images_total),
                p.images_total
            )
        } else {
            "cancelled by its owner before it started".to_owned()
        };
        self.error = Some(JobError::new(ErrorCode::Cancelled, message));
        Ok(())
    }
}

/// `secs` after `finished`; `None` past the calendar's end (no expiry rather than a wrong one).
fn expiry(finished: DateTime<Utc>, secs: u64) -> Option<DateTime<Utc>> {
    finished.checked_add_signed(chrono::TimeDelta::try_seconds(i64::try_from(secs).ok()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobSpec, Limits};

    fn queued() -> JobStatus {
        let job = JobSpec::new("x").validate(&Limits::default()).unwrap().assign("t", Uuid::now_v7);
        JobStatus::queued(&job, Utc::now()).unwrap()
    }

    #[test]
    fn happy_path() {
        let mut s = queued();
        s.start("w1", Utc::now()).unwrap();
        assert_eq!((s.state, s.attempts), (JobState::Running, 1));
        s.succeed(vec![], Utc::now()).unwrap();
        assert_eq!(s.state, JobState::Succeeded);
        assert!(s.finished_at.is_some());
    }

    #[test]
    fn finishing_sets_the_expiry_from_the_retention() {
        let now = Utc::now();
        let mut kept = queued().with_retention(3600);
        assert_eq!(kept.expires_at, None, "not before it finishes");
        kept.cancel(now).unwrap();
        assert_eq!(kept.expires_at, Some(now + chrono::TimeDelta::seconds(3600)));
        let mut unlimited = queued();
        unlimited.fail(JobError::new(ErrorCode::Internal, "x"), now).unwrap();
        assert_eq!(unlimited.expires_at, None, "a record without retention expires as it always did");
        let mut far = queued().with_retention(u64::MAX);
        far.cancel(now).unwrap();
        assert_eq!(far.expires_at, None, "beyond the calendar: no expiry rather than a wrong one");
    }

    #[test]
    fn redelivery_counts_attempts() {
        let mut s = queued();
        s.start("w1", Utc::now()).unwrap();
        s.requeue(Utc::now()).unwrap();
        s.start("w2", Utc::now()).unwrap();
        s.note_delivery(1, 2);
        assert_eq!(s.attempts, 2);
        assert_eq!((s.deliveries, s.handbacks), (1, 2), "the broker's count and clean hand-backs, kept apart");
        assert_eq!(s.worker.as_deref(), Some("w2"));
    }

    #[test]
    fn terminal_states_are_final_and_nothing_is_applied() {
        let mut s = queued();
        s.cancel(Utc::now()).unwrap();
        let before = s.clone();
        let err = s.start("w1", Utc::now()).unwrap_err();
        assert_eq!((err.from, err.to), (JobState::Cancelled, JobState::Running));
        assert_eq!(s, before);
        assert!(s.succeed(vec![], Utc::now()).is_err());
    }

    #[test]
    fn a_cancel_says_when_and_where_the_job_stopped() {
        let mut s = queued();
        s.cancel(Utc::now()).unwrap();
        assert!(s.finished_at.is_some());
        assert_eq!(s.error.unwrap().message, "cancelled by its owner before it started");
        let mut s = queued();
        s.start("w1", Utc::now()).unwrap();
        s.progress = Progress { step: 3, steps: 4, images_done: 1, images_total: 2 };
        s.cancel(Utc::now()).unwrap();
        assert_eq!(s.error.unwrap().message, "cancelled by its owner while running, at step 3/4 of image 2/2");
    }

    #[test]
    fn the_record_keeps_the_request() {
        let mut spec = JobSpec::new("a red bicycle");
        spec.negative_prompt = Some("blur".into());
        spec.loras = vec![crate::LoraRef::library("style", 0.5)];
        spec.seed = Some(9);
        let job = spec.validate(&Limits::default()).unwrap().assign("t", Uuid::now_v7);
        let request = JobStatus::queued(&job, Utc::now()).unwrap().request.unwrap();
        assert_eq!((request.prompt.as_str(), request.negative_prompt.as_deref()), ("a red bicycle", Some("blur")));
        assert_eq!((request.seed, request.width, request.steps, request.loras.len()), (9, 1024, 4, 1));
        // A record written before the request was kept still reads.
        let mut old = serde_json::to_value(JobStatus::queued(&job, Utc::now()).unwrap()).unwrap();
        old.as_object_mut().unwrap().remove("request");
        assert_eq!(serde_json::from_value::<JobStatus>(old).unwrap().request, None);
    }

    #[test]
    fn an_error_after_the_last_attempt_is_not_retryable() {
        let outage = JobError::new(ErrorCode::StorageUnavailable, "S3 down");
        assert!(outage.retryable, "the table's default");
        let last = outage.after_last_attempt(4);
        assert!(!last.retryable);
        assert_eq!(last.code, ErrorCode::StorageUnavailable);
        assert_eq!(last.message, "S3 down (failed on its last allowed attempt, 4 in all)");
    }

    #[test]
    fn transition_table() {
        use JobState::*;
        let all = [Queued, Running, Succeeded, Failed, Cancelled];
        let legal: Vec<_> =
            all.iter().flat_map(|a| all.iter().map(move |b| (*a, *b))).filter(|(a, b)| a.can_become(*b)).collect();
        assert_eq!(
            legal,
            [
                (Queued, Running),
                (Queued, Failed),
                (Queued, Cancelled),
                (Running, Queued),
                (Running, Succeeded),
                (Running, Failed),
                (Running, Cancelled)
            ]
        );
    }
}
