//! Webhooks through the dispatcher: jobs that ask for one are refused (422 `webhook_not_allowed`)
//! where webhooks are off or the tenant has no secret; a tenant's default webhook applies to its
//! jobs that name none; the dispatcher delivers, and `GET /v1/jobs/{id}/webhooks` shows the
//! attempts to the job's owner only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use fleet_core::config::TenantSettings;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{ALICE, BOB, Server, isolated_config};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn job(url: &str) -> Value {
    json!({"prompt": "a lighthouse", "model": "tiny", "width": 64, "height": 64, "webhook": {"url": url}})
}

/// Webhooks on, loopback over http allowed, alice with a secret, bob with a secret and a
/// default webhook.
fn enabled(default_url: &str) -> fleet_core::FleetConfig {
    let mut cfg = isolated_config();
    cfg.webhooks.enabled = true;
    cfg.webhooks.allow_http = true;
    cfg.webhooks.allowed_private = vec!["127.0.0.0/8".into()];
    let mut alice = TenantSettings::default();
    alice.webhooks.secret = SECRET.into();
    let mut bob = alice.clone();
    bob.webhooks.url = default_url.into();
    cfg.tenants.0.insert("alice".into(), alice);
    cfg.tenants.0.insert("bob".into(), bob);
    cfg
}

/// A receiver on loopback that counts the POSTs it gets and answers 200.
async fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let ids = Arc::new(Mutex::new(Vec::new()));
    let seen = ids.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let seen = seen.clone();
            async move {
                let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                seen.lock().unwrap().push(id);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, ids)
}

#[tokio::test]
async fn a_webhook_is_refused_where_webhooks_are_off_or_the_tenant_cannot_sign() {
    let server = Server::start(isolated_config()).await;
    let (code, body) = server.submit(ALICE, job("https://hooks.example.com/x")).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "webhook_not_allowed");
    assert!(body["error"]["message"].as_str().unwrap().contains("webhooks.enabled"), "{body}");
    server.stop().await;

    let mut cfg = enabled("");
    cfg.tenants.0.remove("alice");
    let server = Server::start(cfg).await;
    let (code, body) = server.submit(ALICE, job("https://hooks.example.com/x")).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("tenants.alice.webhooks.secret"), "{body}");
    let (code, body) = server.submit(ALICE, job("ftp://hooks.example.com/x")).await;
    assert_eq!((code, body["error"]["fields"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("webhook.url")));
    server.stop().await;
}

#[tokio::test]
async fn the_dispatcher_delivers_and_shows_the_attempts_to_the_owner() {
    let (url, ids) = receiver().await;
    let server = Server::start(enabled(&url)).await;
    let (code, own) = server.submit(ALICE, job(&url)).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{own}");
    assert_eq!(own["request"]["webhook"]["url"], url.as_str());
    // Bob's job names no webhook: his tenant's default applies.
    let (code, defaulted) =
        server.submit(BOB, json!({"prompt": "a cat", "model": "tiny", "width": 64, "height": 64})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{defaulted}");
    assert_eq!(defaulted["request"]["webhook"]["events"], json!(["succeeded", "failed", "cancelled"]));

    // A worker's part: start and finish alice's job.
    let id: uuid::Uuid = own["id"].as_str().unwrap().parse().unwrap();
    server.app.status.update(id, |s| s.start("w1", Utc::now())).await.unwrap();
    server.app.status.update(id, |s| s.succeed(Vec::new(), Utc::now())).await.unwrap();
    // And cancel bob's, which his default webhook reports.
    let bob_id = defaulted["id"].as_str().unwrap();
    let (code, _) = server.call(Method::DELETE, &format!("/v1/jobs/{bob_id}"), Some(BOB), None).await;
    assert_eq!(code, StatusCode::ACCEPTED);

    let path = format!("/v1/jobs/{id}/webhooks");
    let mut log = Value::Null;
    for _ in 0..300 {
        log = server.call(Method::GET, &path, Some(ALICE), None).await.1;
        if log["attempts"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(log["url"], url.as_str(), "{log}");
    let attempt = &log["attempts"][0];
    assert_eq!((attempt["outcome"].as_str(), attempt["status_code"].as_u64()), (Some("delivered"), Some(200)), "{log}");
    let webhook_id = format!("msg_{}_3", id.simple());
    assert_eq!(attempt["webhook_id"], webhook_id.as_str());
    for _ in 0..100 {
        if ids.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = ids.lock().unwrap().clone();
    assert!(got.contains(&webhook_id) && got.len() == 2, "alice's and bob's deliveries: {got:?}");

    let (code, _) = server.call(Method::GET, &path, Some(BOB), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "another tenant's log is not found");
    server.stop().await;
}
