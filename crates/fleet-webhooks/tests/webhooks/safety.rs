//! What is not retried: a target the policy refuses, a final answer, and a delivery whose
//! `webhooks.retry_for_secs` has run out.

use std::time::Duration;

use fleet_core::webhook::{AttemptOutcome, WebhookEvent};

use super::receiver::Receiver;
use super::{Service, config, outcomes};

#[tokio::test]
async fn plain_http_and_private_addresses_are_refused_unless_allowed() {
    let receiver = Receiver::start(&[]).await;
    let mut cfg = config();
    cfg.webhooks.allow_http = false;
    let service = Service::start(cfg).await;
    let refused_http = service.finish_job(&receiver.url, &[WebhookEvent::Succeeded]).await;
    let log = service.log(refused_http.id, 1, Duration::from_secs(30)).await;
    assert_eq!(outcomes(&log), [AttemptOutcome::GaveUp]);
    assert!(log[0].error.as_deref().is_some_and(|e| e.contains("scheme `http` is not allowed")), "{log:?}");
    service.stop().await;

    let mut cfg = config();
    cfg.webhooks.allowed_private.clear();
    let service = Service::start(cfg).await;
    let refused_private = service.finish_job(&receiver.url, &[WebhookEvent::Succeeded]).await;
    let log = service.log(refused_private.id, 1, Duration::from_secs(30)).await;
    assert_eq!(outcomes(&log), [AttemptOutcome::GaveUp]);
    assert!(log[0].error.as_deref().is_some_and(|e| e.contains("not a public address")), "{log:?}");
    assert!(receiver.hits().is_empty(), "nothing reached the receiver");
    receiver.stop();
    service.stop().await;
}

#[tokio::test]
async fn a_410_is_final() {
    let service = Service::start(config()).await;
    let receiver = Receiver::start(&[410]).await;
    let job = service.finish_job(&receiver.url, &[WebhookEvent::Succeeded]).await;
    let log = service.log(job.id, 1, Duration::from_secs(30)).await;
    assert_eq!(outcomes(&log), [AttemptOutcome::GaveUp]);
    assert_eq!(log[0].status_code, Some(410));
    // Nothing more comes: the delivery is settled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.hits().len(), 1);
    receiver.stop();
    service.stop().await;
}

#[tokio::test]
async fn retries_end_when_retry_for_runs_out() {
    let mut cfg = config();
    // The first retry (within 1 s) fits; the second (2 to 4 s later) does not.
    cfg.webhooks.retry_for_secs = 2;
    let service = Service::start(cfg).await;
    let receiver = Receiver::start(&[503, 503, 503, 503]).await;
    let job = service.finish_job(&receiver.url, &[WebhookEvent::Succeeded]).await;
    let log = service.log(job.id, 2, Duration::from_secs(30)).await;
    assert_eq!(outcomes(&log), [AttemptOutcome::Retrying, AttemptOutcome::GaveUp], "{log:?}");
    assert!(log[1].error.as_deref().is_some_and(|e| e.contains("retry_for_secs")), "{log:?}");
    assert_eq!(receiver.hits().len(), 2);
    receiver.stop();
    service.stop().await;
}
