//! The deliverer: consumes the webhook queue, signs and POSTs each delivery through the egress
//! policy, logs every attempt on the job, and retries a failed one through the wait queue of its
//! backoff step. A message is acked only once its outcome is settled: delivered, given up, or its
//! retry confirmed on a wait queue; a deliverer that dies mid-attempt leaves it to be delivered
//! again (at least once, always under the same `webhook-id`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fleet_core::config::TenantsConfig;
use fleet_core::webhook::{AttemptOutcome, WebhookAttempt, WebhookDelivery};
use fleet_egress::{EgressClient, EgressError};
use fleet_queue::Broker;
use fleet_status::StatusStore;
use futures::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::WebhookError;
use crate::link::{Link, attempts_of};
use crate::signature::Secret;
use crate::topology::WebhookTopology;

/// Most bytes of a receiver's answer read (the answer's body is not used; only its status).
pub const MAX_RESPONSE_BYTES: usize = 4096;
/// Wait before reconnecting after the broker failed.
const RETRY_DELAY: Duration = Duration::from_secs(2);

/// What a deliverer needs besides its queues.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Signing secrets come from `[tenants.<name>.webhooks]`.
    pub tenants: TenantsConfig,
    /// How long after its state change a delivery is still retried.
    pub retry_for: Duration,
    /// Deliveries in flight at once (the consumer's prefetch).
    pub max_concurrent: u16,
    pub confirm_timeout: Duration,
}

/// Consumes and delivers until `shutdown`, then lets the attempts under way finish.
pub async fn deliver(
    store: StatusStore,
    broker: &Broker,
    topology: &WebhookTopology,
    egress: EgressClient,
    settings: DeliverySettings,
    shutdown: CancellationToken,
) {
    let worker = Arc::new(Worker { store, egress, settings, topology: topology.clone() });
    loop {
        match consume(&worker, broker, &shutdown).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "webhook deliverer stopped; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RETRY_DELAY) => {}
        }
    }
}

struct Worker {
    store: StatusStore,
    egress: EgressClient,
    settings: DeliverySettings,
    topology: WebhookTopology,
}

async fn consume(worker: &Arc<Worker>, broker: &Broker, shutdown: &CancellationToken) -> Result<(), WebhookError> {
    let link = Arc::new(Link::open(broker, &worker.topology, worker.settings.confirm_timeout).await?);
    let queue = &worker.topology.queue;
    link.channel
        .basic_qos(worker.settings.max_concurrent, BasicQosOptions::default())
        .await
        .map_err(WebhookError::amqp("setting the prefetch"))?;
    let tag = format!("webhooks-{}", uuid::Uuid::now_v7().simple());
    let mut consumer = link
        .channel
        .basic_consume(queue, &tag, BasicConsumeOptions::default(), FieldTable::default())
        .await
        .map_err(WebhookError::amqp(format!("consuming {queue}")))?;
    let mut attempts = JoinSet::new();
    let result = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            Some(_) = attempts.join_next(), if !attempts.is_empty() => {}
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let (worker, link) = (worker.clone(), link.clone());
                    attempts.spawn(async move { worker.handle(&link, delivery).await });
                }
                Some(Err(source)) => break Err(WebhookError::Amqp { what: format!("consuming {queue}"), source }),
                None => break Err(WebhookError::NotConfirmed(format!("the broker closed the consumer of {queue}"))),
            },
        }
    };
    // The attempts under way finish (each is bounded by the HTTP timeout); what the prefetch
    // holds beyond them goes back to the queue when the link closes.
    while attempts.join_next().await.is_some() {}
    if let Ok(link) = Arc::try_unwrap(link) {
        link.close().await;
    }
    result
}

/// How one attempt ended, before the retry decision.
struct Tried {
    status_code: Option<u16>,
    error: Option<String>,
    retryable: bool,
    delivered: bool,
}

impl Worker {
    async fn handle(&self, link: &Link, message: Delivery) {
        let delivery = match serde_json::from_slice::<WebhookDelivery>(&message.data) {
            Ok(delivery) => delivery,
            Err(e) => {
                tracing::error!(error = %e, "dropping a webhook message that is not a delivery");
                let _ = message.ack(BasicAckOptions::default()).await;
                return;
            }
        };
        let attempt = attempts_of(&message.properties) + 1;
        let started = Instant::now();
        let at = Utc::now();
        let tried = self.try_once(&delivery).await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut record = WebhookAttempt {
            webhook_id: delivery.webhook_id.clone(),
            event: delivery.event,
            attempt,
            at,
            status_code: tried.status_code,
            error: tried.error,
            duration_ms,
            outcome: if tried.delivered { AttemptOutcome::Delivered } else { AttemptOutcome::GaveUp },
            next_try: None,
        };
        if !tried.delivered && tried.retryable {
            match self.schedule_retry(link, &delivery, &message.data, attempt).await {
                Ok(Some(next_try)) => {
                    record.outcome = AttemptOutcome::Retrying;
                    record.next_try = Some(next_try);
                }
                Ok(None) => {
                    let spent = self.settings.retry_for.as_secs();
                    let error = record.error.take().map_or_else(String::new, |e| format!("{e}; "));
                    record.error = Some(format!("{error}retried for {spent} s (webhooks.retry_for_secs): given up"));
                }
                Err(e) => {
                    // Not settled: the message goes back to the queue and is tried again.
                    tracing::warn!(webhook_id = %delivery.webhook_id, error = %e, "could not queue a webhook retry");
                    let _ = message.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await;
                    return;
                }
            }
        }
        match record.outcome {
            AttemptOutcome::Delivered => {
                tracing::debug!(webhook_id = %delivery.webhook_id, job = %delivery.job_id, attempt, "webhook delivered")
            }
            AttemptOutcome::Retrying => {
                tracing::info!(webhook_id = %delivery.webhook_id, job = %delivery.job_id, attempt, status = ?record.status_code, error = ?record.error, "webhook attempt failed; retrying")
            }
            AttemptOutcome::GaveUp => {
                tracing::warn!(webhook_id = %delivery.webhook_id, job = %delivery.job_id, attempt, status = ?record.status_code, error = ?record.error, "webhook given up")
            }
        }
        if let Err(e) = self.store.log_webhook_attempt(delivery.job_id, &record).await {
            // The log is for people; the delivery's own outcome stands without it.
            tracing::warn!(job = %delivery.job_id, error = %e, "could not log a webhook attempt");
        }
        let _ = message.ack(BasicAckOptions::default()).await;
    }

    /// Signs (with a fresh timestamp) and POSTs the delivery once.
    async fn try_once(&self, delivery: &WebhookDelivery) -> Tried {
        let failed = |error: String, retryable: bool| Tried {
            status_code: None,
            error: Some(error),
            retryable,
            delivered: false,
        };
        let Some(key) = self.settings.tenants.settings(&delivery.tenant).webhooks.key() else {
            return failed(
                format!("tenant `{}` has no webhook secret (tenants.<name>.webhooks.secret)", delivery.tenant),
                false,
            );
        };
        let secret = Secret::from_bytes(key);
        let timestamp = Utc::now().timestamp();
        let signature = secret.sign(&delivery.webhook_id, timestamp, delivery.body.as_bytes());
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("lightning-fleet-webhooks/", env!("CARGO_PKG_VERSION"))),
        );
        for (name, value) in [
            ("webhook-id", delivery.webhook_id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ] {
            match HeaderValue::from_str(&value) {
                Ok(value) => {
                    headers.insert(name, value);
                }
                Err(_) => return failed(format!("{name} is not a valid header value"), false),
            }
        }
        match self.egress.post(&delivery.url, headers, delivery.body.clone().into_bytes(), MAX_RESPONSE_BYTES).await {
            Ok(answer) if (200..300).contains(&answer.status) => {
                Tried { status_code: Some(answer.status), error: None, retryable: false, delivered: true }
            }
            Ok(answer) => {
                let error = (300..400)
                    .contains(&answer.status)
                    .then(|| "redirect not followed (webhooks.max_redirects)".to_owned());
                let retryable = EgressError::Status { url: String::new(), status: answer.status }.is_retryable();
                Tried { status_code: Some(answer.status), error, retryable, delivered: false }
            }
            Err(e) => failed(e.to_string(), e.is_retryable()),
        }
    }

    /// Publishes the delivery onto the wait queue of its next backoff step (confirmed); the time
    /// it is due, or `None` when that would be past `retry_for` after the state change.
    async fn schedule_retry(
        &self,
        link: &Link,
        delivery: &WebhookDelivery,
        body: &[u8],
        failures: u32,
    ) -> Result<Option<DateTime<Utc>>, WebhookError> {
        let (secs, queue) = self.topology.wait_for(failures);
        let wait_ms = jittered_ms(secs);
        let next_try = Utc::now() + chrono::Duration::milliseconds(i64::try_from(wait_ms).unwrap_or(i64::MAX));
        let retry_for = chrono::Duration::from_std(self.settings.retry_for).unwrap_or(chrono::Duration::MAX);
        // A deadline past the calendar's end is no deadline.
        if delivery.created_at.checked_add_signed(retry_for).is_some_and(|deadline| next_try > deadline) {
            return Ok(None);
        }
        link.publish(queue, body, failures, Some(wait_ms)).await?;
        Ok(Some(next_try))
    }
}

/// A wait of `secs` less up to half of it at random, in ms, so receivers that failed together
/// are not retried in lock step.
fn jittered_ms(secs: u64) -> u64 {
    let full = secs * 1000;
    let draw = (uuid::Uuid::new_v4().as_u128() % 1000) as u64;
    full - full / 2 * draw / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_the_upper_half() {
        for _ in 0..1000 {
            let ms = jittered_ms(16);
            assert!((8000..=16000).contains(&ms), "{ms}");
        }
    }
}
