//! The relay and the deliverer together, as the dispatcher runs them when `webhooks.enabled`.

use std::sync::Arc;
use std::time::Duration;

use fleet_core::FleetConfig;
use fleet_core::config::WebhooksConfig;
use fleet_egress::{EgressClient, EgressPolicy};
use fleet_queue::Broker;
use fleet_status::StatusStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::deliver::{DeliverySettings, deliver};
use crate::error::WebhookError;
use crate::relay::relay;
use crate::topology::WebhookTopology;

/// The egress policy of `[webhooks]`: the connection within 5 s (or the whole timeout, if
/// shorter), the whole attempt within `timeout_secs`.
pub fn egress_policy(cfg: &WebhooksConfig) -> EgressPolicy {
    let timeout = Duration::from_secs(cfg.timeout_secs.max(1));
    EgressPolicy {
        allow_http: cfg.allow_http,
        allowed_hosts: cfg.allowed_hosts.clone(),
        allowed_private: cfg.allowed_private.clone(),
        max_redirects: cfg.max_redirects,
        connect_timeout: timeout.min(Duration::from_secs(5)),
        timeout,
    }
}

/// Starts the relay and the deliverer on `broker`'s nodes (connections of their own) until
/// `shutdown`; the handle ends once both have stopped. Fails at once on a policy the egress
/// client refuses.
pub fn run(
    config: &FleetConfig,
    store: StatusStore,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, WebhookError> {
    let egress = EgressClient::new(egress_policy(&config.webhooks))?;
    let topology = WebhookTopology::new(&config.rabbitmq.queue_prefix);
    let confirm_timeout = Duration::from_secs(config.rabbitmq.publish_timeout_secs.max(1));
    let settings = DeliverySettings {
        tenants: config.tenants.clone(),
        retry_for: Duration::from_secs(config.webhooks.retry_for_secs),
        max_concurrent: config.webhooks.max_concurrent.max(1),
        confirm_timeout,
    };
    Ok(tokio::spawn(async move {
        let relaying = relay(store.clone(), &broker, &topology, confirm_timeout, shutdown.clone());
        let delivering = deliver(store, &broker, &topology, egress, settings, shutdown);
        tokio::join!(relaying, delivering);
    }))
}
