//! Deliveries arrive signed (verified by our code and by the Python `standardwebhooks` package),
//! a failing or unreachable receiver gets the same `webhook-id` again until it answers 2xx, and a
//! delivery a relay died with is sent by the next one, once.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use fleet_core::JobStatus;
use fleet_core::webhook::{AttemptOutcome, WebhookEvent};
use fleet_webhooks::Secret;

use super::receiver::{Hit, Receiver};
use super::{SECRET, Service, config, outcomes};

const FINALS: [WebhookEvent; 3] = [WebhookEvent::Succeeded, WebhookEvent::Failed, WebhookEvent::Cancelled];

/// A Python with `standardwebhooks`: `FLEET_TEST_PYTHON`, else the repository's `.venv`
/// (scripts/test.sh installs the package there).
pub fn python() -> Option<PathBuf> {
    let python = std::env::var_os("FLEET_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"));
    let found = Command::new(&python)
        .args(["-c", "import standardwebhooks"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then_some(python)
}

/// Verifies a hit with the Standard Webhooks reference library.
pub fn verify_in_python(python: &PathBuf, hit: &Hit) -> Result<(), String> {
    let script = "import sys\nfrom standardwebhooks import Webhook\nWebhook(sys.argv[1]).verify(sys.stdin.buffer.read(), \
                  {'webhook-id': sys.argv[2], 'webhook-timestamp': sys.argv[3], 'webhook-signature': sys.argv[4]})";
    let mut child = Command::new(python)
        .args(["-c", script, SECRET, &hit.id, &hit.timestamp, &hit.signature])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child.stdin.take().unwrap().write_all(&hit.body).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

#[tokio::test]
async fn a_finished_job_is_posted_signed_with_its_status_record() {
    let service = Service::start(config()).await;
    let receiver = Receiver::start(&[]).await;
    let job = service.finish_job(&receiver.url, &FINALS).await;

    let hits = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(hits.len(), 1, "one delivery");
    let hit = &hits[0];
    assert_eq!(hit.id, format!("msg_{}_3", job.id.simple()));
    let now = chrono::Utc::now().timestamp();
    Secret::parse(SECRET).unwrap().verify(&hit.id, &hit.timestamp, &hit.signature, &hit.body, now).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&hit.body).unwrap();
    assert_eq!(body["type"], "job.succeeded");
    assert_eq!(serde_json::from_value::<JobStatus>(body["data"].clone()).unwrap(), job);
    match python() {
        Some(python) => verify_in_python(&python, hit).expect("standardwebhooks verifies the delivery"),
        None => eprintln!(
            "SKIPPED the standardwebhooks check: no Python with the package (.venv/bin/pip install standardwebhooks, \
             or set FLEET_TEST_PYTHON)"
        ),
    }

    let log = service.log(job.id, 1, Duration::from_secs(10)).await;
    assert_eq!(outcomes(&log), [AttemptOutcome::Delivered]);
    assert_eq!((log[0].status_code, log[0].attempt, log[0].next_try), (Some(200), 1, None));
    assert_eq!(service.store.webhook_backlog().await.unwrap(), (0, 0), "the outbox is drained");
    receiver.stop();
    service.stop().await;
}

#[tokio::test]
async fn a_receiver_answering_500_gets_the_same_delivery_again() {
    let service = Service::start(config()).await;
    let receiver = Receiver::start(&[500]).await;
    let job = service.finish_job(&receiver.url, &FINALS).await;

    let hits = receiver.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(hits.len(), 2, "retried once after the 500");
    assert_eq!(hits[0].id, hits[1].id, "every attempt carries the same webhook-id");
    assert_eq!(hits[0].body, hits[1].body);
    let secret = Secret::parse(SECRET).unwrap();
    let now = chrono::Utc::now().timestamp();
    for hit in &hits {
        secret.verify(&hit.id, &hit.timestamp, &hit.signature, &hit.body, now).unwrap();
    }
    let log = service.log(job.id, 2, Duration::from_secs(10)).await;
    assert_eq!(outcomes(&log), [AttemptOutcome::Retrying, AttemptOutcome::Delivered]);
    assert_eq!(log[0].status_code, Some(500));
    let next_try = log[0].next_try.expect("a retry says when");
    assert!(next_try > log[0].at && next_try <= log[0].at + chrono::Duration::seconds(2), "{log:?}");
    assert_eq!((log[1].attempt, log[1].status_code), (2, Some(200)));
    receiver.stop();
    service.stop().await;
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_the_delivery_once_it_is_up() {
    let service = Service::start(config()).await;
    // A port nothing listens on until the receiver starts there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{addr}/hook");
    let job = service.finish_job(&url, &FINALS).await;

    let log = service.log(job.id, 1, Duration::from_secs(30)).await;
    assert_eq!(log.first().map(|a| a.outcome), Some(AttemptOutcome::Retrying), "{log:?}");
    assert!(log[0].error.as_deref().is_some_and(|e| e.contains("connection")), "{log:?}");
    let receiver = Receiver::start_at(addr, &[]).await;
    let hits = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, format!("msg_{}_3", job.id.simple()));
    let log = service.log(job.id, log.len() + 1, Duration::from_secs(10)).await;
    assert_eq!(log.last().map(|a| a.outcome), Some(AttemptOutcome::Delivered), "{log:?}");
    assert!(log.iter().all(|a| a.webhook_id == hits[0].id));
    receiver.stop();
    service.stop().await;
}

#[tokio::test]
async fn a_delivery_a_dead_relay_left_unconfirmed_is_sent_by_the_next() {
    let receiver = Receiver::start(&[]).await;
    let cfg = config();
    // The state change is written while no relay runs; then a relay takes its delivery and dies
    // before RabbitMQ confirmed it (the entry sits in `relaying`).
    let store = fleet_status::StatusStore::connect(&cfg.redis).await.unwrap();
    let mut spec = fleet_core::JobSpec::new("a lighthouse");
    spec.webhook = Some(fleet_core::webhook::WebhookSpec::new(receiver.url.clone()));
    let job = spec.validate(&fleet_core::Limits::default()).unwrap().assign(super::TENANT, uuid::Uuid::now_v7);
    let status = JobStatus::queued(&job, chrono::Utc::now()).unwrap();
    store.create(&status, None).await.unwrap();
    store.update(status.id, |s| s.cancel(chrono::Utc::now())).await.unwrap();
    assert!(store.claim_webhook().await.unwrap().is_some());
    assert_eq!(store.webhook_backlog().await.unwrap(), (0, 1));

    let service = Service::start(cfg).await;
    let hits = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, format!("msg_{}_2", status.id.simple()));
    let log = service.log(status.id, 1, Duration::from_secs(10)).await;
    assert_eq!(outcomes(&log), [AttemptOutcome::Delivered]);
    // Nothing else comes: the entry was sent once and is gone from Redis.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.hits().len(), 1);
    assert_eq!(service.store.webhook_backlog().await.unwrap(), (0, 0));
    receiver.stop();
    service.stop().await;
}
