//! An idempotency key (or a client's own job id) stands for one request: the same request again
//! is the existing job (200), another request is a 409 `conflict` naming the key and the job, for
//! a single job and for each item of an array alike; a retry that publishes a lost job again
//! keeps the seed its record shows.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{ALICE, Server, isolated_config};

#[tokio::test]
async fn a_key_reused_with_a_different_request_is_a_conflict_naming_the_key_and_the_job() {
    let server = Server::start(isolated_config()).await;
    let job = json!({"prompt": "once", "model": "tiny", "idempotency_key": "order-5"});
    let (code, first) = server.submit(ALICE, job.clone()).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{first}");
    let id = first["id"].as_str().unwrap().to_owned();
    // Another key order and a default spelled out: the same request, though the dispatcher
    // assigned the first one its id and seed.
    let same = json!({"idempotency_key": "order-5", "steps": 4, "model": "tiny", "prompt": "once"});
    let (code, again) = server.submit(ALICE, same).await;
    assert_eq!((code, again["id"].as_str()), (StatusCode::OK, Some(id.as_str())), "{again}");

    let other = json!({"prompt": "twice", "model": "tiny", "idempotency_key": "order-5"});
    let (code, body) = server.submit(ALICE, other.clone()).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    conflict_names(&body["error"], "order-5", &id);

    // In an array each job is judged on its own.
    let (code, body) = server.submit(ALICE, json!([job, other, {"prompt": "new", "model": "tiny"}])).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let items = body["jobs"].as_array().unwrap();
    assert_eq!(items[0]["status"]["id"].as_str(), Some(id.as_str()), "{body}");
    conflict_names(&items[1]["error"], "order-5", &id);
    assert!(items[2]["status"]["id"].is_string(), "{body}");

    // The first job and the array's new one were published, nothing else.
    assert!(server.take(".tiny.interactive").await.is_some());
    assert!(server.take(".tiny.interactive").await.is_some());
    assert!(server.take(".tiny.interactive").await.is_none(), "a conflict publishes nothing");
    server.stop().await;
}

fn conflict_names(error: &Value, key: &str, id: &str) {
    assert_eq!((error["code"].as_str(), error["job_id"].as_str()), (Some("conflict"), Some(id)), "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains(key) && message.contains(id), "{message}");
}

#[tokio::test]
async fn a_client_id_reused_with_a_different_request_is_a_conflict() {
    let server = Server::start(isolated_config()).await;
    let id = uuid::Uuid::now_v7().to_string();
    let job = json!({"id": id, "prompt": "mine", "model": "tiny"});
    assert_eq!(server.submit(ALICE, job.clone()).await.0, StatusCode::ACCEPTED);
    let (code, again) = server.submit(ALICE, job).await;
    assert_eq!((code, again["id"].as_str()), (StatusCode::OK, Some(id.as_str())), "{again}");
    let (code, body) = server.submit(ALICE, json!({"id": id, "prompt": "not mine", "model": "tiny"})).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["job_id"].as_str(), Some(id.as_str()), "{body}");
    server.stop().await;
}

/// A dispatcher died between recording a job and publishing it; the client's retry publishes it
/// under its recorded id with its recorded seed, not a new one (two messages of one job with two
/// seeds would make two different result sets).
#[tokio::test]
async fn a_retry_that_publishes_a_lost_job_again_keeps_its_recorded_seed() {
    let server = Server::start(isolated_config()).await;
    let job = json!({"prompt": "lost", "model": "tiny", "idempotency_key": "lost-publish"});
    let job_text = job.to_string();
    let mut spec = fleet_core::parse_job(&job_text).unwrap();
    spec.seed = Some(12_345);
    let valid = spec.validate(&server.app.config.limits_for("tiny")).unwrap().assign("alice", uuid::Uuid::now_v7);
    let record = fleet_core::JobStatus::queued(&valid, chrono::Utc::now()).unwrap();
    server.app.status.create(&record, Some("lost-publish")).await.unwrap();

    let (code, body) = server.submit(ALICE, job).await;
    assert_eq!((code, body["id"].as_str()), (StatusCode::OK, Some(record.id.to_string().as_str())), "{body}");
    let (published, properties) = server.take_message(".tiny.interactive").await.expect("published again");
    assert_eq!((published.id, published.seed), (Some(record.id), Some(12_345)));
    // The message carries the digest of the request as the client sent it (what the record's
    // create compared), not of the spec with the recorded id and seed filled in.
    let sent = fleet_core::parse_job(&job_text).unwrap().validate(&server.app.config.limits_for("tiny")).unwrap();
    let digest = fleet_queue::message::header_str(&properties, fleet_queue::message::HEADER_REQUEST_DIGEST);
    assert_eq!(digest, Some(sent.request_digest().as_str()));
    server.stop().await;
}
