//! Tenant quotas at admission (429 `quota_exceeded`) and the usage report (`GET /v1/usage`,
//! `/metrics`).

use chrono::Utc;
use fleet_core::config::{TenantQuota, TenantSettings};
use fleet_core::{ImageFormat, ImageResult};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{ADMIN, ALICE, BOB, Server, isolated_config};

fn job(prompt: &str) -> Value {
    json!({"prompt": prompt, "model": "tiny", "width": 512, "height": 512, "steps": 4, "num_images": 2})
}

/// Megapixel-steps of [`job`]: 512 × 512 × 4 × 2 / 10⁶.
const JOB_MPS: f64 = 2.097152;

fn with_quota(quota: TenantQuota) -> fleet_core::FleetConfig {
    let mut cfg = isolated_config();
    cfg.tenants.0.insert("alice".into(), TenantSettings { quota, ..TenantSettings::default() });
    cfg
}

#[tokio::test]
async fn over_the_daily_budget_a_submission_gets_429_naming_the_quota_and_its_reset() {
    let quota = TenantQuota { daily_megapixel_steps: Some(2.5 * JOB_MPS), max_queued_jobs: None };
    let server = Server::start(with_quota(quota)).await;
    for i in 0..2 {
        let (code, body) = server.submit(ALICE, job(&format!("fits {i}"))).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    }
    let resp = server
        .http
        .post(format!("{}/v1/jobs", server.base))
        .bearer_auth(ALICE)
        .json(&job("one too many"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let to_midnight = (fleet_core::usage::next_day_start(Utc::now()) - Utc::now()).num_seconds() as u64;
    assert!(retry_after.abs_diff(to_midnight) <= 5, "Retry-After {retry_after}, {to_midnight} s to midnight");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    assert_eq!(body["error"]["retryable"], true);
    let message = body["error"]["message"].as_str().unwrap();
    for part in ["tenants.alice.quota.daily_megapixel_steps", "resets at", "T00:00:00Z", "4.194"] {
        assert!(message.contains(part), "`{part}` not in: {message}");
    }
    // Other tenants have no quota; arrays refuse just the jobs over it.
    assert_eq!(server.submit(BOB, job("bob's")).await.0, StatusCode::ACCEPTED);
    let (code, items) = server.submit(ALICE, json!([job("a"), job("b")])).await;
    assert!(code.is_success(), "{code}: {items}");
    let items = items["jobs"].as_array().unwrap();
    assert!(items.len() == 2 && items.iter().all(|i| i["error"]["code"] == "quota_exceeded"), "{items:?}");
    server.stop().await;
}

#[tokio::test]
async fn the_queued_jobs_quota_frees_up_as_jobs_start() {
    let quota = TenantQuota { daily_megapixel_steps: None, max_queued_jobs: Some(1) };
    let server = Server::start(with_quota(quota)).await;
    let (code, first) = server.submit(ALICE, job("first")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{first}");
    let (code, body) = server.submit(ALICE, job("second")).await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("tenants.alice.quota.max_queued_jobs"), "{body}");
    let id = first["id"].as_str().unwrap().parse().unwrap();
    server.app.status.update(id, |s| s.start("w1", Utc::now())).await.unwrap();
    assert_eq!(server.submit(ALICE, job("second")).await.0, StatusCode::ACCEPTED);
    server.stop().await;
}

#[tokio::test]
async fn usage_reports_finished_jobs_to_their_tenant_and_everything_to_admins() {
    let server = Server::start(isolated_config()).await;
    for (key, prompt) in [(ALICE, "alice 1"), (ALICE, "alice 2"), (BOB, "bob 1")] {
        let (code, body) = server.submit(key, job(prompt)).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
        let id = body["id"].as_str().unwrap().parse().unwrap();
        let images: Vec<ImageResult> = (0..2)
            .map(|index| ImageResult {
                index,
                key: format!("k/{index}"),
                seed: 1,
                width: 512,
                height: 512,
                format: ImageFormat::Png,
                sha256: "0".repeat(64),
                bytes: 1,
                url: None,
                url_expires_at: None,
            })
            .collect();
        server.app.status.update(id, |s| s.start("w1", Utc::now())).await.unwrap();
        server.app.status.update(id, |s| s.succeed(images.clone(), Utc::now())).await.unwrap();
    }
    let get = |key: &'static str, query: &'static str| server.call(reqwest::Method::GET, query, Some(key), None);

    let (code, report) = get(ALICE, "/v1/usage").await;
    assert_eq!(code, StatusCode::OK, "{report}");
    assert_eq!(report["tenant"], "alice");
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "one day, one model: {report}");
    assert_eq!(
        (rows[0]["model"].as_str(), rows[0]["jobs"].as_u64(), rows[0]["images"].as_u64()),
        (Some("tiny"), Some(2), Some(4))
    );
    assert!((rows[0]["megapixel_steps"].as_f64().unwrap() - 2.0 * JOB_MPS).abs() < 1e-9, "{report}");

    let (code, body) = get(ALICE, "/v1/usage?tenant=bob").await;
    assert_eq!((code, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{body}");
    let (code, body) = get(ALICE, "/v1/usage?group_by=week").await;
    assert_eq!((code, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{body}");
    let (code, body) = get(ALICE, "/v1/usage?from=yesterday").await;
    assert!(code == StatusCode::BAD_REQUEST && body["error"]["message"].as_str().unwrap().contains("`from`"), "{body}");

    let (code, all) = get(ADMIN, "/v1/usage?group_by=tenant&from=2020-01-01T00:00:00Z").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "a range over the most hours one read covers: {all}");
    assert!(all["error"]["message"].as_str().unwrap().contains("400 days"), "{all}");
    let (code, all) = get(ADMIN, "/v1/usage?group_by=tenant").await;
    assert_eq!(code, StatusCode::OK, "{all}");
    let tenants: Vec<(&str, u64)> = all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["tenant"].as_str().unwrap(), r["jobs"].as_u64().unwrap()))
        .collect();
    assert_eq!(tenants, [("alice", 2), ("bob", 1)]);

    let (_, metrics) = server.call(reqwest::Method::GET, "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(metrics.contains(r#"fleet_usage_images_total{tenant="alice",model="tiny"} 4.0"#), "{metrics}");
    server.stop().await;
}
