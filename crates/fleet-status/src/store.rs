//! [`StatusStore`]: every Redis operation of the fleet's status layer.

mod lanes;
mod lifecycle;
mod usage;
mod webhooks;

pub use lifecycle::{ExpiredJob, FINISHED_MARKER_SECS, RemovalRequest};
pub use usage::MAX_USAGE_HOURS;
pub use webhooks::MAX_LOGGED_ATTEMPTS;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_core::config::{RedisConfig, mask_url};
use fleet_core::status::IllegalTransition;
use fleet_core::usage::{UsageCounts, day_name, hour_name, pixel_steps, usage_field};
use fleet_core::webhook::{PROGRESS_INTERVAL_MS, WebhookDelivery, WebhookEvent};
use fleet_core::{JobState, JobStatus, Progress};
use futures::{Stream, StreamExt};
use redis::RedisResult;
use redis::aio::{ConnectionManagerConfig, PubSubSink, PubSubStream};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::connection::RedisConn;
use crate::error::StatusError;
use crate::keys::Keys;
use crate::replication::ReplicaWait;
use crate::scripts;
use crate::types::{
    Admission, CreateOutcome, JobEvent, JobPage, QueueCounters, Quota, RateVerdict, Versioned, WorkerHeartbeat,
};

/// Longest a single connection attempt may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest any one store call waits for Redis (including a reconnect the manager is doing)
/// before it returns [`StatusError::Unavailable`]. Callers (HTTP handlers, workers between
/// steps) must never hang on a Redis that stopped answering.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(4);
/// Compare-and-set attempts before an update gives up with [`StatusError::Conflict`].
pub const MAX_CAS_ATTEMPTS: u32 = 16;
/// Largest page [`StatusStore::list`] returns.
pub const MAX_PAGE: usize = 100;

/// States a job can be in, for clearing stale ids out of every index.
const ALL_STATES: [JobState; 5] =
    [JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Cancelled];

/// Job status, idempotency, events, cancellation flags, worker heartbeats and counters in Redis.
///
/// Cheap to clone: clones share one multiplexed connection that reconnects by itself (and,
/// behind Sentinel, follows the primary).
#[derive(Clone)]
pub struct StatusStore {
    /// Also opens the dedicated pub/sub connections that event streams need.
    conn: RedisConn,
    /// The URL with its password masked, for error messages and logs.
    url: String,
    keys: Keys,
    /// Behind Sentinel: the writes that matter wait for a replica (see [`ReplicaWait`]).
    replica_wait: Option<Arc<ReplicaWait>>,
    status_ttl: u64,
    idempotency_ttl: u64,
    heartbeat_ttl: u64,
    usage_ttl: u64,
}

impl std::fmt::Debug for StatusStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusStore").field("url", &self.url).field("keys", &self.keys).finish_non_exhaustive()
    }
}

/// Outcome of one compare-and-set write.
enum CasWrite {
    Written,
    Stale,
    Missing,
}

impl StatusStore {
    /// Connects to Redis and checks that it answers.
    ///
    /// Fails with [`StatusError::Unavailable`] within a few seconds when Redis is down or silent.
    pub async fn connect(cfg: &RedisConfig) -> Result<Self, StatusError> {
        let url = mask_url(&cfg.url);
        let unavailable = |source| StatusError::Unavailable { url: url.clone(), source };
        // One quick retry only: at start-up a clear error beats a long silent backoff, and later
        // the manager reconnects on its own whenever a call finds the connection broken.
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(CALL_TIMEOUT)
            .set_number_of_retries(1)
            .set_factor(100)
            .set_max_delay(500);
        let conn = match tokio::time::timeout(CALL_TIMEOUT, RedisConn::open(cfg, manager_cfg)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(unavailable(e)),
            Err(_) => return Err(StatusError::timed_out(&url, CALL_TIMEOUT)),
        };
        let store = StatusStore {
            conn,
            url,
            keys: Keys::new(&cfg.key_prefix),
            replica_wait: (!cfg.sentinels.is_empty()).then(|| Arc::new(ReplicaWait::default())),
            // A TTL of 0 would make Redis reject EXPIRE/SET EX; one second is the shortest real one.
            status_ttl: cfg.status_ttl_secs.max(1),
            idempotency_ttl: cfg.idempotency_ttl_secs.max(1),
            heartbeat_ttl: cfg.heartbeat_ttl_secs.max(1),
            usage_ttl: cfg.usage_ttl_secs.max(1),
        };
        store.ping().await?;
        Ok(store)
    }

    /// The Redis URL with its password masked.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One `CONFIG GET` value; `None` when Redis has no such setting. A refused `CONFIG` (managed
    /// Redis) is [`StatusError::Corrupt`] with Redis's answer.
    pub(crate) async fn config_get(&self, name: &str) -> Result<Option<String>, StatusError> {
        let mut con = self.conn.clone();
        let query = redis::cmd("CONFIG").arg("GET").arg(name).clone();
        let pairs: Vec<String> = self.call("CONFIG GET", async move { query.query_async(&mut con).await }).await?;
        Ok(pairs.chunks(2).find(|pair| pair[0].eq_ignore_ascii_case(name)).and_then(|pair| pair.get(1).cloned()))
    }

    /// The text of `INFO <section>`.
    pub(crate) async fn info(&self, section: &str) -> Result<String, StatusError> {
        let mut con = self.conn.clone();
        let query = redis::cmd("INFO").arg(section).clone();
        self.call("INFO", async move { query.query_async(&mut con).await }).await
    }

    /// Checks that Redis answers (for readiness probes).
    pub async fn ping(&self) -> Result<(), StatusError> {
        let mut con = self.conn.clone();
        let pong: String = self.call("PING", async move { redis::cmd("PING").query_async(&mut con).await }).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StatusError::Corrupt { key: "PING".into(), message: format!("unexpected reply `{pong}`") })
        }
    }

    /// Records a new job atomically: if `idempotency_key` is given and this tenant already used it,
    /// returns [`CreateOutcome::Existing`] with that job's status and writes nothing. Otherwise
    /// writes the record (revision 1, status TTL), adds it to the tenant's indexes, claims the
    /// idempotency key, counts it in flight and as accepted for its model.
    ///
    /// A job id that already exists is treated the same way for its own tenant (a client retrying
    /// with its own id) and refused with [`StatusError::Conflict`] for any other tenant.
    ///
    /// Call it before publishing the job; if the publish then fails, call [`Self::discard`].
    pub async fn create(
        &self,
        status: &JobStatus,
        idempotency_key: Option<&str>,
    ) -> Result<CreateOutcome, StatusError> {
        self.create_limited(status, idempotency_key, None, None).await
    }

    /// [`Self::create`] with the digest of the request the job was submitted with, as
    /// [`Self::create_within`] writes it but without admission: for records rebuilt from what
    /// the job left (its stored images, its message), so its idempotency key still refuses a
    /// different request.
    pub async fn create_for_request(
        &self,
        status: &JobStatus,
        idempotency_key: Option<&str>,
        request_digest: Option<&str>,
    ) -> Result<CreateOutcome, StatusError> {
        self.create_limited(status, idempotency_key, request_digest, None).await
    }

    /// [`Self::create`] with admission: if the tenant already has `max_in_flight` or more jobs
    /// queued or running, writes nothing and returns [`CreateOutcome::InFlightLimit`]; if the job
    /// would take it over a quota, writes nothing and returns [`CreateOutcome::QuotaExceeded`].
    /// Checked in the same atomic step as the write, so concurrent submissions cannot overshoot a
    /// limit, and after the idempotency key and id, so a retry of an accepted job gets that job
    /// even at a limit. The daily budget is charged with the job's pixel-steps (from its request
    /// record) on the UTC day of its `created_at`.
    ///
    /// `request_digest` (of the client's request, `ValidJob::request_digest`) is kept with the
    /// record; a later create that finds the job by its idempotency key or id with another digest
    /// gets [`CreateOutcome::DifferentRequest`] instead of the job. A record without a digest
    /// (written by [`Self::create`] or an older version) matches any request.
    pub async fn create_within(
        &self,
        status: &JobStatus,
        idempotency_key: Option<&str>,
        request_digest: Option<&str>,
        admission: &Admission,
    ) -> Result<CreateOutcome, StatusError> {
        self.create_limited(status, idempotency_key, request_digest, Some(admission)).await
    }

    async fn create_limited(
        &self,
        status: &JobStatus,
        idempotency_key: Option<&str>,
        request_digest: Option<&str>,
        admission: Option<&Admission>,
    ) -> Result<CreateOutcome, StatusError> {
        let job_key = self.keys.job(status.id);
        let data = to_json(&job_key, status)?;
        let terminal_field = if status.state.is_terminal() { status.state.as_str() } else { "" };
        let limit = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
        let cost = status.request.as_ref().map_or(0, |r| pixel_steps(r.width, r.height, r.steps, r.num_images));
        let mut invocation = scripts::CREATE.prepare_invoke();
        invocation
            .key(&job_key)
            .key(self.keys.tenant_jobs(&status.tenant))
            .key(self.keys.tenant_state(&status.tenant, status.state))
            .key(self.keys.idem(&status.tenant, idempotency_key.unwrap_or("")))
            .key(self.keys.in_flight(&status.tenant))
            .key(self.keys.counters(&status.model))
            .key(self.keys.models())
            .key(self.charge_key(status))
            .key(self.keys.expiry())
            .key(self.keys.cancel(status.id))
            .arg(data)
            .arg(self.status_ttl)
            .arg(status.created_at.timestamp_millis())
            .arg(status.id.to_string())
            .arg(self.idempotency_ttl)
            .arg(if idempotency_key.is_some() { "1" } else { "0" })
            .arg(self.keys.job_prefix())
            .arg(&status.tenant)
            .arg(if status.state.is_terminal() { "0" } else { "1" })
            .arg(&status.model)
            .arg(terminal_field)
            .arg(limit(admission.map(|a| a.max_in_flight)))
            .arg(request_digest.unwrap_or_default())
            .arg(limit(admission.and_then(|a| a.max_queued)))
            .arg(limit(admission.and_then(|a| a.daily_pixel_steps)))
            .arg(cost)
            // Two days: the counter outlives its day wherever the clocks of Redis and the
            // dispatchers differ.
            .arg(2 * 24 * 3600);
        self.expiry_args(&mut invocation, status);
        let mut con = self.conn.clone();
        let reply: Vec<String> = self.call(&job_key, async move { invocation.invoke_async(&mut con).await }).await?;
        match reply.as_slice() {
            [tag] if tag == "created" => {
                self.replicated().await?;
                Ok(CreateOutcome::Created)
            }
            [tag, n] if tag == "limited" => match n.parse() {
                Ok(in_flight) => Ok(CreateOutcome::InFlightLimit { in_flight }),
                Err(_) => Err(StatusError::Corrupt {
                    key: self.keys.in_flight(&status.tenant),
                    message: format!("in-flight count `{n}` is not a number"),
                }),
            },
            [tag, name, used] if tag == "quota" => {
                let quota = match name.as_str() {
                    "max_queued_jobs" => Quota::MaxQueuedJobs,
                    _ => Quota::DailyMegapixelSteps,
                };
                let used = used.parse().map_err(|_| StatusError::Corrupt {
                    key: self.charge_key(status),
                    message: format!("quota use `{used}` is not a number"),
                })?;
                Ok(CreateOutcome::QuotaExceeded { quota, used })
            }
            [tag] if tag == "taken" => Err(StatusError::Conflict(status.id)),
            [tag, id] if tag == "different" => match id.parse() {
                Ok(existing) => Ok(CreateOutcome::DifferentRequest { existing }),
                Err(_) => Err(StatusError::Corrupt { key: job_key, message: format!("job id `{id}` is not a UUID") }),
            },
            [tag, data] if tag == "existing" => Ok(CreateOutcome::Existing(from_json(&job_key, data)?)),
            other => Err(StatusError::Corrupt { key: job_key, message: format!("create script replied {other:?}") }),
        }
    }

    /// Undoes [`Self::create`] for a job that never reached the queue (the publish failed), so the
    /// client's retry with the same idempotency key creates it afresh instead of getting back a
    /// job that will never run, and the tenant's in-flight count is not left one too high.
    ///
    /// Pass the status and key given to `create`. Only a record nobody has written since its
    /// creation is removed; returns `false` (and changes nothing) if the job is gone or has moved
    /// on — e.g. a worker already started it because the publish did go through after all.
    pub async fn discard(&self, status: &JobStatus, idempotency_key: Option<&str>) -> Result<bool, StatusError> {
        let job_key = self.keys.job(status.id);
        let mut invocation = scripts::DISCARD.prepare_invoke();
        invocation
            .key(&job_key)
            .key(self.keys.tenant_jobs(&status.tenant))
            .key(self.keys.tenant_state(&status.tenant, status.state))
            .key(self.keys.idem(&status.tenant, idempotency_key.unwrap_or("")))
            .key(self.keys.in_flight(&status.tenant))
            .key(self.keys.counters(&status.model))
            .key(self.charge_key(status))
            .arg(status.id.to_string())
            .arg(if idempotency_key.is_some() { "1" } else { "0" })
            .arg(if status.state.is_terminal() { "0" } else { "1" });
        let mut con = self.conn.clone();
        let discarded: i64 = self.call(&job_key, async move { invocation.invoke_async(&mut con).await }).await?;
        Ok(discarded == 1)
    }

    /// The job's current status, or `None` if there is no such job (or it expired).
    pub async fn get(&self, id: Uuid) -> Result<Option<JobStatus>, StatusError> {
        Ok(self.read_record(id).await?.map(|record| record.status))
    }

    /// Applies `change` to the job with compare-and-set: reads the record and its revision, applies
    /// the change to a copy, and writes it only if nobody wrote in between, retrying (up to
    /// [`MAX_CAS_ATTEMPTS`]) with the fresh record when someone did.
    ///
    /// If `change` refuses (an [`IllegalTransition`]) nothing is written and the refusal is returned
    /// as [`StatusError::Illegal`], so a late or duplicate writer can never move a finished job
    /// backwards. A change that leaves the status as it was writes nothing and publishes nothing.
    ///
    /// Each write publishes a [`JobEvent`] on the job's channel and refreshes the status TTL; the
    /// write that takes the job into a terminal state also takes it out of the tenant's in-flight
    /// count and bumps its model's counter, exactly once.
    ///
    /// `change` must not alter `id`, `tenant`, `model` or `created_at` (they key the indexes);
    /// doing so is refused with [`StatusError::Corrupt`].
    pub async fn update<F>(&self, id: Uuid, change: F) -> Result<JobStatus, StatusError>
    where
        F: FnMut(&mut JobStatus) -> Result<(), IllegalTransition> + Send,
    {
        Ok(self.update_from(id, None, change).await?.status)
    }

    /// [`Self::update`], starting from `known` — a record this caller read or wrote earlier —
    /// instead of reading the record first: when nobody wrote since, the change costs one round
    /// trip instead of two. A stale `known` costs nothing in correctness: the compare-and-set
    /// refuses it, and a refusal, an unchanged status or a mismatched id on it is judged again on
    /// a fresh read. Returns the record as written (or as found, when the change changed nothing).
    pub async fn update_from<F>(
        &self,
        id: Uuid,
        known: Option<Versioned>,
        mut change: F,
    ) -> Result<Versioned, StatusError>
    where
        F: FnMut(&mut JobStatus) -> Result<(), IllegalTransition> + Send,
    {
        let mut known = known.filter(|k| k.status.id == id);
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let from_known = known.is_some();
            let Versioned { rev, status: current } = match known.take() {
                Some(record) => record,
                None => self.read_record(id).await?.ok_or(StatusError::NotFound(id))?,
            };
            let mut next = current.clone();
            if let Err(refused) = change(&mut next) {
                if from_known {
                    continue;
                }
                return Err(refused.into());
            }
            if next.id != current.id
                || next.tenant != current.tenant
                || next.model != current.model
                || next.created_at != current.created_at
            {
                return Err(StatusError::Corrupt {
                    key: self.keys.job(id),
                    message: "an update tried to change the job's id, tenant, model or creation time".into(),
                });
            }
            if next == current {
                if from_known {
                    continue;
                }
                return Ok(Versioned { rev, status: current });
            }
            match self.write_if(rev, &current, &next).await? {
                CasWrite::Written => return Ok(Versioned { rev: rev + 1, status: next }),
                CasWrite::Missing => return Err(StatusError::NotFound(id)),
                CasWrite::Stale if from_known => {
                    tracing::debug!(job = %id, "the known record was stale; reading the current one");
                }
                CasWrite::Stale => {
                    tracing::debug!(job = %id, attempt, "job record changed under us; retrying update");
                    // Someone else wrote first. Back off a little (more each time, with jitter) so
                    // a crowd of writers does not keep colliding in lock step.
                    if attempt >= 2 {
                        let jitter = u64::from(std::process::id() ^ attempt ^ u32::from(id.as_fields().1)) % 5;
                        tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 2 + jitter)).await;
                    }
                }
            }
        }
        tracing::warn!(job = %id, attempts = MAX_CAS_ATTEMPTS, "giving up on a contended job update");
        Err(StatusError::Conflict(id))
    }

    /// Records progress of a running job (same compare-and-set and event as [`Self::update`],
    /// no state change). Refused with [`StatusError::Illegal`] unless the job is running, so a
    /// progress report that arrives after the job finished changes nothing.
    pub async fn set_progress(&self, id: Uuid, progress: Progress) -> Result<JobStatus, StatusError> {
        self.update(id, move |status| {
            if status.state != JobState::Running {
                return Err(IllegalTransition { id: status.id, from: status.state, to: JobState::Running });
            }
            status.progress = progress.clone();
            Ok(())
        })
        .await
    }

    /// A page of the tenant's jobs, newest first (by creation time), optionally only those in
    /// `state`. `limit` is clamped to 1..=[`MAX_PAGE`]. Pass `next_cursor` back to continue;
    /// jobs created after the first page was read appear only when listing again from the start.
    pub async fn list(
        &self,
        tenant: &str,
        state: Option<JobState>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage, StatusError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let index = match state {
            Some(state) => self.keys.tenant_state(tenant, state),
            None => self.keys.tenant_jobs(tenant),
        };
        let mut position = cursor.map(parse_cursor).transpose()?;
        // One more than asked, to know whether a next page exists.
        let mut found: Vec<(i64, JobStatus)> = Vec::with_capacity(limit + 1);
        loop {
            let want = limit + 1 - found.len();
            let ids = self.index_after(&index, position.as_ref(), want).await?;
            let exhausted = ids.len() < want;
            let records = self.read_data(ids.iter().map(|(_, id)| id.as_str())).await?;
            let mut stale = Vec::new();
            for ((score, id), data) in ids.into_iter().zip(records) {
                let key = format!("{}{id}", self.keys.job_prefix());
                match data {
                    Some(data) => {
                        let status: JobStatus = from_json(&key, &data)?;
                        // The index is moved in the same script as the record, but a filtered
                        // read can still race a write between the two reads; trust the record.
                        if state.is_none_or(|s| s == status.state) && status.tenant == tenant {
                            found.push((score, status));
                        }
                    }
                    // The record expired before its index entry was cleaned up.
                    None => stale.push(id.clone()),
                }
                position = Some((score, id));
            }
            if !stale.is_empty() {
                self.prune_index(tenant, &stale).await?;
            }
            if found.len() > limit || exhausted {
                break;
            }
        }
        let next_cursor = if found.len() > limit {
            found.truncate(limit);
            found.last().map(|(score, status)| format!("{score}:{}", status.id))
        } else {
            None
        };
        Ok(JobPage { jobs: found.into_iter().map(|(_, status)| status).collect(), next_cursor })
    }

    /// A stream of the job's events: first its current status, then every change, ending after
    /// the event that makes it terminal (at once if it already is).
    ///
    /// The subscription is made before the current status is read, so no change can fall between
    /// the two; changes seen in both are sent once (by revision). Each stream holds its own Redis
    /// connection until dropped. If that connection breaks, the stream yields
    /// [`StatusError::Unavailable`] and ends; a client can reconnect and will get the current
    /// status again.
    pub async fn events(
        &self,
        id: Uuid,
    ) -> Result<impl Stream<Item = Result<JobEvent, StatusError>> + Send + use<>, StatusError> {
        let channel = self.keys.events(id);
        let conn = self.conn.clone();
        let mut pubsub = self.call(&channel, async move { conn.client().await?.get_async_pubsub().await }).await?;
        let subscribe_to = channel.clone();
        let (sink, messages) = self
            .call(&channel, async move {
                pubsub.subscribe(&subscribe_to).await?;
                Ok(pubsub.split())
            })
            .await?;
        let Versioned { rev, status: current } = self.read_record(id).await?.ok_or(StatusError::NotFound(id))?;
        let state = EventState {
            _sink: sink,
            messages,
            first: Some(JobEvent::new(rev, current)),
            last_rev: rev,
            done: false,
            url: self.url.clone(),
            channel,
        };
        Ok(futures::stream::unfold(state, EventState::next))
    }

    /// Flags the job for cancellation; workers check the flag between denoising steps. The flag
    /// lives as long as a status record. [`StatusError::NotFound`] if the job does not exist.
    pub async fn request_cancel(&self, id: Uuid) -> Result<(), StatusError> {
        let key = self.keys.cancel(id);
        let mut invocation = scripts::REQUEST_CANCEL.prepare_invoke();
        invocation.key(self.keys.job(id)).key(&key).arg(self.status_ttl);
        let mut con = self.conn.clone();
        let set: i64 = self.call(&key, async move { invocation.invoke_async(&mut con).await }).await?;
        if set == 1 { Ok(()) } else { Err(StatusError::NotFound(id)) }
    }

    /// Notes that the job's message was published, so that a retry with the same idempotency key
    /// knows it need not publish again. A job that does not exist is left alone (`NotFound`).
    pub async fn mark_published(&self, id: Uuid) -> Result<(), StatusError> {
        self.mark_published_as(id, "1").await
    }

    /// [`Self::mark_published`] after a second publish of the job: two of its messages may exist,
    /// so removing it later keeps its cancel flag for the status TTL (see [`Self::remove`]).
    pub async fn mark_published_again(&self, id: Uuid) -> Result<(), StatusError> {
        self.mark_published_as(id, "again").await
    }

    async fn mark_published_as(&self, id: Uuid, mark: &str) -> Result<(), StatusError> {
        let key = self.keys.job(id);
        let mut invocation = scripts::MARK_PUBLISHED.prepare_invoke();
        invocation.key(&key).arg(mark);
        let mut con = self.conn.clone();
        let set: i64 = self.call(&key, async move { invocation.invoke_async(&mut con).await }).await?;
        if set != 1 {
            return Err(StatusError::NotFound(id));
        }
        self.replicated().await
    }

    /// Whether [`Self::mark_published`] was called for the job. `false` for a job recorded by a
    /// dispatcher that died before its publish was confirmed (or a job that does not exist).
    pub async fn is_published(&self, id: Uuid) -> Result<bool, StatusError> {
        let key = self.keys.job(id);
        let mut con = self.conn.clone();
        let query = redis::cmd("HEXISTS").arg(&key).arg("published").clone();
        let n: u64 = self.call(&key, async move { query.query_async(&mut con).await }).await?;
        Ok(n > 0)
    }

    /// The job's record (`None` if there is no such job) and whether its cancellation was
    /// requested, in one round trip: what a worker needs before it starts a job.
    pub async fn read_with_cancel_flag(&self, id: Uuid) -> Result<(Option<Versioned>, bool), StatusError> {
        let key = self.keys.job(id);
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(&key).arg("rev").arg("data").exists(self.keys.cancel(id));
        let mut con = self.conn.clone();
        let (fields, cancel): ((Option<String>, Option<String>), u64) =
            self.call(&key, async move { pipe.query_async(&mut con).await }).await?;
        Ok((parse_record(&key, fields)?, cancel > 0))
    }

    /// Whether cancellation of the job was requested.
    pub async fn is_cancel_requested(&self, id: Uuid) -> Result<bool, StatusError> {
        let key = self.keys.cancel(id);
        let mut con = self.conn.clone();
        let query = redis::cmd("EXISTS").arg(&key).clone();
        let n: u64 = self.call(&key, async move { query.query_async(&mut con).await }).await?;
        Ok(n > 0)
    }

    /// How many of the tenant's jobs are queued or running (for per-tenant admission limits).
    pub async fn in_flight(&self, tenant: &str) -> Result<u64, StatusError> {
        let key = self.keys.in_flight(tenant);
        let mut con = self.conn.clone();
        let query = redis::cmd("GET").arg(&key).clone();
        let n: Option<i64> = self.call(&key, async move { query.query_async(&mut con).await }).await?;
        // A negative value can only come from outside this crate; it means "none in flight".
        Ok(n.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }

    /// Recomputes the tenant's in-flight count from its queued and running jobs and stores it.
    ///
    /// The count is kept exact by the create and update scripts; this repairs it after something
    /// outside them (a record of a job stuck queued or running expired, keys were lost or edited).
    /// It reads every queued and running id of the tenant in one script, so run it as an
    /// occasional admin task, not per request.
    pub async fn recount_in_flight(&self, tenant: &str) -> Result<u64, StatusError> {
        let key = self.keys.in_flight(tenant);
        let mut invocation = scripts::RECOUNT_IN_FLIGHT.prepare_invoke();
        invocation
            .key(&key)
            .key(self.keys.tenant_state(tenant, JobState::Queued))
            .key(self.keys.tenant_state(tenant, JobState::Running))
            .arg(self.keys.job_prefix());
        let mut con = self.conn.clone();
        self.call(&key, async move { invocation.invoke_async(&mut con).await }).await
    }

    /// Counts one request of the tenant against `per_second` requests per wall-clock second.
    ///
    /// A fixed window in Redis, so the limit holds across every dispatcher replica; a burst
    /// straddling a second boundary can reach twice the limit, which is the usual price of a
    /// one-round-trip limiter. The counter of a second expires two seconds later.
    pub async fn count_request(&self, tenant: &str, per_second: u32) -> Result<RateVerdict, StatusError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let key = self.keys.rate(tenant, now.as_secs());
        let mut pipe = redis::pipe();
        pipe.atomic().incr(&key, 1u64).expire(&key, 2).ignore();
        let mut con = self.conn.clone();
        let (count,): (u64,) = self.call(&key, async move { pipe.query_async(&mut con).await }).await?;
        if count <= u64::from(per_second) {
            return Ok(RateVerdict::Allowed);
        }
        // The window ends at the next whole second; round up so clients never retry early.
        let retry_after_ms = 1000 - u64::from(now.subsec_millis());
        Ok(RateVerdict::Limited { retry_after: Duration::from_millis(retry_after_ms) })
    }

    /// Records a worker's heartbeat; it counts as alive for the heartbeat TTL.
    pub async fn heartbeat(&self, hb: &WorkerHeartbeat) -> Result<(), StatusError> {
        let key = self.keys.worker(&hb.id);
        let data = to_json(&key, hb)?;
        let workers = self.keys.workers();
        let mut pipe = redis::pipe();
        // The set expires only when no worker has sent a heartbeat for a whole TTL, i.e. when
        // every worker it names is gone anyway.
        pipe.atomic()
            .set_ex(&key, data, self.heartbeat_ttl)
            .ignore()
            .sadd(&workers, &hb.id)
            .ignore()
            .expire(&workers, i64::try_from(self.heartbeat_ttl).unwrap_or(i64::MAX))
            .ignore();
        let seen = hb.last_seen.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let fields: Vec<(&str, &str)> = hb.models.iter().map(|m| (m.as_str(), seen.as_str())).collect();
        if !fields.is_empty() {
            pipe.hset_multiple(self.keys.models_seen(), &fields).ignore();
        }
        let mut con = self.conn.clone();
        self.call(&key, async move { pipe.query_async::<()>(&mut con).await }).await
    }

    /// When a worker serving `model` last sent a heartbeat (alive or gone since); `None` if
    /// none ever did.
    pub async fn model_last_served(&self, model: &str) -> Result<Option<DateTime<Utc>>, StatusError> {
        let key = self.keys.models_seen();
        let mut con = self.conn.clone();
        let query = redis::cmd("HGET").arg(&key).arg(model).clone();
        let value: Option<String> = self.call(&key, async move { query.query_async(&mut con).await }).await?;
        Ok(value.and_then(|v| DateTime::parse_from_rfc3339(&v).ok()).map(|t| t.with_timezone(&Utc)))
    }

    /// Workers whose heartbeat has not expired, by id. Ids of expired workers are pruned from the
    /// set; a heartbeat that cannot be parsed is skipped (and logged) rather than hiding the rest.
    pub async fn workers(&self) -> Result<Vec<WorkerHeartbeat>, StatusError> {
        let set = self.keys.workers();
        let mut con = self.conn.clone();
        let query = redis::cmd("SMEMBERS").arg(&set).clone();
        let mut ids: Vec<String> = self.call(&set, async move { query.query_async(&mut con).await }).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        ids.sort();
        let keys: Vec<String> = ids.iter().map(|id| self.keys.worker(id)).collect();
        let mut con = self.conn.clone();
        let query = redis::cmd("MGET").arg(&keys).clone();
        let values: Vec<Option<String>> = self.call(&set, async move { query.query_async(&mut con).await }).await?;
        let mut alive = Vec::new();
        let mut expired = Vec::new();
        for ((id, key), value) in ids.iter().zip(&keys).zip(values) {
            match value {
                Some(data) => match serde_json::from_str::<WorkerHeartbeat>(&data) {
                    Ok(hb) => alive.push(hb),
                    Err(e) => tracing::warn!(key = %key, error = %e, "skipping unreadable worker heartbeat"),
                },
                None => expired.push(id.as_str()),
            }
        }
        if !expired.is_empty() {
            let mut invocation = scripts::PRUNE_WORKERS.prepare_invoke();
            invocation.key(&set).arg(self.keys.worker_prefix()).arg(&expired);
            let mut con = self.conn.clone();
            let _removed: i64 = self.call(&set, async move { invocation.invoke_async(&mut con).await }).await?;
        }
        Ok(alive)
    }

    /// Job counts per model: accepted, succeeded, failed, cancelled.
    pub async fn counters(&self) -> Result<BTreeMap<String, QueueCounters>, StatusError> {
        let models_key = self.keys.models();
        let mut con = self.conn.clone();
        let query = redis::cmd("SMEMBERS").arg(&models_key).clone();
        let models: Vec<String> = self.call(&models_key, async move { query.query_async(&mut con).await }).await?;
        if models.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut pipe = redis::pipe();
        for model in &models {
            pipe.hgetall(self.keys.counters(model));
        }
        let mut con = self.conn.clone();
        let hashes: Vec<HashMap<String, u64>> =
            self.call(&models_key, async move { pipe.query_async(&mut con).await }).await?;
        Ok(models
            .into_iter()
            .zip(hashes)
            .map(|(model, h)| {
                let get = |field: &str| h.get(field).copied().unwrap_or(0);
                let counters = QueueCounters {
                    accepted: get("accepted"),
                    succeeded: get("succeeded"),
                    failed: get("failed"),
                    cancelled: get("cancelled"),
                };
                (model, counters)
            })
            .collect())
    }

    // ---- internals ----

    /// The daily-budget counter a job is charged to: its tenant's, on its creation day.
    fn charge_key(&self, status: &JobStatus) -> String {
        self.keys.quota_day(&status.tenant, &day_name(status.created_at))
    }

    /// Behind Sentinel, after a write that matters: `WAIT 1` until a replica has it, so that a
    /// failover (which promotes the most up-to-date replica) keeps it. A replica that does not
    /// answer within [`ReplicaWait::TIMEOUT`] pauses the waiting for a while, so a fleet whose
    /// replica is down runs on its primary alone at full speed (and logs it).
    async fn replicated(&self) -> Result<(), StatusError> {
        let Some(wait) = &self.replica_wait else { return Ok(()) };
        if wait.paused() {
            return Ok(());
        }
        let mut con = self.conn.clone();
        let timeout_ms = u64::try_from(ReplicaWait::TIMEOUT.as_millis()).unwrap_or(u64::MAX);
        let query = redis::cmd("WAIT").arg(1).arg(timeout_ms).clone();
        let acked: i64 = self.call("WAIT", async move { query.query_async(&mut con).await }).await?;
        if acked < 1 {
            wait.pause();
            tracing::warn!(
                redis = %self.url,
                "no replica took the last write within {timeout_ms} ms; writing to the primary alone for {} s \
                 (a failover now may lose the latest writes)",
                ReplicaWait::PAUSE.as_secs()
            );
        }
        Ok(())
    }

    /// Runs one Redis call under [`CALL_TIMEOUT`] and sorts its error; `key` names what it touched.
    async fn call<T>(&self, key: &str, fut: impl Future<Output = RedisResult<T>>) -> Result<T, StatusError> {
        match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StatusError::from_redis(&self.url, key, e)),
            Err(_) => Err(StatusError::timed_out(&self.url, CALL_TIMEOUT)),
        }
    }

    /// The record's revision and status, or `None` if it does not exist.
    async fn read_record(&self, id: Uuid) -> Result<Option<Versioned>, StatusError> {
        let key = self.keys.job(id);
        let mut con = self.conn.clone();
        let query = redis::cmd("HMGET").arg(&key).arg("rev").arg("data").clone();
        let fields: (Option<String>, Option<String>) =
            self.call(&key, async move { query.query_async(&mut con).await }).await?;
        parse_record(&key, fields)
    }

    /// The `data` field of each job (by id string), `None` for those that no longer exist.
    async fn read_data<'a>(&self, ids: impl Iterator<Item = &'a str>) -> Result<Vec<Option<String>>, StatusError> {
        let mut pipe = redis::pipe();
        let mut any = false;
        for id in ids {
            pipe.hget(format!("{}{id}", self.keys.job_prefix()), "data");
            any = true;
        }
        if !any {
            return Ok(Vec::new());
        }
        let mut con = self.conn.clone();
        self.call("job records", async move { pipe.query_async(&mut con).await }).await
    }

    /// Up to `count` (score, id) entries of a tenant index, newest first, strictly after `after`
    /// in that order (score descending, then id descending, as `ZRANGE … REV` orders ties).
    async fn index_after(
        &self,
        index: &str,
        after: Option<&(i64, String)>,
        count: usize,
    ) -> Result<Vec<(i64, String)>, StatusError> {
        let mut out = Vec::with_capacity(count);
        let upper = match after {
            None => "+inf".to_owned(),
            Some((score, last_id)) => {
                // Jobs created in the same millisecond share a score (a batch submission can
                // share one timestamp); take those that sort after the cursor first.
                let ties = self.zrange_rev(index, &score.to_string(), &score.to_string(), None).await?;
                out.extend(ties.into_iter().filter(|(_, id)| id.as_str() < last_id.as_str()).take(count));
                format!("({score}")
            }
        };
        if out.len() < count {
            let rest = self.zrange_rev(index, &upper, "-inf", Some(count - out.len())).await?;
            out.extend(rest);
        }
        Ok(out)
    }

    /// `ZRANGE index upper lower BYSCORE REV [LIMIT 0 count] WITHSCORES` as (score, member).
    async fn zrange_rev(
        &self,
        index: &str,
        upper: &str,
        lower: &str,
        count: Option<usize>,
    ) -> Result<Vec<(i64, String)>, StatusError> {
        let mut query = redis::cmd("ZRANGE");
        query.arg(index).arg(upper).arg(lower).arg("BYSCORE").arg("REV");
        if let Some(count) = count {
            query.arg("LIMIT").arg(0).arg(count);
        }
        query.arg("WITHSCORES");
        let mut con = self.conn.clone();
        let flat: Vec<String> = self.call(index, async move { query.query_async(&mut con).await }).await?;
        flat.chunks(2)
            .map(|pair| match pair {
                [member, score] => score
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite())
                    // Scores are creation times in ms, well inside f64's exact integer range.
                    .map(|s| (s as i64, member.clone()))
                    .ok_or_else(|| StatusError::Corrupt {
                        key: index.to_owned(),
                        message: format!("score `{score}` of {member} is not a time in ms"),
                    }),
                _ => Err(StatusError::Corrupt { key: index.to_owned(), message: "odd ZRANGE WITHSCORES reply".into() }),
            })
            .collect()
    }

    /// Removes ids of expired records from all of a tenant's indexes.
    async fn prune_index(&self, tenant: &str, ids: &[String]) -> Result<(), StatusError> {
        let mut pipe = redis::pipe();
        pipe.zrem(self.keys.tenant_jobs(tenant), ids).ignore();
        for state in ALL_STATES {
            pipe.zrem(self.keys.tenant_state(tenant, state), ids).ignore();
        }
        let mut con = self.conn.clone();
        self.call(&self.keys.tenant_jobs(tenant), async move { pipe.query_async::<()>(&mut con).await }).await
    }

    /// Writes `next` over the record if its revision is still `rev`, with all side effects
    /// (indexes, counters, event) in the same script.
    async fn write_if(&self, rev: u64, current: &JobStatus, next: &JobStatus) -> Result<CasWrite, StatusError> {
        let id = next.id;
        let key = self.keys.job(id);
        let data = to_json(&key, next)?;
        let event = to_json(&key, &JobEvent::new(rev + 1, next.clone()))?;
        let finishes = !current.state.is_terminal() && next.state.is_terminal();
        let now = Utc::now();
        let delivery = WebhookDelivery::of_change(current, next, rev + 1, now)
            .map_err(|e| StatusError::Corrupt { key: key.clone(), message: format!("cannot serialise: {e}") })?;
        let throttle = match &delivery {
            Some(d) if d.event == WebhookEvent::Progress => PROGRESS_INTERVAL_MS.to_string(),
            _ => String::new(),
        };
        let delivery = delivery.map(|d| to_json(&key, &d)).transpose()?.unwrap_or_default();
        let usage_hour = self.keys.usage_hour(&hour_name(next.finished_at.unwrap_or_else(Utc::now)));
        let mut invocation = scripts::UPDATE.prepare_invoke();
        invocation
            .key(&key)
            .key(self.keys.tenant_state(&next.tenant, current.state))
            .key(self.keys.tenant_state(&next.tenant, next.state))
            .key(self.keys.tenant_jobs(&next.tenant))
            .key(self.keys.in_flight(&next.tenant))
            .key(self.keys.counters(&next.model))
            .key(usage_hour)
            .key(self.keys.usage_totals())
            .key(self.keys.expiry())
            .key(self.keys.webhook_outbox())
            .arg(rev.to_string())
            .arg(data)
            .arg(self.status_ttl)
            .arg(id.to_string())
            .arg(next.created_at.timestamp_millis())
            .arg(if finishes { "1" } else { "0" })
            .arg(next.state.as_str())
            .arg(self.keys.events(id))
            .arg(event)
            .arg(self.usage_ttl);
        self.expiry_args(&mut invocation, next);
        invocation.arg(delivery).arg(throttle).arg(now.timestamp_millis());
        if finishes {
            for (metric, n) in UsageCounts::of_finished(next).fields() {
                invocation.arg(usage_field(&next.tenant, &next.model, metric)).arg(n);
            }
        }
        let mut con = self.conn.clone();
        let reply: i64 = self.call(&key, async move { invocation.invoke_async(&mut con).await }).await?;
        Ok(match reply {
            -1 => CasWrite::Missing,
            0 => CasWrite::Stale,
            _ => {
                // A state change is what a failover must not undo; progress may be lost.
                if current.state != next.state {
                    self.replicated().await?;
                }
                CasWrite::Written
            }
        })
    }
}

/// State of one event stream between items.
struct EventState {
    /// Held only to keep the subscription's connection open for as long as the stream lives.
    _sink: PubSubSink,
    messages: PubSubStream,
    /// The current status, sent before any published event.
    first: Option<JobEvent>,
    /// Highest revision sent, to drop events already covered by `first`.
    last_rev: u64,
    done: bool,
    url: String,
    channel: String,
}

impl EventState {
    async fn next(mut self) -> Option<(Result<JobEvent, StatusError>, Self)> {
        if self.done {
            return None;
        }
        if let Some(event) = self.first.take() {
            self.done = event.state.is_terminal();
            return Some((Ok(event), self));
        }
        loop {
            let Some(msg) = self.messages.next().await else {
                self.done = true;
                let err = StatusError::closed(&self.url, "the event subscription was closed");
                return Some((Err(err), self));
            };
            match serde_json::from_slice::<JobEvent>(msg.get_payload_bytes()) {
                Ok(event) if event.rev <= self.last_rev => continue,
                Ok(event) => {
                    self.last_rev = event.rev;
                    self.done = event.state.is_terminal();
                    return Some((Ok(event), self));
                }
                // Something else published on our channel; report it but keep listening, the
                // job's own events may still come.
                Err(e) => {
                    let err = StatusError::Corrupt { key: self.channel.clone(), message: format!("bad event: {e}") };
                    return Some((Err(err), self));
                }
            }
        }
    }
}

/// `"{created ms}:{id}"`, the position of the last job of a page.
fn parse_cursor(cursor: &str) -> Result<(i64, String), StatusError> {
    let invalid = || StatusError::InvalidCursor(cursor.to_owned());
    let (score, id) = cursor.split_once(':').ok_or_else(invalid)?;
    let score = score.parse::<i64>().map_err(|_| invalid())?;
    let id = Uuid::parse_str(id).map_err(|_| invalid())?;
    Ok((score, id.to_string()))
}

/// A record from its `rev` and `data` fields (`HMGET key rev data`).
fn parse_record(key: &str, fields: (Option<String>, Option<String>)) -> Result<Option<Versioned>, StatusError> {
    match fields {
        (None, None) => Ok(None),
        (Some(rev), Some(data)) => {
            let rev = rev.parse::<u64>().map_err(|e| StatusError::Corrupt {
                key: key.to_owned(),
                message: format!("rev `{rev}` is not a number: {e}"),
            })?;
            Ok(Some(Versioned { rev, status: from_json(key, &data)? }))
        }
        _ => Err(StatusError::Corrupt { key: key.to_owned(), message: "record lacks its rev or data field".into() }),
    }
}

fn to_json<T: serde::Serialize>(key: &str, value: &T) -> Result<String, StatusError> {
    serde_json::to_string(value)
        .map_err(|e| StatusError::Corrupt { key: key.to_owned(), message: format!("cannot serialise: {e}") })
}

fn from_json<T: DeserializeOwned>(key: &str, data: &str) -> Result<T, StatusError> {
    serde_json::from_str(data).map_err(|e| StatusError::Corrupt { key: key.to_owned(), message: e.to_string() })
}
