//! Who may call what: every operation but health, readiness, metrics and the API description
//! needs a key (walked from the served OpenAPI document, so a new route cannot slip through), and
//! a tenant never sees, cancels, follows or downloads another tenant's job.

use fleet_core::{ImageFormat, ImageResult, JobState};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{ADMIN, ALICE, BOB, Server, isolated_config};

/// Operations anyone may call. Each reveals no tenant's data.
const PUBLIC: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.json"];

/// The test S3 server of `scripts/services.sh` (same variables and defaults as `tests/src/lib.rs`).
pub(super) fn with_test_s3(mut cfg: fleet_core::FleetConfig) -> fleet_core::FleetConfig {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    cfg.s3.endpoint = format!("http://127.0.0.1:{}", var("FLEET_TEST_S3_PORT", "8333"));
    cfg.s3.bucket = var("FLEET_TEST_S3_BUCKET", "fleet-test");
    cfg.s3.access_key_id = var("FLEET_TEST_S3_ACCESS_KEY", "fleet-test-access");
    cfg.s3.secret_access_key = var("FLEET_TEST_S3_SECRET_KEY", "fleet-test-secret");
    cfg.s3.prefix = format!("dispatcher-test-{}", uuid::Uuid::now_v7().simple());
    cfg
}

#[tokio::test]
async fn every_operation_but_health_metrics_and_the_document_needs_a_key() {
    let server = Server::start(isolated_config()).await;
    let (_, job) = server.submit(ALICE, json!({"prompt": "mine", "model": "tiny"})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let (_, doc) = server.call(Method::GET, "/openapi.json", None, None).await;
    let mut secured = 0;
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let concrete = path.replace("{id}", &id).replace("{n}", "0");
            let body = Some(json!({"prompt": "sneaky", "model": "tiny"}));
            if operation.get("security").is_none() {
                assert!(PUBLIC.contains(&path.as_str()), "{method} {path} is documented without a key requirement");
                let (code, _) = server.call(method.clone(), &concrete, None, None).await;
                assert_ne!(code, StatusCode::UNAUTHORIZED, "{method} {path} is public");
                continue;
            }
            secured += 1;
            // no header, a wrong key, the right key without `Bearer ` (no key), an empty key
            let headers: [Option<&str>; 4] = [None, Some("Bearer wrong-key-123"), Some(ALICE), Some("Bearer ")];
            for header in headers {
                let mut req = server.http.request(method.clone(), format!("{}{concrete}", server.base));
                if let Some(value) = header {
                    req = req.header("authorization", value);
                }
                let resp = req.json(body.as_ref().unwrap()).send().await.unwrap();
                let code = resp.status();
                let answer: Value = resp.json().await.unwrap_or(Value::Null);
                assert_eq!(code, StatusCode::UNAUTHORIZED, "{method} {path} with {header:?}: {answer}");
                assert_eq!(answer["error"]["code"], "unauthorized", "{method} {path}: {answer}");
            }
        }
        assert!(
            !path.starts_with("/v1/") || operations.as_object().unwrap().values().all(|o| o.get("security").is_some())
        );
    }
    assert!(secured >= 10, "only {secured} secured operations documented");
    let page = server.app.status.list("alice", None, None, 100).await.unwrap();
    assert_eq!(page.jobs.len(), 1, "nothing was submitted without a key");
    assert_eq!(page.jobs[0].state, JobState::Queued, "nothing was cancelled without a key");
    server.stop().await;
}

/// Alice's finished job with a stored image, as a worker leaves it.
async fn finished_job_with_image(server: &Server) -> (uuid::Uuid, String, Vec<u8>) {
    let (code, job) = server.submit(ALICE, json!({"prompt": "private", "model": "tiny"})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{job}");
    let id: uuid::Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let cfg = &server.app.config.s3;
    let key = fleet_storage::object_key(&cfg.prefix, "alice", id, "0a1b2c3d4e5f", 0, ImageFormat::Png);
    let bytes = b"\x89PNG\r\n\x1a\nalice's picture".to_vec();
    let meta = fleet_storage::ObjectMeta {
        tenant: "alice".into(),
        ..fleet_storage::ObjectMeta::example(id, "0a1b2c3d4e5f", 1)
    };
    let stored = server.app.store.put(&key, bytes.clone(), "image/png", &meta).await.unwrap();
    let result = ImageResult {
        index: 0,
        key: key.clone(),
        seed: 1,
        width: 64,
        height: 64,
        format: ImageFormat::Png,
        sha256: stored.sha256.clone(),
        bytes: stored.bytes,
        url: None,
        url_expires_at: None,
    };
    let now = chrono::Utc::now();
    server.app.status.update(id, |s| s.start("worker-1", now)).await.unwrap();
    server.app.status.update(id, |s| s.succeed(vec![result.clone()], now)).await.unwrap();
    (id, key, bytes)
}

#[tokio::test]
async fn another_tenant_cannot_read_list_cancel_follow_or_download_a_job() {
    let mut cfg = with_test_s3(isolated_config());
    cfg.s3.presign_ttl_secs = 2;
    let server = Server::start(cfg).await;
    let (id, key, bytes) = finished_job_with_image(&server).await;
    let (_, queued) = server.submit(ALICE, json!({"prompt": "still queued", "model": "tiny"})).await;
    let queued_id = queued["id"].as_str().unwrap().to_owned();

    for job in [id.to_string(), queued_id.clone()] {
        for (method, path) in [
            (Method::GET, format!("/v1/jobs/{job}")),
            (Method::DELETE, format!("/v1/jobs/{job}")),
            (Method::POST, format!("/v1/jobs/{job}/cancel")),
            (Method::GET, format!("/v1/jobs/{job}/events")),
            (Method::GET, format!("/v1/jobs/{job}/images/0")),
            (Method::GET, format!("/v1/jobs/{job}/images/0/url")),
        ] {
            let (code, body) = server.call(method.clone(), &path, Some(BOB), None).await;
            assert_eq!(code, StatusCode::NOT_FOUND, "{method} {path} as bob: {body}");
            let text = body.to_string();
            assert!(!text.contains(&key) && !text.contains("alice") && !text.contains("X-Amz"), "{text}");
        }
    }
    for query in ["", "?state=succeeded", "?state=queued", "?limit=100"] {
        let (_, listed) = server.call(Method::GET, &format!("/v1/jobs{query}"), Some(BOB), None).await;
        assert_eq!(listed["jobs"], json!([]), "bob lists {query}");
    }
    // Bob's cancel changed nothing: still queued, no cancel flag for a worker to see.
    let queued_uuid = queued_id.parse().unwrap();
    assert_eq!(server.app.status.get(queued_uuid).await.unwrap().unwrap().state, JobState::Queued);
    assert!(!server.app.status.is_cancel_requested(queued_uuid).await.unwrap());

    // Alice gets her image: a redirect to a presigned URL that expires after `s3.presign_ttl_secs`
    // (that SeaweedFS refuses such a URL once expired: fleet-storage's
    // `s3_presigned_urls_fetch_the_bytes_and_expire`).
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let resp =
        no_redirect.get(format!("{}/v1/jobs/{id}/images/0", server.base)).bearer_auth(ALICE).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains(&key) && location.contains("X-Amz-Expires=2"), "{location}");
    assert!(!location.contains(&server.app.config.s3.secret_access_key), "{location}");
    let (code, url) = server.call(Method::GET, &format!("/v1/jobs/{id}/images/0/url"), Some(ALICE), None).await;
    assert_eq!((code, &url["expires_in_secs"]), (StatusCode::OK, &json!(2)), "{url}");
    let fetched = reqwest::get(url["url"].as_str().unwrap()).await.unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert!(fetched.bytes().await.unwrap().as_ref() == bytes.as_slice());
    let (code, _) = server.call(Method::GET, &format!("/v1/jobs/{id}"), Some(ADMIN), None).await;
    assert_eq!(code, StatusCode::OK, "admins see every tenant's jobs");

    let _ = server.app.store.delete(&key).await;
    server.stop().await;
}

/// The constant-time lookup (every digest compared, the match selected without a branch) still
/// finds each configured key, the last one too, and nothing for a key off by one byte or length.
/// (Timing itself is not asserted: a test cannot measure it reliably.)
#[test]
fn key_lookup_finds_each_configured_key_and_nothing_else() {
    let keys: Vec<fleet_core::config::ApiKeyConfig> = (0..5)
        .map(|i| fleet_core::config::ApiKeyConfig {
            key: format!("key-number-{i}"),
            tenant: format!("t{i}"),
            admin: false,
        })
        .collect();
    let table = fleet_dispatcher::auth::ApiKeys::new(&keys);
    for k in &keys {
        assert_eq!(table.lookup(&k.key).map(|c| c.tenant.as_str()), Some(k.tenant.as_str()));
    }
    for wrong in ["key-number-5", "key-number-4 ", "key-number-", "", "KEY-NUMBER-0"] {
        assert!(table.lookup(wrong).is_none(), "{wrong:?}");
    }
    assert!(fleet_dispatcher::auth::ApiKeys::new(&[]).lookup("anything").is_none());
}
