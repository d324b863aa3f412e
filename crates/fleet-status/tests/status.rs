//! Integration tests against a real Redis (`FLEET_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379/0`). Each test works under its own random key prefix and deletes its
//! keys at the end, so tests run in parallel and beside other users of the same Redis.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use fleet_core::config::RedisConfig;
use fleet_core::status::IllegalTransition;
use fleet_core::{ErrorCode, JobState, JobStatus, Priority, Progress};
use fleet_status::{
    Admission, BatchInfo, CreateOutcome, JobEvent, StatusError, StatusStore, Versioned, WorkerHeartbeat,
};
use futures::StreamExt;
use uuid::Uuid;

#[path = "status/bulk_runs.rs"]
mod bulk_runs;
#[path = "status/durability.rs"]
mod durability;
#[path = "status/lifecycle.rs"]
mod lifecycle;
#[path = "status/usage.rs"]
mod usage;
#[path = "status/webhooks.rs"]
mod webhooks;

fn redis_url() -> String {
    std::env::var("FLEET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// A config under a fresh prefix.
fn config() -> RedisConfig {
    RedisConfig {
        url: redis_url(),
        key_prefix: format!("fleet-status-test:{}", Uuid::new_v4().simple()),
        ..RedisConfig::default()
    }
}

/// A store plus a plain connection for checking raw keys; deletes its keys on `cleanup`.
struct Fixture {
    store: StatusStore,
    raw: redis::aio::MultiplexedConnection,
    prefix: String,
}

impl Fixture {
    async fn new() -> Self {
        Self::with(config()).await
    }

    async fn with(cfg: RedisConfig) -> Self {
        let store = StatusStore::connect(&cfg).await.expect("Redis for tests must be running");
        // Directly to Redis, even when the store goes through a proxy.
        let raw = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        Fixture { store, raw, prefix: cfg.key_prefix }
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    async fn ttl(&mut self, suffix: &str) -> i64 {
        redis::cmd("TTL").arg(self.key(suffix)).query_async(&mut self.raw).await.unwrap()
    }

    async fn raw_record(&mut self, id: Uuid) -> (String, String) {
        redis::cmd("HMGET")
            .arg(self.key(&format!("job:{id}")))
            .arg("rev")
            .arg("data")
            .query_async(&mut self.raw)
            .await
            .unwrap()
    }

    async fn cleanup(mut self) {
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}:*", self.prefix)).query_async(&mut self.raw).await.unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut self.raw).await.unwrap();
        }
    }
}

fn status_at(tenant: &str, created_at: DateTime<Utc>) -> JobStatus {
    JobStatus {
        id: Uuid::now_v7(),
        tenant: tenant.to_owned(),
        state: JobState::Queued,
        model: "tiny".to_owned(),
        priority: Priority::Interactive,
        progress: Progress { step: 0, steps: 4, images_done: 0, images_total: 2 },
        attempts: 0,
        deliveries: 0,
        handbacks: 0,
        worker: None,
        created_at,
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

fn queued(tenant: &str) -> JobStatus {
    status_at(tenant, Utc::now())
}

async fn created(store: &StatusStore, status: &JobStatus) {
    assert_eq!(store.create(status, None).await.unwrap(), CreateOutcome::Created);
}

#[tokio::test]
async fn create_and_get_round_trip_with_ttls() {
    let mut fx = Fixture::new().await;
    let mut status = queued("alice");
    status.metadata.insert("batch".into(), serde_json::json!("b-7"));
    assert_eq!(fx.store.create(&status, Some("k1")).await.unwrap(), CreateOutcome::Created);
    assert_eq!(fx.store.get(status.id).await.unwrap(), Some(status.clone()));
    assert_eq!(fx.store.get(Uuid::now_v7()).await.unwrap(), None);

    let (rev, _) = fx.raw_record(status.id).await;
    assert_eq!(rev, "1");
    let week = 7 * 24 * 3600;
    for suffix in [format!("job:{}", status.id), "tenant:alice:jobs".into(), "tenant:alice:jobs:queued".into()] {
        let ttl = fx.ttl(&suffix).await;
        assert!((week - 5..=week).contains(&ttl), "{suffix}: ttl {ttl}");
    }
    let ttl = fx.ttl("idem:alice:k1").await;
    assert!((24 * 3600 - 5..=24 * 3600).contains(&ttl), "idem ttl {ttl}");

    // Updates refresh the record's TTL.
    let _: () = redis::cmd("EXPIRE")
        .arg(fx.key(&format!("job:{}", status.id)))
        .arg(100)
        .query_async(&mut fx.raw)
        .await
        .unwrap();
    fx.store.update(status.id, |s| s.start("w1", Utc::now())).await.unwrap();
    assert!(fx.ttl(&format!("job:{}", status.id)).await > week - 5);
    fx.cleanup().await;
}

#[tokio::test]
async fn idempotency_keys_are_per_tenant() {
    let fx = Fixture::new().await;
    let first = queued("alice");
    assert_eq!(fx.store.create(&first, Some("order-1:img")).await.unwrap(), CreateOutcome::Created);

    let retry = queued("alice");
    match fx.store.create(&retry, Some("order-1:img")).await.unwrap() {
        CreateOutcome::Existing(existing) => assert_eq!(existing, first),
        other => panic!("expected Existing, got {other:?}"),
    }
    assert_eq!(fx.store.get(retry.id).await.unwrap(), None, "a retry must not write a record");
    assert_eq!(fx.store.in_flight("alice").await.unwrap(), 1);

    let other_tenant = queued("bob");
    assert_eq!(fx.store.create(&other_tenant, Some("order-1:img")).await.unwrap(), CreateOutcome::Created);

    // The same job id again: an idempotent retry for its tenant, refused for another.
    assert_eq!(fx.store.create(&first, None).await.unwrap(), CreateOutcome::Existing(first.clone()));
    let mut stolen = first.clone();
    stolen.tenant = "mallory".into();
    let err = fx.store.create(&stolen, None).await.unwrap_err();
    assert!(matches!(err, StatusError::Conflict(id) if id == first.id), "{err}");
    assert_eq!(fx.store.counters().await.unwrap()["tiny"].accepted, 2);
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_exactly_one_wins() {
    let fx = Fixture::new().await;
    let status = queued("alice");
    created(&fx.store, &status).await;

    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = fx.store.clone();
            tokio::spawn(async move { store.update(status.id, |s| s.start(&format!("w{i}"), Utc::now())).await })
        })
        .collect();
    let mut won = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(s) => won.push(s),
            Err(StatusError::Illegal(IllegalTransition { from: JobState::Running, to: JobState::Running, .. })) => {
                refused += 1;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!((won.len(), refused), (1, 7));
    let stored = fx.store.get(status.id).await.unwrap().unwrap();
    assert_eq!(stored, won[0]);
    assert_eq!(stored.attempts, 1);
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_progress_writers_all_land() {
    // Writers that do not conflict logically must all succeed through CAS retries.
    let mut fx = Fixture::new().await;
    let status = queued("alice");
    created(&fx.store, &status).await;
    fx.store.update(status.id, |s| s.start("w1", Utc::now())).await.unwrap();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let store = fx.store.clone();
            tokio::spawn(async move {
                store
                    .update(status.id, |s| {
                        s.metadata.insert(format!("n{}", s.metadata.len()), serde_json::json!(1));
                        Ok(())
                    })
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(fx.store.get(status.id).await.unwrap().unwrap().metadata.len(), 6);
    assert_eq!(fx.raw_record(status.id).await.0, "8"); // create + start + 6 writes
    fx.cleanup().await;
}

#[tokio::test]
async fn late_start_after_success_is_refused_and_changes_nothing() {
    let mut fx = Fixture::new().await;
    let status = queued("alice");
    created(&fx.store, &status).await;
    fx.store.update(status.id, |s| s.start("w1", Utc::now())).await.unwrap();
    let done = fx.store.update(status.id, |s| s.succeed(vec![], Utc::now())).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    let before = fx.raw_record(status.id).await;

    let err = fx.store.update(status.id, |s| s.start("w2", Utc::now())).await.unwrap_err();
    assert!(matches!(err, StatusError::Illegal(IllegalTransition { from: JobState::Succeeded, .. })), "{err}");
    assert_eq!(err.code(), ErrorCode::Conflict);
    let err = fx.store.set_progress(status.id, Progress { step: 2, ..done.progress.clone() }).await.unwrap_err();
    assert!(matches!(err, StatusError::Illegal(_)), "{err}");
    assert_eq!(fx.raw_record(status.id).await, before, "a refused update must not write");

    let missing = Uuid::now_v7();
    let err = fx.store.update(missing, |s| s.start("w1", Utc::now())).await.unwrap_err();
    assert!(matches!(err, StatusError::NotFound(id) if id == missing), "{err}");
    assert_eq!(err.code(), ErrorCode::NotFound);
    fx.cleanup().await;
}

#[tokio::test]
async fn list_pages_newest_first_with_filter_and_tenant_isolation() {
    let fx = Fixture::new().await;
    let base = Utc.timestamp_millis_opt(1_760_000_000_000).unwrap();
    let mut jobs = Vec::new();
    // Seven jobs a millisecond apart, then three sharing one millisecond (a batch submission).
    for i in 0..7 {
        jobs.push(status_at("alice", base + chrono::Duration::milliseconds(i)));
    }
    let tied = base + chrono::Duration::milliseconds(100);
    for _ in 0..3 {
        jobs.push(status_at("alice", tied));
    }
    for job in &jobs {
        created(&fx.store, job).await;
    }
    created(&fx.store, &status_at("bob", tied)).await;

    // Expected order: newest first, ties by id descending.
    let mut expected = jobs.clone();
    expected.sort_by_key(|s| std::cmp::Reverse((s.created_at, s.id)));
    let expected: Vec<Uuid> = expected.iter().map(|s| s.id).collect();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = fx.store.list("alice", None, cursor.as_deref(), 3).await.unwrap();
        assert!(page.jobs.len() <= 3);
        pages += 1;
        seen.extend(page.jobs.iter().map(|s| s.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    assert_eq!(pages, 4);
    // Exactly one page when everything fits; no cursor.
    let all = fx.store.list("alice", None, None, 100).await.unwrap();
    assert_eq!((all.jobs.len(), all.next_cursor), (10, None));

    // State filter: run two, finish one.
    fx.store.update(jobs[0].id, |s| s.start("w", Utc::now())).await.unwrap();
    fx.store.update(jobs[8].id, |s| s.start("w", Utc::now())).await.unwrap();
    fx.store.update(jobs[0].id, |s| s.succeed(vec![], Utc::now())).await.unwrap();
    let running = fx.store.list("alice", Some(JobState::Running), None, 10).await.unwrap();
    assert_eq!(running.jobs.iter().map(|s| s.id).collect::<Vec<_>>(), [jobs[8].id]);
    let succeeded = fx.store.list("alice", Some(JobState::Succeeded), None, 10).await.unwrap();
    assert_eq!(succeeded.jobs.iter().map(|s| s.id).collect::<Vec<_>>(), [jobs[0].id]);
    let queued_page = fx.store.list("alice", Some(JobState::Queued), None, 5).await.unwrap();
    assert_eq!(queued_page.jobs.len(), 5);
    let rest = fx.store.list("alice", Some(JobState::Queued), queued_page.next_cursor.as_deref(), 5).await.unwrap();
    assert_eq!((rest.jobs.len(), rest.next_cursor), (3, None));
    assert!(queued_page.jobs.iter().chain(&rest.jobs).all(|s| s.state == JobState::Queued));

    // Tenants see only their own jobs.
    let bob = fx.store.list("bob", None, None, 100).await.unwrap();
    assert_eq!(bob.jobs.len(), 1);
    assert!(bob.jobs.iter().all(|s| s.tenant == "bob"));
    assert!(fx.store.list("carol", None, None, 100).await.unwrap().jobs.is_empty());

    let err = fx.store.list("alice", None, Some("garbage"), 3).await.unwrap_err();
    assert!(matches!(err, StatusError::InvalidCursor(_)), "{err}");
    assert_eq!(err.code(), ErrorCode::InvalidSpec);
    fx.cleanup().await;
}

#[tokio::test]
async fn list_skips_and_prunes_expired_records() {
    let mut fx = Fixture::new().await;
    let jobs: Vec<_> = (0..4).map(|i| status_at("alice", Utc::now() + chrono::Duration::milliseconds(i))).collect();
    for job in &jobs {
        created(&fx.store, job).await;
    }
    // Simulate expiry of the two newest records.
    for job in &jobs[2..] {
        let _: () = redis::cmd("DEL").arg(fx.key(&format!("job:{}", job.id))).query_async(&mut fx.raw).await.unwrap();
    }
    let page = fx.store.list("alice", None, None, 2).await.unwrap();
    assert_eq!(page.jobs.iter().map(|s| s.id).collect::<Vec<_>>(), [jobs[1].id, jobs[0].id]);
    assert_eq!(page.next_cursor, None);
    let left: u64 = redis::cmd("ZCARD").arg(fx.key("tenant:alice:jobs")).query_async(&mut fx.raw).await.unwrap();
    assert_eq!(left, 2);
    fx.cleanup().await;
}

#[tokio::test]
async fn events_stream_current_status_then_changes_in_order() {
    let fx = Fixture::new().await;
    let status = queued("alice");
    created(&fx.store, &status).await;
    let events = fx.store.events(status.id).await.unwrap();

    let writer = fx.store.clone();
    let id = status.id;
    let write = tokio::spawn(async move {
        writer.update(id, |s| s.start("w1", Utc::now())).await?;
        for step in 1..=4 {
            writer.set_progress(id, Progress { step, steps: 4, images_done: 0, images_total: 2 }).await?;
        }
        writer.update(id, |s| s.succeed(vec![], Utc::now())).await?;
        // Written after the terminal event; the stream must have ended already.
        Ok::<_, StatusError>(())
    });
    let collected: Vec<JobEvent> = tokio::time::timeout(Duration::from_secs(10), events.map(Result::unwrap).collect())
        .await
        .expect("the stream must end after the terminal event");
    write.await.unwrap().unwrap();

    let states: Vec<JobState> = collected.iter().map(|e| e.state).collect();
    use JobState::*;
    assert_eq!(states, [Queued, Running, Running, Running, Running, Running, Succeeded]);
    assert_eq!(collected.iter().map(|e| e.rev).collect::<Vec<_>>(), (1..=7).collect::<Vec<_>>());
    assert_eq!(collected.iter().map(|e| e.progress.step).collect::<Vec<_>>(), [0, 0, 1, 2, 3, 4, 4]);
    assert!(collected.iter().all(|e| e.id == status.id && e.status.id == status.id));
    assert_eq!(collected[0].status, status);

    // A finished job's stream is its final status, then the end.
    let finished: Vec<_> = fx.store.events(status.id).await.unwrap().collect().await;
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].as_ref().unwrap().state, Succeeded);

    assert!(matches!(fx.store.events(Uuid::now_v7()).await.err(), Some(StatusError::NotFound(_))));
    fx.cleanup().await;
}

#[tokio::test]
async fn cancel_flag() {
    let mut fx = Fixture::new().await;
    let status = queued("alice");
    created(&fx.store, &status).await;
    assert!(!fx.store.is_cancel_requested(status.id).await.unwrap());
    fx.store.request_cancel(status.id).await.unwrap();
    assert!(fx.store.is_cancel_requested(status.id).await.unwrap());
    assert!(fx.ttl(&format!("cancel:{}", status.id)).await > 7 * 24 * 3600 - 5);
    let missing = Uuid::now_v7();
    assert!(matches!(fx.store.request_cancel(missing).await, Err(StatusError::NotFound(id)) if id == missing));
    assert!(!fx.store.is_cancel_requested(missing).await.unwrap());
    fx.cleanup().await;
}

#[tokio::test]
async fn read_with_cancel_flag_returns_the_record_and_the_flag() {
    let fx = Fixture::new().await;
    let status = queued("alice");
    created(&fx.store, &status).await;
    let (record, cancel) = fx.store.read_with_cancel_flag(status.id).await.unwrap();
    assert_eq!(record, Some(Versioned { rev: 1, status: status.clone() }));
    assert!(!cancel);
    fx.store.request_cancel(status.id).await.unwrap();
    assert!(fx.store.read_with_cancel_flag(status.id).await.unwrap().1, "the flag is seen");
    assert_eq!(fx.store.read_with_cancel_flag(Uuid::now_v7()).await.unwrap(), (None, false));
    fx.cleanup().await;
}

#[tokio::test]
async fn update_from_a_known_record_writes_from_it_and_a_stale_one_is_read_again() {
    let fx = Fixture::new().await;
    let status = queued("alice");
    created(&fx.store, &status).await;
    let (queued_record, _) = fx.store.read_with_cancel_flag(status.id).await.unwrap();
    let running = fx.store.update_from(status.id, queued_record.clone(), |s| s.start("w1", Utc::now())).await.unwrap();
    assert_eq!((running.rev, running.status.state), (2, JobState::Running));
    assert_eq!(
        fx.store.get(status.id).await.unwrap(),
        Some(running.status.clone()),
        "what it returns is what is stored"
    );

    // Someone else writes progress: the worker's record (rev 2) is stale, its write is refused by
    // the compare-and-set and made again on the fresh record, keeping the other write.
    let progress = Progress { step: 3, steps: 4, images_done: 0, images_total: 1 };
    fx.store.set_progress(status.id, progress.clone()).await.unwrap();
    let renamed = fx
        .store
        .update_from(status.id, Some(running.clone()), |s| {
            s.worker = Some("w1-renamed".into());
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(renamed.rev, 4);
    assert_eq!(renamed.status.progress, progress, "the other writer's change is kept");

    // A change that the stale record refuses (start on a running job) is judged on a fresh read,
    // and one the fresh record refuses is refused.
    let stale_queued = queued_record.unwrap();
    let requeued = fx.store.update_from(status.id, Some(stale_queued), |s| s.requeue(Utc::now())).await.unwrap();
    assert_eq!((requeued.rev, requeued.status.state), (5, JobState::Queued));
    fx.store.update(status.id, |s| s.cancel(Utc::now())).await.unwrap();
    let late = fx.store.update_from(status.id, Some(requeued), |s| s.start("w2", Utc::now())).await;
    assert!(matches!(late, Err(StatusError::Illegal(_))), "{late:?}");
    assert_eq!(fx.store.get(status.id).await.unwrap().unwrap().state, JobState::Cancelled);
    fx.cleanup().await;
}

#[tokio::test]
async fn published_mark_needs_a_record_and_survives_updates() {
    let fx = Fixture::new().await;
    let status = queued("alice");
    created(&fx.store, &status).await;
    assert!(!fx.store.is_published(status.id).await.unwrap());
    fx.store.mark_published(status.id).await.unwrap();
    fx.store.update(status.id, |s| s.start("w1", Utc::now())).await.unwrap();
    assert!(fx.store.is_published(status.id).await.unwrap(), "a status write keeps the mark");
    assert_eq!(fx.store.get(status.id).await.unwrap().unwrap().state, JobState::Running);
    let missing = Uuid::now_v7();
    assert!(matches!(fx.store.mark_published(missing).await, Err(StatusError::NotFound(id)) if id == missing));
    assert!(fx.store.get(missing).await.unwrap().is_none(), "no record is made up for a missing job");
    fx.cleanup().await;
}

#[tokio::test]
async fn heartbeats_are_listed_while_alive_and_expire() {
    let cfg = RedisConfig { heartbeat_ttl_secs: 2, ..config() };
    let mut fx = Fixture::with(cfg).await;
    let now = Utc::now();
    let batch_job = Uuid::now_v7();
    let hb = |id: &str| WorkerHeartbeat {
        id: id.to_owned(),
        host: "gpu-1".into(),
        models: vec!["tiny".into()],
        device: "cuda:0".into(),
        current_batch: Some(BatchInfo { job_ids: vec![batch_job], images: 4, started_at: now }),
        jobs_done: 3,
        images_done: 12,
        jobs_failed: 1,
        forward_passes: 2,
        forward_images: 12,
        started_at: now,
        last_seen: now,
    };
    assert!(fx.store.workers().await.unwrap().is_empty());
    fx.store.heartbeat(&hb("w-b")).await.unwrap();
    fx.store.heartbeat(&hb("w-a")).await.unwrap();
    assert_eq!(fx.store.workers().await.unwrap(), [hb("w-a"), hb("w-b")]);

    tokio::time::sleep(Duration::from_millis(1200)).await;
    fx.store.heartbeat(&hb("w-a")).await.unwrap(); // w-a is still alive, w-b went quiet
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // w-b's key has expired now; it must not be listed, and its id must be pruned from the set.
    assert_eq!(fx.store.workers().await.unwrap(), [hb("w-a")]);
    let members: HashSet<String> =
        redis::cmd("SMEMBERS").arg(fx.key("workers")).query_async(&mut fx.raw).await.unwrap();
    assert!(!members.contains("w-b"), "{members:?}");
    fx.cleanup().await;
}

#[tokio::test]
async fn in_flight_and_counters_follow_terminal_transitions_once() {
    let fx = Fixture::new().await;
    let a = queued("alice");
    let b = queued("alice");
    let mut c = queued("alice");
    c.model = "sdxl-lightning-4step".into();
    for job in [&a, &b, &c] {
        created(&fx.store, job).await;
    }
    created(&fx.store, &queued("bob")).await;
    assert_eq!(fx.store.in_flight("alice").await.unwrap(), 3);
    assert_eq!(fx.store.in_flight("bob").await.unwrap(), 1);
    assert_eq!(fx.store.in_flight("carol").await.unwrap(), 0);

    fx.store.update(a.id, |s| s.start("w1", Utc::now())).await.unwrap();
    assert_eq!(fx.store.in_flight("alice").await.unwrap(), 3, "running is still in flight");
    fx.store.update(a.id, |s| s.succeed(vec![], Utc::now())).await.unwrap();
    assert_eq!(fx.store.in_flight("alice").await.unwrap(), 2);
    // A duplicate terminal write (a redelivered job finishing twice) is refused and not counted.
    assert!(fx.store.update(a.id, |s| s.succeed(vec![], Utc::now())).await.is_err());
    assert!(fx.store.update(a.id, |s| s.cancel(Utc::now())).await.is_err());
    assert_eq!(fx.store.in_flight("alice").await.unwrap(), 2);

    fx.store.update(b.id, |s| s.cancel(Utc::now())).await.unwrap();
    fx.store.update(c.id, |s| s.start("w1", Utc::now())).await.unwrap();
    fx.store.update(c.id, |s| s.requeue(Utc::now())).await.unwrap();
    fx.store.update(c.id, |s| s.start("w2", Utc::now())).await.unwrap();
    let err = fleet_core::JobError::new(ErrorCode::Oom, "out of memory");
    fx.store.update(c.id, |s| s.fail(err.clone(), Utc::now())).await.unwrap();
    assert_eq!(fx.store.in_flight("alice").await.unwrap(), 0);

    let counters = fx.store.counters().await.unwrap();
    assert_eq!(counters.keys().collect::<Vec<_>>(), ["sdxl-lightning-4step", "tiny"]);
    let tiny = counters["tiny"];
    assert_eq!((tiny.accepted, tiny.succeeded, tiny.failed, tiny.cancelled), (3, 1, 0, 1));
    let big = counters["sdxl-lightning-4step"];
    assert_eq!((big.accepted, big.succeeded, big.failed, big.cancelled), (1, 0, 1, 0));
    fx.cleanup().await;
}

#[tokio::test]
async fn a_key_or_id_reused_with_another_request_digest_is_a_different_request() {
    let fx = Fixture::new().await;
    let first = queued("alice");
    let created =
        fx.store.create_within(&first, Some("order-9"), Some("digest-a"), &Admission::in_flight(10)).await.unwrap();
    assert_eq!(created, CreateOutcome::Created);
    let (retry, other) = (queued("alice"), queued("alice"));
    let same =
        fx.store.create_within(&retry, Some("order-9"), Some("digest-a"), &Admission::in_flight(10)).await.unwrap();
    assert_eq!(same, CreateOutcome::Existing(first.clone()));
    let different =
        fx.store.create_within(&other, Some("order-9"), Some("digest-b"), &Admission::in_flight(10)).await.unwrap();
    assert_eq!(different, CreateOutcome::DifferentRequest { existing: first.id });
    assert_eq!(fx.store.get(other.id).await.unwrap(), None, "a different request writes nothing");
    assert_eq!(fx.store.in_flight("alice").await.unwrap(), 1);
    // The job's own id again, with another digest: the same answer.
    let by_id = fx.store.create_within(&first, None, Some("digest-b"), &Admission::in_flight(10)).await.unwrap();
    assert_eq!(by_id, CreateOutcome::DifferentRequest { existing: first.id });
    assert_eq!(
        fx.store.create_within(&first, None, None, &Admission::in_flight(10)).await.unwrap(),
        CreateOutcome::Existing(first.clone())
    );

    // A record written without a digest (a worker's, or an older dispatcher's) matches any request.
    let old = queued("alice");
    assert_eq!(fx.store.create(&old, Some("order-10")).await.unwrap(), CreateOutcome::Created);
    let retry = fx
        .store
        .create_within(&queued("alice"), Some("order-10"), Some("digest-c"), &Admission::in_flight(10))
        .await
        .unwrap();
    assert_eq!(retry, CreateOutcome::Existing(old));
    fx.cleanup().await;
}

#[tokio::test]
async fn create_within_refuses_new_jobs_at_the_in_flight_limit_but_not_retries() {
    let fx = Fixture::new().await;
    let first = queued("alice");
    assert_eq!(
        fx.store.create_within(&first, Some("order-1"), None, &Admission::in_flight(2)).await.unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(
        fx.store.create_within(&queued("alice"), None, None, &Admission::in_flight(2)).await.unwrap(),
        CreateOutcome::Created
    );

    // At the limit: nothing is written (no record, no index entry, the key stays free).
    let third = queued("alice");
    assert_eq!(
        fx.store.create_within(&third, Some("order-3"), None, &Admission::in_flight(2)).await.unwrap(),
        CreateOutcome::InFlightLimit { in_flight: 2 }
    );
    assert_eq!(fx.store.get(third.id).await.unwrap(), None);
    assert_eq!(fx.store.in_flight("alice").await.unwrap(), 2);
    let page = fx.store.list("alice", None, None, 10).await.unwrap();
    assert_eq!(page.jobs.len(), 2);
    // A retry of an accepted job still gets that job, and other tenants are not limited.
    let retry = queued("alice");
    assert_eq!(
        fx.store.create_within(&retry, Some("order-1"), None, &Admission::in_flight(2)).await.unwrap(),
        CreateOutcome::Existing(first.clone())
    );
    assert_eq!(
        fx.store.create_within(&queued("bob"), None, None, &Admission::in_flight(2)).await.unwrap(),
        CreateOutcome::Created
    );
    // A job leaving flight makes room; a limit of 0 admits nothing.
    fx.store.update(first.id, |s| s.cancel(Utc::now())).await.unwrap();
    assert_eq!(
        fx.store.create_within(&third, Some("order-3"), None, &Admission::in_flight(2)).await.unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(
        fx.store.create_within(&queued("carol"), None, None, &Admission::in_flight(0)).await.unwrap(),
        CreateOutcome::InFlightLimit { in_flight: 0 }
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn dead_redis_is_unavailable_promptly_with_masked_url() {
    let started = Instant::now();
    let cfg = RedisConfig { url: "redis://127.0.0.1:1/0".into(), ..config() };
    let err = StatusStore::connect(&cfg).await.unwrap_err();
    assert!(matches!(err, StatusError::Unavailable { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::StatusUnavailable);
    assert!(err.to_string().starts_with("Redis at redis://127.0.0.1:1/0 is unavailable: "), "{err}");
    eprintln!("dead port: {err}");

    let cfg = RedisConfig { url: "redis://fleet:hunter2@127.0.0.1:1/0".into(), ..config() };
    let err = StatusStore::connect(&cfg).await.unwrap_err();
    assert!(err.to_string().starts_with("Redis at redis://fleet:***@127.0.0.1:1/0 is unavailable"), "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(6), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn silent_redis_times_out_instead_of_hanging() {
    // A server that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let started = Instant::now();
    let cfg = RedisConfig { url: format!("redis://127.0.0.1:{port}/0"), ..config() };
    let err = StatusStore::connect(&cfg).await.unwrap_err();
    assert!(matches!(err, StatusError::Unavailable { .. }), "{err}");
    eprintln!("silent server: {err} after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    hold.abort();
}

/// Forwards connections on `listener` to Redis until aborted (which drops every connection).
fn spawn_proxy(listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    let target = redis::Client::open(redis_url()).unwrap().get_connection_info().addr.to_string();
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            conns.spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

#[tokio::test]
async fn store_whose_redis_goes_away_fails_promptly_and_reconnects() {
    // Put a TCP proxy we control between the store and Redis, then cut it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = spawn_proxy(listener);
    let mut url = redis_url();
    let authority_start = url.find("://").unwrap() + 3;
    let path_start = url[authority_start..].find('/').map_or(url.len(), |i| i + authority_start);
    url.replace_range(authority_start..path_start, &addr.to_string());
    let fx = Fixture::with(RedisConfig { url, ..config() }).await;
    let status = queued("alice");
    created(&fx.store, &status).await;

    proxy.abort(); // drops the listener and every proxied connection
    let _ = proxy.await;
    let started = Instant::now();
    let err = fx.store.get(status.id).await.unwrap_err();
    assert!(matches!(err, StatusError::Unavailable { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::StatusUnavailable);
    eprintln!("connection cut: {err} after {:?}", started.elapsed());
    let err = fx.store.ping().await.unwrap_err();
    assert!(matches!(err, StatusError::Unavailable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());

    // Redis is back: the same store reconnects by itself.
    let proxy = spawn_proxy(tokio::net::TcpListener::bind(addr).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match fx.store.get(status.id).await {
            Ok(found) => {
                assert_eq!(found, Some(status.clone()));
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert!(matches!(e, StatusError::Unavailable { .. }), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("store did not reconnect: {e}"),
        }
    }
    proxy.abort();
    fx.cleanup().await;
}

#[tokio::test]
async fn in_flight_can_be_recounted() {
    let mut fx = Fixture::new().await;
    let jobs: Vec<_> = (0..4).map(|_| queued("alice")).collect();
    for job in &jobs {
        created(&fx.store, job).await;
    }
    fx.store.update(jobs[0].id, |s| s.start("w1", Utc::now())).await.unwrap();
    fx.store.update(jobs[1].id, |s| s.start("w1", Utc::now())).await.unwrap();
    fx.store.update(jobs[1].id, |s| s.succeed(vec![], Utc::now())).await.unwrap();
    // The record of a queued job expires, and the counter drifts.
    let _: () = redis::cmd("DEL").arg(fx.key(&format!("job:{}", jobs[3].id))).query_async(&mut fx.raw).await.unwrap();
    let _: () = redis::cmd("SET").arg(fx.key("tenant:alice:inflight")).arg(99).query_async(&mut fx.raw).await.unwrap();
    assert_eq!(fx.store.recount_in_flight("alice").await.unwrap(), 2); // jobs[0] running, jobs[2] queued
    assert_eq!(fx.store.in_flight("alice").await.unwrap(), 2);
    assert_eq!(fx.store.recount_in_flight("nobody").await.unwrap(), 0);
    fx.cleanup().await;
}

#[tokio::test]
async fn discard_undoes_an_unpublished_create_only() {
    let fx = Fixture::new().await;
    let lost = queued("alice");
    assert_eq!(fx.store.create(&lost, Some("k")).await.unwrap(), CreateOutcome::Created);
    assert!(fx.store.discard(&lost, Some("k")).await.unwrap());
    assert_eq!(fx.store.get(lost.id).await.unwrap(), None);
    assert_eq!(fx.store.in_flight("alice").await.unwrap(), 0);
    assert!(fx.store.list("alice", None, None, 10).await.unwrap().jobs.is_empty());
    assert_eq!(fx.store.counters().await.unwrap()["tiny"].accepted, 0);
    assert!(!fx.store.discard(&lost, Some("k")).await.unwrap(), "a second discard finds nothing");

    // The client's retry with the same key now creates the job.
    let retry = queued("alice");
    assert_eq!(fx.store.create(&retry, Some("k")).await.unwrap(), CreateOutcome::Created);
    // Once a worker has touched it, it is kept.
    fx.store.update(retry.id, |s| s.start("w1", Utc::now())).await.unwrap();
    assert!(!fx.store.discard(&retry, Some("k")).await.unwrap());
    assert_eq!(fx.store.get(retry.id).await.unwrap().unwrap().state, JobState::Running);
    assert_eq!(fx.store.in_flight("alice").await.unwrap(), 1);
    fx.cleanup().await;
}
