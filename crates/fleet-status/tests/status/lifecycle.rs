//! The end of a job's life on the Redis side: a finished job joins the expiry set at its expiry
//! (its record and indexes kept at least that long), sweepers claim due jobs under a lease, and a
//! removal takes the record and its index entries and leaves usage alone.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use fleet_core::{JobState, JobStatus};
use fleet_status::{CreateOutcome, ExpiredJob, FINISHED_MARKER_SECS, RemovalRequest, StatusError, StatusStore};
use uuid::Uuid;

use super::{Fixture, queued};

/// A lease longer than any test: a claimed job stays claimed.
const LEASE: Duration = Duration::from_secs(300);

/// `tenant`'s job kept `retention_secs`, created, started and cancelled; its record as written.
async fn finished(store: &StatusStore, tenant: &str, retention_secs: u64) -> JobStatus {
    let status = queued(tenant).with_retention(retention_secs);
    store.create(&status, None).await.unwrap();
    store.update(status.id, |s| s.start("w1", Utc::now())).await.unwrap();
    store.update(status.id, |s| s.cancel(Utc::now())).await.unwrap()
}

fn ms(time: chrono::DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

#[tokio::test]
async fn a_finished_job_joins_the_expiry_set_and_keeps_its_record_and_indexes_until_then() {
    let mut fx = Fixture::new().await;
    let week: i64 = 7 * 24 * 3600;
    let month: i64 = 30 * 24 * 3600;
    let long = finished(&fx.store, "alice", month as u64).await;
    let expires = long.expires_at.expect("a finished job with a retention expires");
    assert_eq!(expires, long.finished_at.unwrap() + TimeDelta::seconds(month));
    assert_eq!(fx.store.get(long.id).await.unwrap().unwrap().expires_at, Some(expires), "the record says when");
    assert_eq!(fx.store.removal_due("alice", long.id).await.unwrap(), Some(ms(expires)));
    // Longer than the status TTL: the record and the indexes listing it live past the expiry.
    for suffix in [format!("job:{}", long.id), "tenant:alice:jobs".into(), "tenant:alice:jobs:cancelled".into()] {
        let ttl = fx.ttl(&suffix).await;
        assert!(ttl > month, "{suffix}: ttl {ttl}");
    }
    // A shorter retention leaves the status TTL, and never shortens an index another job needs.
    let short = finished(&fx.store, "alice", 60).await;
    let ttl = fx.ttl(&format!("job:{}", short.id)).await;
    assert!((week - 5..=week).contains(&ttl), "ttl {ttl}");
    assert!(fx.ttl("tenant:alice:jobs:cancelled").await > month, "the index still outlives the long-kept job");
    // Unfinished and retention-less jobs are not in the set.
    let running = queued("alice").with_retention(60);
    fx.store.create(&running, None).await.unwrap();
    fx.store.update(running.id, |s| s.start("w1", Utc::now())).await.unwrap();
    assert_eq!(fx.store.removal_due("alice", running.id).await.unwrap(), None);
    let old = queued("alice");
    fx.store.create(&old, None).await.unwrap();
    fx.store.update(old.id, |s| s.cancel(Utc::now())).await.unwrap();
    assert_eq!(fx.store.removal_due("alice", old.id).await.unwrap(), None, "no retention: expires as before");
    fx.cleanup().await;
}

#[tokio::test]
async fn a_job_is_claimed_when_due_once_per_lease_and_again_after_a_crash() {
    let fx = Fixture::new().await;
    let job = finished(&fx.store, "alice", 2).await;
    let due = job.expires_at.unwrap();
    let at = |offset_ms: i64| due + TimeDelta::milliseconds(offset_ms);
    assert!(fx.store.claim_expired(at(-1), LEASE, 10).await.unwrap().is_empty(), "not before its expiry");
    let claimed = fx.store.claim_expired(at(0), LEASE, 10).await.unwrap();
    assert_eq!(claimed, [ExpiredJob { tenant: "alice".into(), id: job.id }]);
    assert!(fx.store.claim_expired(at(1000), LEASE, 10).await.unwrap().is_empty(), "leased to the first claim");
    // The claimer died without removing it: once the lease is over the job is due again.
    let lease_ms = i64::try_from(LEASE.as_millis()).unwrap();
    assert!(fx.store.claim_expired(at(lease_ms - 1), LEASE, 10).await.unwrap().is_empty());
    let again = fx.store.claim_expired(at(lease_ms), LEASE, 10).await.unwrap();
    assert_eq!(again, claimed);
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_claimers_never_get_the_same_job() {
    let fx = Fixture::new().await;
    let mut ids = HashSet::new();
    for _ in 0..40 {
        ids.insert(finished(&fx.store, "alice", 1).await.id);
    }
    let later = Utc::now() + TimeDelta::seconds(5);
    let claimers: Vec<_> = (0..2)
        .map(|_| {
            let store = fx.store.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let batch = store.claim_expired(later, LEASE, 3).await.unwrap();
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.into_iter().map(|job| job.id));
                }
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut total = 0;
    for claimer in claimers {
        let mine = claimer.await.unwrap();
        total += mine.len();
        seen.extend(mine);
    }
    assert_eq!((total, &seen), (ids.len(), &ids), "every job claimed, each by one claimer only");
    fx.cleanup().await;
}

#[tokio::test]
async fn removal_takes_the_record_and_its_entries_leaves_usage_and_marks_the_job_done_for_workers() {
    let mut fx = Fixture::new().await;
    let job = finished(&fx.store, "alice", 1).await;
    let counters = fx.store.counters().await.unwrap();
    let now = Utc::now();
    let usage = fx.store.usage(now - TimeDelta::hours(1), now + TimeDelta::hours(1), Some("alice")).await.unwrap();
    assert!(!usage.is_empty(), "the finished job counted");

    assert!(fx.store.remove("alice", job.id).await.unwrap());
    assert_eq!(fx.store.get(job.id).await.unwrap(), None);
    assert_eq!(fx.store.removal_due("alice", job.id).await.unwrap(), None);
    assert!(fx.store.list("alice", None, None, 10).await.unwrap().jobs.is_empty());
    for suffix in ["tenant:alice:jobs", "tenant:alice:jobs:cancelled"] {
        let members: Vec<String> =
            redis::cmd("ZRANGE").arg(fx.key(suffix)).arg(0).arg(-1).query_async(&mut fx.raw).await.unwrap();
        assert!(!members.contains(&job.id.to_string()), "{suffix}: {members:?}");
    }
    assert!(fx.store.is_cancel_requested(job.id).await.unwrap(), "a message still queued is acked unrun");
    assert_eq!(fx.store.counters().await.unwrap(), counters, "counters stay");
    let after = fx.store.usage(now - TimeDelta::hours(1), now + TimeDelta::hours(1), Some("alice")).await.unwrap();
    assert_eq!(after, usage, "usage stays");
    assert!(!fx.store.remove("alice", job.id).await.unwrap(), "a second removal finds nothing and is no error");

    // A new job under the same id (a client reusing its id) does not inherit the mark.
    let reborn = JobStatus { id: job.id, ..queued("alice") };
    fx.store.create(&reborn, None).await.unwrap();
    assert!(!fx.store.is_cancel_requested(job.id).await.unwrap());
    fx.cleanup().await;
}

#[tokio::test]
async fn removing_a_job_a_worker_finished_frees_its_idempotency_key_and_leaves_a_short_lived_flag() {
    let mut fx = Fixture::new().await;
    let status_ttl = fx.ttl(&format!("job:{}", finished(&fx.store, "alice", 60).await.id)).await;
    let made = queued("alice").with_retention(60);
    assert_eq!(fx.store.create(&made, Some("k1")).await.unwrap(), CreateOutcome::Created);
    fx.store.mark_published(made.id).await.unwrap();
    fx.store.update(made.id, |s| s.start("w1", Utc::now())).await.unwrap();
    fx.store.update(made.id, |s| s.succeed(Vec::new(), Utc::now())).await.unwrap();
    assert!(fx.store.remove("alice", made.id).await.unwrap());

    assert_eq!(fx.ttl("idem:alice:k1").await, -2, "the key that named the removed job is gone");
    let flag = fx.ttl(&format!("cancel:{}", made.id)).await;
    let short = i64::try_from(FINISHED_MARKER_SECS).unwrap();
    assert!((short - 5..=short).contains(&flag), "a succeeded job's flag lives {short} s, not {flag}");
    // The key is free: the same request again is a new job, not a pointer to nothing.
    let again = queued("alice");
    assert_eq!(fx.store.create(&again, Some("k1")).await.unwrap(), CreateOutcome::Created);

    // A cancelled job's message may still wait on a queue, and so may a second copy of a job
    // published twice, handed back by a stopping worker, or recorded by no dispatcher (a foreign
    // producer's): each keeps its flag for the status TTL.
    let cancelled = finished(&fx.store, "alice", 60).await;
    fx.store.mark_published(cancelled.id).await.unwrap();
    let twice = queued("alice");
    fx.store.create(&twice, None).await.unwrap();
    fx.store.mark_published_again(twice.id).await.unwrap();
    // A dispatcher's mark landing after a worker's hand-back mark leaves `again`.
    fx.store.mark_published(twice.id).await.unwrap();
    let handed_back = queued("alice");
    fx.store.create(&handed_back, None).await.unwrap();
    fx.store.mark_published(handed_back.id).await.unwrap();
    let foreign = queued("alice");
    fx.store.create(&foreign, None).await.unwrap();
    for (job, handbacks) in [(&twice, 0), (&handed_back, 1), (&foreign, 0)] {
        fx.store.update(job.id, |s| s.start("w1", Utc::now())).await.unwrap();
        fx.store
            .update(job.id, |s| {
                s.handbacks = handbacks;
                s.succeed(Vec::new(), Utc::now())
            })
            .await
            .unwrap();
    }
    for (job, what) in [
        (&cancelled, "cancelled"),
        (&twice, "published twice"),
        (&handed_back, "handed back"),
        (&foreign, "never marked published"),
    ] {
        assert!(fx.store.remove("alice", job.id).await.unwrap());
        let flag = fx.ttl(&format!("cancel:{}", job.id)).await;
        assert!(flag >= status_ttl - 5, "{what}: its flag lives {flag} s, status TTL {status_ttl} s");
    }

    // A key that another job has taken over since is left alone.
    let first = queued("alice");
    fx.store.create(&first, Some("k2")).await.unwrap();
    fx.store.update(first.id, |s| s.cancel(Utc::now())).await.unwrap();
    redis::cmd("SET")
        .arg(fx.key("idem:alice:k2"))
        .arg(Uuid::new_v4().to_string())
        .query_async::<()>(&mut fx.raw)
        .await
        .unwrap();
    assert!(fx.store.remove("alice", first.id).await.unwrap());
    assert_ne!(fx.ttl("idem:alice:k2").await, -2, "another job's key stays");
    fx.cleanup().await;
}

#[tokio::test]
async fn a_removal_asked_for_before_the_end_is_due_when_the_job_finishes() {
    let fx = Fixture::new().await;
    let long = 30 * 24 * 3600;
    let running = queued("alice").with_retention(long);
    fx.store.create(&running, None).await.unwrap();
    fx.store.update(running.id, |s| s.start("w1", Utc::now())).await.unwrap();
    assert_eq!(fx.store.request_removal(&running).await.unwrap(), RemovalRequest::Marked);
    assert_eq!(fx.store.removal_due("alice", running.id).await.unwrap(), None, "not while it runs");
    let done = fx.store.update(running.id, |s| s.succeed(Vec::new(), Utc::now())).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(fx.store.removal_due("alice", running.id).await.unwrap(), Some(0), "due at once, not in 30 days");

    // A finished job is due at once; an unknown one is not found.
    let kept = finished(&fx.store, "alice", long).await;
    assert_eq!(fx.store.request_removal(&kept).await.unwrap(), RemovalRequest::Due);
    assert_eq!(fx.store.removal_due("alice", kept.id).await.unwrap(), Some(0));
    let ghost = JobStatus { id: Uuid::now_v7(), ..kept.clone() };
    assert!(matches!(fx.store.request_removal(&ghost).await, Err(StatusError::NotFound(id)) if id == ghost.id));
    let claimed: HashSet<Uuid> =
        fx.store.claim_expired(Utc::now(), LEASE, 10).await.unwrap().into_iter().map(|job| job.id).collect();
    assert_eq!(claimed, HashSet::from([running.id, kept.id]));
    fx.cleanup().await;
}

#[tokio::test]
async fn a_job_recorded_finished_joins_the_expiry_set_too() {
    let fx = Fixture::new().await;
    // As a worker rebuilds the record of a job whose images it found stored.
    let mut status = queued("alice").with_retention(60);
    status.start("w1", Utc::now()).unwrap();
    status.succeed(Vec::new(), Utc::now()).unwrap();
    fx.store.create(&status, None).await.unwrap();
    let due = fx.store.removal_due("alice", status.id).await.unwrap();
    assert_eq!(due, status.expires_at.map(ms));
    fx.cleanup().await;
}
