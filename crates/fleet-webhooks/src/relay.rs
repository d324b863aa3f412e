//! The relay: moves deliveries from the Redis outbox (written atomically with their state
//! change) onto the webhook queue. An entry leaves Redis only after RabbitMQ confirmed it, so a
//! crash anywhere sends it again (same `webhook-id`) rather than losing it.

use std::time::Duration;

use fleet_core::webhook::WebhookDelivery;
use fleet_queue::Broker;
use fleet_status::StatusStore;
use tokio_util::sync::CancellationToken;

use crate::error::WebhookError;
use crate::link::Link;
use crate::topology::WebhookTopology;

/// How often an empty outbox is looked at again. Polling, not `BLMOVE`: the status store's
/// connection is shared by every request, and a blocking command would stall them all.
const POLL: Duration = Duration::from_millis(200);
/// Wait before reconnecting after the broker or Redis failed.
const RETRY_DELAY: Duration = Duration::from_secs(2);

/// Relays until `shutdown`. Entries a relay that died left in `relaying` are put back first.
pub async fn relay(
    store: StatusStore,
    broker: &Broker,
    topology: &WebhookTopology,
    confirm_timeout: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            result = relay_once(&store, broker, topology, confirm_timeout, &shutdown) => result,
        };
        match result {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "webhook relay stopped; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RETRY_DELAY) => {}
        }
    }
}

async fn relay_once(
    store: &StatusStore,
    broker: &Broker,
    topology: &WebhookTopology,
    confirm_timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<(), WebhookError> {
    let link = Link::open(broker, topology, confirm_timeout).await?;
    let requeued = store.requeue_relaying_webhooks().await?;
    if requeued > 0 {
        tracing::info!(requeued, "webhook deliveries left mid-relay are queued again");
    }
    let result = pump(store, &link, topology, shutdown).await;
    link.close().await;
    result
}

/// Relays entries until `shutdown` or a failure (after which the failed entry is put back).
async fn pump(
    store: &StatusStore,
    link: &Link,
    topology: &WebhookTopology,
    shutdown: &CancellationToken,
) -> Result<(), WebhookError> {
    while !shutdown.is_cancelled() {
        let Some(entry) = store.claim_webhook().await? else {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(POLL) => {}
            }
            continue;
        };
        if let Err(e) = serde_json::from_str::<WebhookDelivery>(&entry) {
            // Nothing can deliver it; dropping it keeps it from blocking the ones behind it.
            tracing::error!(error = %e, entry = %entry.chars().take(200).collect::<String>(), "dropping an outbox entry that is not a webhook delivery");
            store.relayed_webhook(&entry).await?;
            continue;
        }
        if let Err(e) = link.publish(&topology.queue, entry.as_bytes(), 0, None).await {
            store.requeue_relaying_webhooks().await?;
            return Err(e);
        }
        store.relayed_webhook(&entry).await?;
    }
    Ok(())
}
