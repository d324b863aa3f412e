//! One AMQP connection and confirm-mode channel of a relay or deliverer, with the webhook queues
//! declared, and confirmed publishing on it. Each loop owns its link and opens a new one after a
//! failure, so a broken channel never outlives the attempt that found it broken.

use std::time::Duration;

use fleet_queue::Broker;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use crate::error::WebhookError;
use crate::topology::WebhookTopology;

/// Longest a connection handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The header that counts a delivery's attempts so far.
pub(crate) const ATTEMPTS_HEADER: &str = "x-fleet-webhook-attempts";

pub(crate) struct Link {
    connection: Connection,
    pub(crate) channel: Channel,
    confirm_timeout: Duration,
}

impl Link {
    pub(crate) async fn open(
        broker: &Broker,
        topology: &WebhookTopology,
        confirm_timeout: Duration,
    ) -> Result<Link, WebhookError> {
        let connection = broker.open_connection(HANDSHAKE).await?;
        let channel = connection.create_channel().await.map_err(WebhookError::amqp("opening a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(WebhookError::amqp("turning on publisher confirms"))?;
        topology.declare(&channel).await?;
        Ok(Link { connection, channel, confirm_timeout })
    }

    /// Publishes `body` onto `queue` (through the default exchange), persistent and mandatory;
    /// `Ok` only once the broker confirmed it is on the queue. `attempts` and `expiration_ms`
    /// (a per-message TTL, the retry's jitter) go with it when given.
    pub(crate) async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        attempts: u32,
        expiration_ms: Option<u64>,
    ) -> Result<(), WebhookError> {
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from(ATTEMPTS_HEADER), AMQPValue::LongUInt(attempts));
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_headers(headers);
        if let Some(ms) = expiration_ms {
            props = props.with_expiration(ShortString::from(ms.to_string()));
        }
        let opts = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let what = format!("a webhook delivery on {queue}");
        let confirm = self
            .channel
            .basic_publish("", queue, opts, body, props)
            .await
            .map_err(WebhookError::amqp(format!("publishing {what}")))?;
        match tokio::time::timeout(self.confirm_timeout, confirm).await {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(_)) => Err(WebhookError::NotConfirmed(what)),
            Ok(Err(source)) => Err(WebhookError::Amqp { what, source }),
            Err(_) => Err(WebhookError::NotConfirmed(format!("{what} in {} s", self.confirm_timeout.as_secs()))),
        }
    }

    pub(crate) async fn close(self) {
        let _ = self.connection.close(200, "closing").await;
    }
}

/// The attempts a queued message has had, from its header (0 for a fresh one).
pub(crate) fn attempts_of(props: &BasicProperties) -> u32 {
    props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(ATTEMPTS_HEADER))
        .and_then(|v| match v {
            AMQPValue::LongUInt(n) => Some(*n),
            AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
            _ => None,
        })
        .unwrap_or(0)
}
