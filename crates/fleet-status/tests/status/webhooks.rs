//! The webhook outbox: a delivery is pushed with the state change it reports, in the same
//! script; the relay's claim/confirm/requeue moves; and the per-job delivery log.

use chrono::Utc;
use fleet_core::webhook::{AttemptOutcome, WebhookAttempt, WebhookDelivery, WebhookEvent, WebhookSpec};
use fleet_core::{ErrorCode, JobError, JobSpec, JobStatus, Limits};
use fleet_status::store::MAX_LOGGED_ATTEMPTS;
use uuid::Uuid;

use super::Fixture;

/// A queued job of `tenant` whose webhook asks for `events`.
fn with_webhook(tenant: &str, events: Vec<WebhookEvent>) -> JobStatus {
    let mut spec = JobSpec::new("a lighthouse");
    spec.webhook = Some(WebhookSpec { url: "https://hooks.example.com/fleet".into(), events });
    let job = spec.validate(&Limits::default()).unwrap().assign(tenant, Uuid::now_v7);
    JobStatus::queued(&job, Utc::now()).unwrap()
}

async fn outbox(fx: &mut Fixture) -> Vec<WebhookDelivery> {
    let entries: Vec<String> =
        redis::cmd("LRANGE").arg(fx.key("webhooks:outbox")).arg(0).arg(-1).query_async(&mut fx.raw).await.unwrap();
    entries.iter().rev().map(|e| serde_json::from_str(e).unwrap()).collect()
}

#[tokio::test]
async fn a_final_state_queues_its_delivery_with_the_write() {
    let mut fx = Fixture::new().await;
    let job = with_webhook("acme", vec![WebhookEvent::Succeeded, WebhookEvent::Failed]);
    fx.store.create(&job, None).await.unwrap();
    fx.store.update(job.id, |s| s.start("w1", Utc::now())).await.unwrap();
    assert!(outbox(&mut fx).await.is_empty(), "a start is no event");
    let done = fx.store.update(job.id, |s| s.fail(JobError::new(ErrorCode::Oom, "too big"), Utc::now())).await.unwrap();

    let queued = outbox(&mut fx).await;
    assert_eq!(queued.len(), 1);
    let delivery = &queued[0];
    assert_eq!(delivery.webhook_id, format!("msg_{}_3", job.id.simple()));
    assert_eq!((delivery.job_id, delivery.tenant.as_str()), (job.id, "acme"));
    assert_eq!(delivery.event, WebhookEvent::Failed);
    assert_eq!(delivery.url, "https://hooks.example.com/fleet");
    let body: serde_json::Value = serde_json::from_str(&delivery.body).unwrap();
    assert_eq!(body["type"], "job.failed");
    assert_eq!(serde_json::from_value::<JobStatus>(body["data"].clone()).unwrap(), done);
    fx.cleanup().await;
}

#[tokio::test]
async fn only_the_events_asked_for_are_queued() {
    let mut fx = Fixture::new().await;
    let job = with_webhook("acme", vec![WebhookEvent::Succeeded]);
    let plain = {
        let mut spec = JobSpec::new("no hook");
        spec.webhook = None;
        JobStatus::queued(&spec.validate(&Limits::default()).unwrap().assign("acme", Uuid::now_v7), Utc::now()).unwrap()
    };
    for status in [&job, &plain] {
        fx.store.create(status, None).await.unwrap();
        fx.store.update(status.id, |s| s.cancel(Utc::now())).await.unwrap();
    }
    assert!(outbox(&mut fx).await.is_empty(), "cancelled not asked for, and no webhook");
    fx.cleanup().await;
}

#[tokio::test]
async fn progress_is_queued_at_most_once_per_interval() {
    let mut fx = Fixture::new().await;
    let job = with_webhook("acme", vec![WebhookEvent::Progress, WebhookEvent::Succeeded]);
    fx.store.create(&job, None).await.unwrap();
    fx.store.update(job.id, |s| s.start("w1", Utc::now())).await.unwrap();
    for step in 1..=4 {
        let mut progress = job.progress.clone();
        progress.step = step;
        fx.store.set_progress(job.id, progress).await.unwrap();
    }
    fx.store.update(job.id, |s| s.succeed(Vec::new(), Utc::now())).await.unwrap();
    let events: Vec<_> = outbox(&mut fx).await.iter().map(|d| d.event).collect();
    // The first step's progress goes out; the next three fall within 5 s of it. The final
    // state is never throttled.
    assert_eq!(events, [WebhookEvent::Progress, WebhookEvent::Succeeded]);
    fx.cleanup().await;
}

#[tokio::test]
async fn the_relay_claims_confirms_and_requeues_entries() {
    let fx = Fixture::new().await;
    let jobs: Vec<_> = (0..3).map(|_| with_webhook("acme", vec![WebhookEvent::Cancelled])).collect();
    for job in &jobs {
        fx.store.create(job, None).await.unwrap();
        fx.store.update(job.id, |s| s.cancel(Utc::now())).await.unwrap();
    }
    let id_of = |entry: &str| serde_json::from_str::<WebhookDelivery>(entry).unwrap().job_id;
    let first = fx.store.claim_webhook().await.unwrap().unwrap();
    assert_eq!(id_of(&first), jobs[0].id, "oldest first");
    fx.store.relayed_webhook(&first).await.unwrap();
    let second = fx.store.claim_webhook().await.unwrap().unwrap();
    assert_eq!(fx.store.webhook_backlog().await.unwrap(), (1, 1));
    // A relay that died with `second` unconfirmed: the next one puts it back, to be sent first.
    assert_eq!(fx.store.requeue_relaying_webhooks().await.unwrap(), 1);
    assert_eq!(fx.store.claim_webhook().await.unwrap().as_deref(), Some(second.as_str()));
    fx.store.relayed_webhook(&second).await.unwrap();
    let third = fx.store.claim_webhook().await.unwrap().unwrap();
    assert_eq!(id_of(&third), jobs[2].id);
    fx.store.relayed_webhook(&third).await.unwrap();
    assert_eq!(fx.store.claim_webhook().await.unwrap(), None);
    assert_eq!(fx.store.webhook_backlog().await.unwrap(), (0, 0));
    fx.cleanup().await;
}

#[tokio::test]
async fn the_delivery_log_keeps_the_newest_attempts() {
    let mut fx = Fixture::new().await;
    let job = Uuid::now_v7();
    let total = MAX_LOGGED_ATTEMPTS as u32 + 5;
    for attempt in 1..=total {
        let line = WebhookAttempt {
            webhook_id: format!("msg_{}_3", job.simple()),
            event: WebhookEvent::Succeeded,
            attempt,
            at: Utc::now(),
            status_code: Some(500),
            error: None,
            duration_ms: 3,
            outcome: AttemptOutcome::Retrying,
            next_try: Some(Utc::now()),
        };
        fx.store.log_webhook_attempt(job, &line).await.unwrap();
    }
    let log = fx.store.webhook_attempts(job).await.unwrap();
    assert_eq!(log.len(), MAX_LOGGED_ATTEMPTS as usize);
    assert_eq!((log[0].attempt, log.last().unwrap().attempt), (6, total));
    assert!(fx.ttl(&format!("webhooks:{job}")).await > 0);
    assert!(fx.store.webhook_attempts(Uuid::now_v7()).await.unwrap().is_empty());
    fx.cleanup().await;
}
