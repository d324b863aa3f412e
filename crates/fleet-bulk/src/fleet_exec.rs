//! Making samples through the fleet: job arrays to the dispatcher at `bulk` priority, job states
//! read from the fleet's Redis, images read from its image store.
//!
//! Every job carries the idempotency key `bulk/<run>/<key>` and an id derived from it
//! ([`job_id`]), so submitting a sample again (a resume after the CLI died) returns the job
//! already made for it instead of a second one: by key while the key lives
//! (`redis.idempotency_ttl_secs`), by id while the job's record lives (`redis.status_ttl_secs`,
//! or its retention). What a resume finds neither way, the run's staging in the output still
//! holds if it was made (see [`crate::staging`]). A
//! sample whose earlier job failed before this invocation, or was made by an earlier invocation
//! and cancelled (whenever the cancel took effect), gets one new attempt under a key suffixed
//! with this invocation's tag.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fleet_core::{ErrorCode, JobState, JobStatus};
use fleet_status::StatusStore;
use fleet_storage::ImageStore;
use uuid::Uuid;

use crate::api::{ApiClient, Submitted};
use crate::error::BulkError;
use crate::exec::{Finished, ImageSource};
use crate::record::SampleRecord;
use crate::registry::Registry;
use crate::sample::{Sample, idempotency_key, job_id};

/// Job states read concurrently per round trip.
const READ_CHUNK: usize = 256;
/// Deletion requests (each a batch of jobs) under way at once; the run waits for one to end
/// before it starts another beyond this.
const RELEASES_IN_FLIGHT: usize = 4;
/// Wait before submitting again what the dispatcher refused as retryable.
const REFUSED_BACKOFF: Duration = Duration::from_secs(2);
/// Wait before submitting again what a tenant quota refused: quotas free up as queued jobs start
/// or at the next UTC day, so the run pauses rather than fails.
const QUOTA_BACKOFF: Duration = Duration::from_secs(15);

/// A sample the fleet is working on.
struct Pending {
    sample: Sample,
    /// Already a new attempt: its outcome is final whatever it is.
    fresh: bool,
}

/// The services a fleet run talks to.
pub struct FleetServices {
    pub api: ApiClient,
    pub status: StatusStore,
    pub images: ImageStore,
    pub registry: Registry,
}

/// Samples in the fleet's hands.
pub struct FleetExecutor {
    run: String,
    services: FleetServices,
    batch: usize,
    poll_every: Duration,
    in_flight: HashMap<Uuid, Pending>,
    again: VecDeque<(Sample, bool)>,
    again_at: Instant,
    started: DateTime<Utc>,
    attempt: String,
    running: u64,
    /// A job of this run ended `cancelled` since the last [`FleetExecutor::take_saw_cancelled`].
    saw_cancelled: bool,
    /// Leave the jobs of staged samples in the fleet (`--keep-jobs`) instead of deleting them.
    keep_jobs: bool,
    /// Deletions of staged samples' jobs under way.
    releasing: tokio::task::JoinSet<()>,
}

impl FleetExecutor {
    /// An executor for run `run`, submitting `batch` jobs per request; with `keep_jobs` the jobs
    /// of staged samples stay in the fleet for their retention instead of being deleted.
    pub fn new(run: &str, services: FleetServices, batch: usize, keep_jobs: bool) -> FleetExecutor {
        let started = Utc::now();
        FleetExecutor {
            run: run.to_owned(),
            services,
            batch: batch.max(1),
            poll_every: Duration::from_millis(300),
            in_flight: HashMap::new(),
            again: VecDeque::new(),
            again_at: Instant::now(),
            started,
            attempt: format!("a{}", started.timestamp_millis()),
            running: 0,
            saw_cancelled: false,
            keep_jobs,
            releasing: tokio::task::JoinSet::new(),
        }
    }

    pub fn batch_size(&self) -> usize {
        self.batch
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len() + self.again.len()
    }

    /// (queued, running) as of the last poll.
    pub fn counts(&self) -> (u64, u64) {
        let running = self.running.min(self.in_flight.len() as u64);
        (self.in_flight() as u64 - running, running)
    }

    /// Whether a job ended `cancelled` since the last call: most likely `fleet bulk cancel` at
    /// work, so the runner looks for its marker before it publishes such a sample as failed.
    pub fn take_saw_cancelled(&mut self) -> bool {
        std::mem::take(&mut self.saw_cancelled)
    }

    /// Submits valid samples.
    pub async fn submit(&mut self, samples: Vec<Sample>) -> Result<Vec<Finished>, BulkError> {
        self.submit_batch(samples.into_iter().map(|s| (s, false)).collect()).await
    }

    async fn submit_batch(&mut self, samples: Vec<(Sample, bool)>) -> Result<Vec<Finished>, BulkError> {
        let mut finished = Vec::new();
        let mut specs = Vec::with_capacity(samples.len());
        let mut sent = Vec::with_capacity(samples.len());
        for (sample, fresh) in samples {
            match &sample.job {
                Ok(spec) => {
                    let mut spec = spec.clone();
                    if fresh {
                        spec.idempotency_key = Some(idempotency_key(&self.run, &sample.key, Some(&self.attempt)));
                    }
                    spec.id = spec.idempotency_key.as_deref().map(job_id);
                    specs.push(spec);
                    sent.push((sample, fresh));
                }
                Err(_) => finished.push(Finished::failed(&sample, ErrorCode::InvalidSpec, "invalid row")),
            }
        }
        if specs.is_empty() {
            return Ok(finished);
        }
        let answers = self.services.api.submit(&specs).await?;
        let (mut added, mut ended) = (Vec::new(), Vec::new());
        for ((sample, fresh), answer) in sent.into_iter().zip(answers) {
            match answer {
                Submitted::Accepted(status) => {
                    let id = status.id;
                    if let Some(done) = self.settle(sample, fresh, &status) {
                        finished.push(done);
                    } else if self.in_flight.contains_key(&id) {
                        added.push(id);
                    }
                    // A job an earlier invocation left in the run's job set and that ended while
                    // no process drove the run: no longer unfinished.
                    if status.state.is_terminal() {
                        ended.push(id);
                    }
                }
                Submitted::Refused { retryable: true, code, message } => {
                    let wait = if code == ErrorCode::QuotaExceeded {
                        tracing::warn!(%message, "over quota: the run pauses until the dispatcher admits its jobs again");
                        QUOTA_BACKOFF
                    } else {
                        REFUSED_BACKOFF
                    };
                    self.again.push_back((sample, fresh));
                    self.again_at = Instant::now() + wait;
                }
                Submitted::Refused { code, message, .. } => finished.push(Finished::failed(&sample, code, message)),
            }
        }
        self.services.registry.add_jobs(&self.run, &added).await?;
        self.services.registry.remove_jobs(&self.run, &ended).await?;
        Ok(finished)
    }

    /// A final outcome for the sample, or `None` when it is (again) in flight.
    fn settle(&mut self, sample: Sample, fresh: bool, status: &JobStatus) -> Option<Finished> {
        if !status.state.is_terminal() {
            self.in_flight.insert(status.id, Pending { sample, fresh });
            return None;
        }
        let stale = status.finished_at.is_none_or(|at| at < self.started);
        // A job an earlier invocation made and then cancelled: a cancel takes effect when a worker
        // notices it, which can be after this invocation started (a resume right after a cancel).
        let cancelled_earlier = status.state == JobState::Cancelled && status.created_at < self.started;
        if status.state != JobState::Succeeded && !fresh && (stale || cancelled_earlier) {
            // Failed or cancelled before this invocation (e.g. a run cancelled, then resumed): one new attempt.
            self.again.push_back((sample, true));
            return None;
        }
        self.saw_cancelled |= status.state == JobState::Cancelled;
        let mut record = SampleRecord::of(&sample);
        record.apply_status(status);
        let image = match status.result.first() {
            Some(image) if status.state == JobState::Succeeded => ImageSource::Store(image.key.clone()),
            _ => ImageSource::None,
        };
        Some(Finished { index: sample.index, record, image })
    }

    /// Resubmits refused samples when their backoff is over, waits a tick, and reads the state of
    /// every job in flight.
    pub async fn poll(&mut self) -> Result<Vec<Finished>, BulkError> {
        let mut finished = Vec::new();
        if !self.again.is_empty() && Instant::now() >= self.again_at {
            let n = self.again.len().min(self.batch);
            let retry: Vec<_> = self.again.drain(..n).collect();
            finished.extend(self.submit_batch(retry).await?);
        }
        tokio::time::sleep(self.poll_every).await;
        let ids: Vec<Uuid> = self.in_flight.keys().copied().collect();
        let mut done = Vec::new();
        let mut running = 0;
        for chunk in ids.chunks(READ_CHUNK) {
            let reads = futures::future::join_all(chunk.iter().map(|id| self.services.status.get(*id))).await;
            for (id, read) in chunk.iter().zip(reads) {
                match read {
                    Ok(Some(status)) if status.state.is_terminal() => done.push(status),
                    Ok(Some(status)) => running += u64::from(status.state == JobState::Running),
                    Ok(None) => {
                        // The record expired or was discarded: the sample needs a new job.
                        if let Some(p) = self.in_flight.remove(id) {
                            self.again.push_back((p.sample, true));
                        }
                    }
                    Err(e) => tracing::warn!(job = %id, error = %e, "job state not readable; will ask again"),
                }
            }
        }
        self.running = running;
        let ids: Vec<Uuid> = done.iter().map(|s| s.id).collect();
        for status in done {
            if let Some(p) = self.in_flight.remove(&status.id) {
                finished.extend(self.settle(p.sample, p.fresh, &status));
            }
        }
        self.services.registry.remove_jobs(&self.run, &ids).await?;
        Ok(finished)
    }

    /// An image from the fleet's store (transient failures retried a few times).
    pub async fn image(&self, key: &str) -> Result<Vec<u8>, BulkError> {
        let mut delay = Duration::from_millis(200);
        for _ in 0..5 {
            match self.services.images.get(key).await {
                Ok(Some(object)) => return Ok(object.body),
                Ok(None) => return Err(BulkError::Config(format!("image `{key}` is missing from the image store"))),
                Err(e) if e.is_transient() => {
                    tracing::warn!(key, error = %e, "image store unavailable; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(BulkError::Config(format!("image `{key}`: the image store kept failing")))
    }

    /// Deletes the jobs of samples now staged in the output (their records, idempotency keys and
    /// images), so the fleet holds only the run's unfinished work however large the run: a
    /// resume takes staged samples without asking the fleet. The requests run beside the run
    /// (at most [`RELEASES_IN_FLIGHT`] at once); a failed deletion is logged and leaves those
    /// jobs for their retention.
    pub async fn release(&mut self, ids: &[Uuid]) {
        if self.keep_jobs {
            return;
        }
        for chunk in ids.chunks(self.batch) {
            while self.releasing.try_join_next().is_some() {}
            if self.releasing.len() >= RELEASES_IN_FLIGHT {
                self.releasing.join_next().await;
            }
            let (api, chunk) = (self.services.api.clone(), chunk.to_vec());
            self.releasing.spawn(delete_jobs(api, chunk));
        }
    }

    /// Waits for the deletions under way (before a shard is written, at the end of a run).
    pub async fn finish_releases(&mut self) {
        while self.releasing.join_next().await.is_some() {}
    }

    /// Cancels every job in flight.
    pub async fn cancel(&mut self) -> Result<(), BulkError> {
        let ids: Vec<Uuid> = self.in_flight.keys().copied().collect();
        for id in &ids {
            self.services.api.cancel(*id).await?;
        }
        self.in_flight.clear();
        self.again.clear();
        self.services.registry.remove_jobs(&self.run, &ids).await
    }
}

/// Deletes the jobs of staged samples, asking once more for those a service failed on; what
/// still fails is logged and stays for its retention.
async fn delete_jobs(api: ApiClient, ids: Vec<Uuid>) {
    let failed = match api.delete(&ids).await {
        Ok(failed) if failed.is_empty() => return,
        Ok(failed) => {
            tokio::time::sleep(REFUSED_BACKOFF).await;
            api.delete(&failed).await
        }
        Err(e) => Err(e),
    };
    match failed {
        Ok(failed) if failed.is_empty() => {}
        Ok(failed) => tracing::warn!(
            jobs = failed.len(),
            first = %failed[0],
            "jobs of staged samples not deleted (a service failed twice); they stay for their retention"
        ),
        Err(e) => tracing::warn!(
            jobs = ids.len(),
            error = %e,
            "jobs of staged samples not deleted; they stay for their retention"
        ),
    }
}
