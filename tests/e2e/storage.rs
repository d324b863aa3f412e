//! A misconfigured image store is named at once: a worker does not start against a missing bucket
//! or with a wrong key, and a job whose upload the store refuses fails with `storage_unavailable`
//! and the store's answer within seconds — not after minutes of redeliveries as a dead letter.

use std::time::{Duration, Instant};

use fleet_core::{ErrorCode, JobState};
use fleet_e2e::fleet::Fleet;
use fleet_e2e::{isolated_config, s3_client, unique};

use crate::fleet::tiny_job;

fn worker_options() -> fleet_worker::WorkerOptions {
    fleet_worker::WorkerOptions { models: vec!["tiny".into()], id: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_missing_bucket_or_a_wrong_key_fails_at_start() {
    let started = Instant::now();
    let mut config = isolated_config();
    config.s3.bucket = unique("fleet-missing");
    let err = fleet_worker::Worker::start(config.clone(), worker_options()).await.unwrap_err().to_string();
    assert!(err.contains(&config.s3.bucket) && err.contains(&config.s3.endpoint), "{err}");
    assert!(err.contains("does not exist") && err.contains("s3.bucket"), "{err}");

    let mut config = isolated_config();
    config.s3.secret_access_key = "not-the-secret".into();
    let err = fleet_worker::Worker::start(config.clone(), worker_options()).await.unwrap_err().to_string();
    assert!(err.contains(&config.s3.bucket) && err.contains(&config.s3.endpoint), "{err}");
    assert!(err.contains("403") && err.contains("s3.secret_access_key"), "{err}");
    assert!(!err.contains("not-the-secret"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "start-up checks took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_refuses_uploads_fails_the_job_with_storage_unavailable() {
    // A bucket of its own, gone once the fleet has started (the test server creates none on upload).
    let s3 = s3_client();
    let bucket = unique("fleet-gone");
    s3.create_bucket().bucket(&bucket).send().await.expect("create the test's bucket");
    let mut config = isolated_config();
    config.s3.bucket = bucket.clone();
    let fleet = Fleet::start(config, 1).await;
    s3.delete_bucket().bucket(&bucket).send().await.expect("delete the test's bucket");

    let (code, ready) = {
        let resp = fleet.http.get(format!("{}/readyz", fleet.base)).send().await.unwrap();
        (resp.status(), resp.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!(code, 503, "{ready}");
    assert!(ready["s3"].as_str().unwrap_or_default().contains(&bucket), "{ready}");

    let submitted = Instant::now();
    let id = fleet.submit(tiny_job(1)).await.id;
    let status = fleet.wait_all(&[id], Duration::from_secs(30)).await.remove(0);
    let took = submitted.elapsed();
    assert_eq!(status.state, JobState::Failed, "{status:?}");
    let error = status.error.expect("a failed job has an error");
    assert_eq!(error.code, ErrorCode::StorageUnavailable, "{error:?}");
    assert!(error.message.contains(&bucket) && error.message.contains("does not exist"), "{error:?}");
    assert!(took < Duration::from_secs(15), "the failure took {took:?} to show");
    fleet.stop().await;
}
