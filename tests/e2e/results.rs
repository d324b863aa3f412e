//! Results never contradict records: two executions of one job with different seeds (a job run
//! twice, as after a duplicate message or a dispatcher crash) store their images under keys of
//! their own, the record's compare-and-set picks one set, and S3 then holds exactly that set —
//! the loser's objects gone, the record's sizes and SHA-256s those of the stored bytes.

use chrono::Utc;
use fleet_core::{ImageFormat, ImageResult, JobSpec, JobState, JobStatus};
use fleet_e2e::isolated_config;
use fleet_status::{StatusStore, Versioned};
use fleet_storage::{ImageStore, ObjectMeta};
use fleet_worker::result_set::{self, Committed};

/// A started job: its record as the worker that started it wrote it.
async fn started_job(status: &StatusStore, images: u32) -> Versioned {
    let mut spec = JobSpec::new("two executions");
    (spec.model, spec.num_images, spec.width, spec.height, spec.seed) = ("tiny".into(), images, 64, 64, Some(1));
    let job = spec.validate(&fleet_core::Limits::default()).unwrap().assign("e2e", uuid::Uuid::now_v7);
    let record = JobStatus::queued(&job, Utc::now()).unwrap();
    status.create(&record, None).await.unwrap();
    status.update_from(record.id, None, |s| s.start("w1", Utc::now())).await.unwrap()
}

/// One execution's images (bytes that depend on its seed), stored under its own execution id.
async fn execute(store: &ImageStore, prefix: &str, record: &JobStatus, seed: u64) -> Vec<ImageResult> {
    let execution = fleet_storage::new_execution_id();
    let mut results = Vec::new();
    for index in 0..record.progress.images_total {
        let key = fleet_storage::object_key(prefix, &record.tenant, record.id, &execution, index, ImageFormat::Png);
        let meta = ObjectMeta {
            seed: seed + u64::from(index),
            index,
            images: record.progress.images_total,
            tenant: record.tenant.clone(),
            ..ObjectMeta::example(record.id, &execution, seed)
        };
        let bytes = format!("image {index} of seed {seed}").repeat(100 + seed as usize).into_bytes();
        results.push(result_set::upload(store, &key, bytes, &meta, ImageFormat::Png).await.unwrap());
    }
    results
}

/// Every object under the job's prefix, each with its size and SHA-256 as stored, against the
/// record's result: they must be the same set.
async fn assert_store_matches_record(store: &ImageStore, prefix: &str, record: &JobStatus) {
    let keys = store.list(&fleet_storage::job_prefix(prefix, &record.tenant, record.id)).await.unwrap();
    let mut recorded: Vec<&str> = record.result.iter().map(|r| r.key.as_str()).collect();
    recorded.sort_unstable();
    assert_eq!(keys.iter().map(String::as_str).collect::<Vec<_>>(), recorded, "S3 holds exactly the recorded set");
    for r in &record.result {
        let object = store.get(&r.key).await.unwrap().expect("a recorded object");
        assert_eq!(object.body.len() as u64, r.bytes, "{}", r.key);
        assert_eq!(fleet_storage::sha256_hex(&object.body), r.sha256, "{}", r.key);
        let meta = object.meta().expect("metadata a record can be rebuilt from");
        assert_eq!((meta.job_id, meta.index, meta.seed, meta.images), (record.id, r.index, r.seed, 2));
        assert!(r.key.contains(&format!("/{}/", meta.execution)), "the key names its execution: {}", r.key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_executions_with_different_seeds_leave_exactly_the_recorded_set() {
    let config = isolated_config();
    let (status, store) =
        (StatusStore::connect(&config.redis).await.unwrap(), ImageStore::connect(&config.s3).await.unwrap());
    let prefix = config.s3.prefix.as_str();

    // Both executions upload before either commits: the later commit must lose, and take its
    // objects with it, even though its images were written last.
    let started = started_job(&status, 2).await;
    let first = execute(&store, prefix, &started.status, 1).await;
    let second = execute(&store, prefix, &started.status, 2).await;
    // The second execution took the job over (running → queued → running), as a redelivery does.
    let taken_over = status
        .update(started.status.id, |s| {
            s.requeue(Utc::now())?;
            s.start("w2", Utc::now())
        })
        .await
        .unwrap();
    assert_eq!(taken_over.attempts, 2);
    let won =
        result_set::commit(&status, &store, prefix, Some(started.clone()), started.status.id, second.clone()).await;
    let Ok(Committed::Won(record)) = won else { panic!("the first commit wins: {won:?}") };
    assert_eq!(record.status.result, second);
    let lost =
        result_set::commit(&status, &store, prefix, Some(started.clone()), started.status.id, first.clone()).await;
    assert!(matches!(lost, Ok(Committed::Lost(JobState::Succeeded))), "{lost:?}");
    let record = status.get(started.status.id).await.unwrap().unwrap();
    assert_eq!((record.state, &record.result), (JobState::Succeeded, &second), "the record keeps the winner's set");
    assert_store_matches_record(&store, prefix, &record).await;
    for gone in &first {
        assert!(!store.exists(&gone.key).await.unwrap(), "the loser's {} is gone", gone.key);
    }

    // An execution that crashed mid-upload (objects, no commit) is cleaned up by the winner of a
    // job started more than once.
    let started = started_job(&status, 2).await;
    let crashed = execute(&store, prefix, &started.status, 3).await;
    let restarted = status
        .update_from(started.status.id, None, |s| {
            s.requeue(Utc::now())?;
            s.start("w2", Utc::now())
        })
        .await
        .unwrap();
    let winner = execute(&store, prefix, &restarted.status, 4).await;
    let won = result_set::commit(&status, &store, prefix, Some(restarted), started.status.id, winner).await;
    let Ok(Committed::Won(record)) = won else { panic!("{won:?}") };
    assert_store_matches_record(&store, prefix, &record.status).await;
    assert!(!store.exists(&crashed[0].key).await.unwrap(), "the crashed execution's objects are gone");

    // A loser that dies before removing its objects: a later delivery of the succeeded job sweeps them.
    let stray = execute(&store, prefix, &record.status, 5).await;
    assert_eq!(result_set::sweep(&store, prefix, &record.status).await.unwrap(), 2);
    assert!(!store.exists(&stray[1].key).await.unwrap());
    assert_store_matches_record(&store, prefix, &record.status).await;
}

/// The fault suite's stalled worker: its commit reached Redis, but the reply did not (the call
/// timed out across the stall), so the retry finds the job already succeeded — with this
/// execution's own set. That is a win: the images stay, and the record keeps naming them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_retried_after_its_reply_was_lost_keeps_its_images() {
    let config = isolated_config();
    let (status, store) =
        (StatusStore::connect(&config.redis).await.unwrap(), ImageStore::connect(&config.s3).await.unwrap());
    let prefix = config.s3.prefix.as_str();
    let started = started_job(&status, 2).await;
    let results = execute(&store, prefix, &started.status, 6).await;
    let id = started.status.id;

    let first = result_set::commit(&status, &store, prefix, Some(started.clone()), id, results.clone()).await;
    assert!(matches!(first, Ok(Committed::Won(_))), "{first:?}");
    // The retry starts again from the record as the worker knew it before the lost reply.
    let retried = result_set::commit(&status, &store, prefix, Some(started.clone()), id, results.clone()).await;
    let Ok(Committed::Won(record)) = retried else { panic!("the retry finds its own set recorded: {retried:?}") };
    assert_eq!((record.status.state, &record.status.result), (JobState::Succeeded, &results));
    assert_store_matches_record(&store, prefix, &record.status).await;

    // Another execution's identical-looking retry (same images, its own keys) still loses.
    let other = execute(&store, prefix, &started.status, 6).await;
    let lost = result_set::commit(&status, &store, prefix, Some(started), id, other.clone()).await;
    assert!(matches!(lost, Ok(Committed::Lost(JobState::Succeeded))), "{lost:?}");
    assert!(!store.exists(&other[0].key).await.unwrap(), "the other execution's objects are gone");
    assert_store_matches_record(&store, prefix, &record.status).await;
}
