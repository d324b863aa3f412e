//! The end of a job's life through the dispatcher, against the real Redis and the test S3 server
//! (SeaweedFS): retention (per job, within the tenant's maximum), the sweeper that removes a job's
//! images and record together when it is due (two at once, and after a crash), `DELETE
//! /v1/jobs/{id}` and `POST /v1/jobs/delete`, the presigned URL and expiry a status carries, and the removals counted on
//! `/metrics`.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use fleet_core::config::{TenantRetention, TenantSettings};
use fleet_core::{FleetConfig, ImageFormat, ImageResult, JobState};
use fleet_dispatcher::lifecycle::sweep_once;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use super::security::with_test_s3;
use super::{ALICE, BOB, Server, isolated_config};

/// The test S3 server, with sweeps only where a test runs them (at the times it chooses).
fn config() -> FleetConfig {
    let mut cfg = with_test_s3(isolated_config());
    cfg.retention.sweep_interval_secs = 0;
    cfg
}

/// A job of `key`'s tenant asking for `body`, finished as a worker leaves it: `images` images
/// stored under one execution, plus an object of an execution that lost (which the job's result
/// does not name). Returns the job's status as the API gives it and every object key under it.
async fn finished(server: &Server, key: &str, body: Value, images: u32) -> (Value, Vec<String>) {
    let (code, job) = server.submit(key, body).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{job}");
    let id: Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let tenant = job["tenant"].as_str().unwrap().to_owned();
    let prefix = &server.app.config.s3.prefix;
    let mut result = Vec::new();
    let mut keys = Vec::new();
    for (execution, index) in (0..images).map(|i| ("0a1b2c3d4e5f", i)).chain([("ffffffffffff", 0)]) {
        let object = fleet_storage::object_key(prefix, &tenant, id, execution, index, ImageFormat::Png);
        let meta = fleet_storage::ObjectMeta {
            tenant: tenant.clone(),
            index,
            ..fleet_storage::ObjectMeta::example(id, execution, 1)
        };
        let bytes = format!("\u{89}PNG image {index} of {id} by {execution}").into_bytes();
        let stored = server.app.store.put(&object, bytes, "image/png", &meta).await.unwrap();
        if execution == "0a1b2c3d4e5f" {
            result.push(ImageResult {
                index,
                key: object.clone(),
                seed: 1 + u64::from(index),
                width: 64,
                height: 64,
                format: ImageFormat::Png,
                sha256: stored.sha256,
                bytes: stored.bytes,
                url: None,
                url_expires_at: None,
            });
        }
        keys.push(object);
    }
    let now = Utc::now();
    server.app.status.update(id, |s| s.start("worker-1", now)).await.unwrap();
    server.app.status.update(id, |s| s.succeed(result.clone(), now)).await.unwrap();
    let (code, status) = server.call(Method::GET, &format!("/v1/jobs/{id}"), Some(key), None).await;
    assert_eq!(code, StatusCode::OK, "{status}");
    (status, keys)
}

fn id_of(status: &Value) -> Uuid {
    status["id"].as_str().unwrap().parse().unwrap()
}

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

/// The objects under `tenant`'s job `id` now.
async fn objects(server: &Server, tenant: &str, id: Uuid) -> Vec<String> {
    server.app.store.list(&fleet_storage::job_prefix(&server.app.config.s3.prefix, tenant, id)).await.unwrap()
}

/// The dispatcher's `fleet_jobs_removed_total` of `reason`, as `/metrics` serves it (0 while
/// the sample is absent).
async fn removed_total(server: &Server, reason: &str) -> u64 {
    let text = server.http.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    let prefix = format!(r#"fleet_jobs_removed_total{{reason="{reason}"}} "#);
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn a_job_and_its_images_are_removed_together_when_its_retention_passes_and_not_before() {
    let server = Server::start(config()).await;
    let (status, keys) = finished(&server, ALICE, json!({"prompt": "brief", "model": "tiny", "retention": 5}), 2).await;
    let id = id_of(&status);
    let (kept, kept_keys) = finished(&server, ALICE, json!({"prompt": "kept", "model": "tiny"}), 1).await;
    assert_eq!(status["retention_secs"], 5);
    let expires = time(&status["expires_at"]);
    assert_eq!(expires, time(&status["finished_at"]) + TimeDelta::seconds(5));
    assert_eq!(kept["retention_secs"], 7 * 24 * 3600, "no retention asked: the default, the status TTL");
    assert_eq!(objects(&server, "alice", id).await.len(), 3);

    let early = sweep_once(&server.app, expires - TimeDelta::milliseconds(1)).await.unwrap();
    assert!(early.is_empty(), "nothing is due before its expiry: {early:?}");
    assert_eq!(objects(&server, "alice", id).await.len(), 3);
    let due = sweep_once(&server.app, expires).await.unwrap();
    assert_eq!(due.iter().map(|job| job.id).collect::<Vec<_>>(), [id]);
    assert!(objects(&server, "alice", id).await.is_empty(), "every object of the job, strays too: {keys:?}");
    let (code, body) = server.call(Method::GET, &format!("/v1/jobs/{id}"), Some(ALICE), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    let (_, listed) = server.call(Method::GET, "/v1/jobs", Some(ALICE), None).await;
    let listed: Vec<&str> = listed["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(listed, [kept["id"].as_str().unwrap()], "the other job stays");
    assert_eq!(objects(&server, "alice", id_of(&kept)).await.len(), kept_keys.len());
    for key in kept_keys {
        server.app.store.delete(&key).await.unwrap();
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sweepers_at_once_remove_each_job_once_without_an_error() {
    let server = Server::start(config()).await;
    let mut ids = HashSet::new();
    for i in 0..12 {
        let (status, _) =
            finished(&server, ALICE, json!({"prompt": format!("job {i}"), "model": "tiny", "retention": 1}), 1).await;
        ids.insert(id_of(&status));
    }
    let later = Utc::now() + TimeDelta::seconds(5);
    let sweepers: Vec<_> = (0..2)
        .map(|_| {
            let app = server.app.clone();
            tokio::spawn(async move { sweep_once(&app, later).await })
        })
        .collect();
    let mut removed = Vec::new();
    for sweeper in sweepers {
        removed.extend(sweeper.await.unwrap().expect("a sweep fails on nothing").into_iter().map(|job| job.id));
    }
    assert_eq!(removed.len(), ids.len(), "each job removed by one sweeper only: {removed:?}");
    assert_eq!(removed.into_iter().collect::<HashSet<_>>(), ids);
    assert_eq!(removed_total(&server, "expired").await, 12, "each removal counted once");
    for id in ids {
        assert!(objects(&server, "alice", id).await.is_empty());
        assert_eq!(server.app.status.get(id).await.unwrap(), None);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_sweeper_that_died_after_claiming_is_followed_by_another_once_its_lease_ends() {
    let server = Server::start(config()).await;
    let (status, _) = finished(&server, ALICE, json!({"prompt": "orphaned", "model": "tiny", "retention": 1}), 1).await;
    let id = id_of(&status);
    let due = time(&status["expires_at"]);
    let lease = Duration::from_secs(server.app.config.retention.sweep_lease_secs);
    // The first sweeper claims the job, then dies before removing anything.
    let claimed = server.app.status.claim_expired(due, lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let during = due + TimeDelta::seconds(1);
    assert!(sweep_once(&server.app, during).await.unwrap().is_empty(), "leased to the dead sweeper");
    assert_eq!(objects(&server, "alice", id).await.len(), 2);
    let after = due + TimeDelta::from_std(lease).unwrap();
    assert_eq!(sweep_once(&server.app, after).await.unwrap().len(), 1);
    assert!(objects(&server, "alice", id).await.is_empty());
    assert_eq!(server.app.status.get(id).await.unwrap(), None);
    server.stop().await;
}

#[tokio::test]
async fn the_dispatchers_own_sweeper_removes_due_jobs() {
    let mut cfg = config();
    cfg.retention.sweep_interval_secs = 1;
    let server = Server::start(cfg).await;
    let (status, _) =
        finished(&server, ALICE, json!({"prompt": "soon gone", "model": "tiny", "retention": 1}), 1).await;
    let id = id_of(&status);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.app.status.get(id).await.unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "the sweeper did not remove the job");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(objects(&server, "alice", id).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn delete_removes_a_finished_job_now_and_cancels_an_unfinished_one_to_remove_it_once_final() {
    let server = Server::start(config()).await;
    let (status, _) = finished(&server, ALICE, json!({"prompt": "unwanted", "model": "tiny"}), 2).await;
    let id = id_of(&status);
    let path = format!("/v1/jobs/{id}");
    let counters = server.app.status.counters().await.unwrap();
    assert_eq!(server.call(Method::DELETE, &path, Some(BOB), None).await.0, StatusCode::NOT_FOUND, "not bob's");
    assert_eq!(objects(&server, "alice", id).await.len(), 3);
    let (code, body) = server.call(Method::DELETE, &path, Some(ALICE), None).await;
    assert_eq!(code, StatusCode::NO_CONTENT, "{body}");
    assert!(objects(&server, "alice", id).await.is_empty());
    assert_eq!(server.call(Method::GET, &path, Some(ALICE), None).await.0, StatusCode::NOT_FOUND);
    let (code, body) = server.call(Method::DELETE, &path, Some(ALICE), None).await;
    assert_eq!((code, &body["error"]["code"]), (StatusCode::NOT_FOUND, &json!("not_found")), "a second delete");
    assert_eq!(server.app.status.counters().await.unwrap(), counters, "deleting counts nothing back");
    assert_eq!((removed_total(&server, "deleted").await, removed_total(&server, "expired").await), (1, 0));

    // Queued: cancelled at once, kept until the next sweep.
    let (_, queued) = server.submit(ALICE, json!({"prompt": "never mind", "model": "tiny"})).await;
    let queued_id = id_of(&queued);
    let (code, body) = server.call(Method::DELETE, &format!("/v1/jobs/{queued_id}"), Some(ALICE), None).await;
    assert_eq!((code, &body["state"]), (StatusCode::ACCEPTED, &json!("cancelled")), "{body}");
    assert!(server.app.status.is_cancel_requested(queued_id).await.unwrap(), "a worker never runs it");
    assert_eq!(server.app.status.removal_due("alice", queued_id).await.unwrap(), Some(0));

    // Running: cancelled by its worker at its next step, then removed.
    let (_, running) = server.submit(ALICE, json!({"prompt": "stop it", "model": "tiny"})).await;
    let running_id = id_of(&running);
    server.app.status.update(running_id, |s| s.start("worker-1", Utc::now())).await.unwrap();
    let (code, body) = server.call(Method::DELETE, &format!("/v1/jobs/{running_id}"), Some(ALICE), None).await;
    assert_eq!((code, &body["state"]), (StatusCode::ACCEPTED, &json!("running")), "{body}");
    assert!(server.app.status.is_cancel_requested(running_id).await.unwrap());
    assert_eq!(server.app.status.removal_due("alice", running_id).await.unwrap(), None, "not while it runs");
    server.app.status.update(running_id, |s| s.cancel(Utc::now())).await.unwrap();

    let removed: HashSet<Uuid> =
        sweep_once(&server.app, Utc::now()).await.unwrap().into_iter().map(|job| job.id).collect();
    assert_eq!(removed, HashSet::from([queued_id, running_id]));
    // Deleted before they finished, removed by the sweep once final: counted as the sweep's.
    assert_eq!((removed_total(&server, "deleted").await, removed_total(&server, "expired").await), (1, 2));
    for gone in [queued_id, running_id] {
        assert_eq!(
            server.call(Method::GET, &format!("/v1/jobs/{gone}"), Some(ALICE), None).await.0,
            StatusCode::NOT_FOUND
        );
    }

    // A plain cancel keeps the job.
    let (_, kept) = server.submit(ALICE, json!({"prompt": "just stop", "model": "tiny"})).await;
    let kept_id = id_of(&kept);
    let (code, body) = server.call(Method::POST, &format!("/v1/jobs/{kept_id}/cancel"), Some(ALICE), None).await;
    assert_eq!((code, &body["state"]), (StatusCode::ACCEPTED, &json!("cancelled")), "{body}");
    assert!(time(&body["expires_at"]) > Utc::now() + TimeDelta::days(6), "kept for its retention: {body}");
    assert!(sweep_once(&server.app, Utc::now()).await.unwrap().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn delete_many_deletes_each_job_as_delete_would_and_answers_per_id() {
    let server = Server::start(config()).await;
    let (done, _) =
        finished(&server, ALICE, json!({"prompt": "made", "model": "tiny", "idempotency_key": "row-1"}), 1).await;
    let done_id = id_of(&done);
    let (_, queued) = server.submit(ALICE, json!({"prompt": "waiting", "model": "tiny"})).await;
    let queued_id = id_of(&queued);
    let (bobs, _) = finished(&server, BOB, json!({"prompt": "bob's", "model": "tiny"}), 1).await;
    let bobs_id = id_of(&bobs);
    let unknown = Uuid::new_v4();

    let body = json!({"ids": [done_id, queued_id, bobs_id, unknown]});
    let (code, answer) = server.call(Method::POST, "/v1/jobs/delete", Some(ALICE), Some(body)).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    let outcomes: Vec<(&str, &str)> = answer["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| (item["id"].as_str().unwrap(), item["outcome"].as_str().unwrap_or("?")))
        .collect();
    let (done_s, queued_s, bobs_s, unknown_s) =
        (done_id.to_string(), queued_id.to_string(), bobs_id.to_string(), unknown.to_string());
    assert_eq!(
        outcomes,
        [
            (done_s.as_str(), "deleted"),
            (queued_s.as_str(), "cancelled"),
            (bobs_s.as_str(), "not_found"),
            (unknown_s.as_str(), "not_found")
        ],
        "in order, one per id"
    );
    assert!(objects(&server, "alice", done_id).await.is_empty(), "the finished job's images are gone");
    assert_eq!(server.app.status.get(done_id).await.unwrap(), None);
    assert_eq!(server.app.status.removal_due("alice", queued_id).await.unwrap(), Some(0), "removed at the next sweep");
    assert_eq!(objects(&server, "bob", bobs_id).await.len(), 2, "another tenant's job is untouched");
    assert_eq!(removed_total(&server, "deleted").await, 1);
    // The idempotency key went with its job: the same request again is a new job.
    let (code, again) =
        server.submit(ALICE, json!({"prompt": "made", "model": "tiny", "idempotency_key": "row-1"})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{again}");
    assert_ne!(again["id"], json!(done_id.to_string()));

    for (body, what) in [
        (json!({"ids": []}), "no ids"),
        (json!({"ids": ["not-a-uuid"]}), "a bad id"),
        (json!({"id": [done_id]}), "no `ids`"),
    ] {
        let (code, answer) = server.call(Method::POST, "/v1/jobs/delete", Some(ALICE), Some(body)).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{what}: {answer}");
        assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {answer}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_status_carries_presigned_urls_that_fetch_the_images() {
    let mut cfg = config();
    cfg.s3.presign_ttl_secs = 120;
    let server = Server::start(cfg).await;
    let (status, _) = finished(&server, ALICE, json!({"prompt": "look", "model": "tiny", "num_images": 2}), 2).await;
    let id = id_of(&status);
    let read = Utc::now();
    for image in status["result"].as_array().unwrap() {
        let url = image["url"].as_str().expect("an S3 store gives each image a URL");
        assert!(url.contains("X-Amz-Expires=120"), "{url}");
        let until = time(&image["url_expires_at"]);
        assert!((until - read - TimeDelta::seconds(120)).num_seconds().abs() <= 5, "{until} vs {read}");
        let fetched = reqwest::get(url).await.unwrap();
        assert_eq!(fetched.status(), StatusCode::OK);
        let stored = server.app.store.get(image["key"].as_str().unwrap()).await.unwrap().unwrap();
        assert_eq!(fetched.bytes().await.unwrap().as_ref(), stored.body.as_slice());
    }
    let (_, listed) = server.call(Method::GET, "/v1/jobs?state=succeeded", Some(ALICE), None).await;
    assert!(listed["jobs"][0]["result"][0]["url"].is_string(), "listed jobs carry them too: {listed}");
    let stored = server.app.status.get(id).await.unwrap().unwrap();
    assert!(stored.result.iter().all(|r| r.url.is_none() && r.url_expires_at.is_none()), "never kept in Redis");
    assert_eq!(
        server.call(Method::DELETE, &format!("/v1/jobs/{id}"), Some(ALICE), None).await.0,
        StatusCode::NO_CONTENT
    );
    server.stop().await;
}

#[tokio::test]
async fn a_retention_over_the_tenants_maximum_is_refused_naming_the_key() {
    let mut cfg = config();
    let retention = |default_secs, max_secs| TenantSettings {
        retention: TenantRetention { default_secs, max_secs },
        ..TenantSettings::default()
    };
    cfg.tenants.0.insert("default".into(), retention(Some(600), 3600));
    cfg.tenants.0.insert("alice".into(), retention(None, 7200));
    let server = Server::start(cfg).await;
    let job = |retention: Value| json!({"prompt": "kept", "model": "tiny", "retention": retention});
    for (key, asked, named) in
        [(BOB, 3601, "tenants.default.retention.max_secs"), (ALICE, 7201, "tenants.alice.retention.max_secs")]
    {
        let (code, body) = server.submit(key, job(json!(asked))).await;
        assert_eq!((code, &body["error"]["code"]), (StatusCode::BAD_REQUEST, &json!("invalid_spec")), "{body}");
        let field = &body["error"]["fields"][0];
        assert_eq!(field["field"], "retention", "{body}");
        assert!(field["message"].as_str().unwrap().contains(named), "{body}");
    }
    let (code, body) = server.submit(ALICE, json!([job(json!(60)), job(json!(9000))])).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["fields"][0]["field"], "[1].retention", "{body}");
    let (code, body) = server.submit(ALICE, job(json!(0))).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["fields"][0]["message"].as_str().unwrap().contains("must be 1 to"), "{body}");

    let (code, body) = server.submit(ALICE, job(json!(7200))).await;
    assert_eq!((code, &body["retention_secs"]), (StatusCode::ACCEPTED, &json!(7200)), "{body}");
    let (_, body) = server.submit(BOB, json!({"prompt": "default", "model": "tiny"})).await;
    assert_eq!(body["retention_secs"], 600, "the default entry's default: {body}");
    let (_, body) = server.submit(ALICE, json!({"prompt": "default", "model": "tiny"})).await;
    assert_eq!(body["retention_secs"], 7200, "no default of her own: the status TTL, cut to her maximum: {body}");
    let stored = server.app.status.get(id_of(&body)).await.unwrap().unwrap();
    assert_eq!((stored.state, stored.retention_secs), (JobState::Queued, Some(7200)));
    server.stop().await;
}
