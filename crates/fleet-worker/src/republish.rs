//! Publishing a delivered message again, with publisher confirms: a clean hand-back to its queue,
//! or a dead letter carrying the reason.
//!
//! **Clean hand-backs**: a worker that stops gives its unstarted jobs back without the broker
//! counting a failed delivery.
//!
//! A quorum queue counts every return of a message (a `nack` with requeue, a closed channel)
//! against `x-delivery-limit`, and dead-letters the message past it. A worker stopping cleanly
//! (SIGTERM: a rollout, a scale-down) did nothing wrong with the jobs it holds, so instead of
//! returning them it publishes each message again (same body and properties, with publisher
//! confirms) and then acks the original: the new copy starts with a delivery count of 0. Its
//! [`HEADER_HANDBACKS`] header counts these hand-backs; past [`MAX_HANDBACKS`] a message is
//! returned the ordinary way (and counts), so no message can bounce between stopping workers for
//! ever. A worker that gets a message the broker returned without a start (a lost connection or
//! a crash while it waited in a prefetch) hands it back the same way; only returns after a start
//! (crashes mid-job, outages) move a job toward the dead-letter queue.
//!
//! **Dead letters with a reason**: a broker's dead-lettering (a reject) cannot add headers, so a
//! worker that refuses a message publishes it to the dead-letter exchange itself, with
//! [`fleet_queue::message::HEADER_DEAD_LETTER_REASON`] (a code) and
//! [`fleet_queue::message::HEADER_DEAD_LETTER_DETAIL`] (what was wrong), then acks it.

use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};

/// Header counting the clean hand-backs of a job's message.
pub const HEADER_HANDBACKS: &str = "x-fleet-handbacks";
/// Clean hand-backs after which a message is returned the ordinary way, counted by the broker.
pub const MAX_HANDBACKS: u32 = 50;
/// Longest a republish waits for the broker's confirm.
const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a worker keeps of a delivery to publish it again.
#[derive(Debug, Clone)]
pub struct Original {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    pub exchange: String,
    pub routing_key: String,
}

impl Original {
    pub fn of(delivery: &Delivery) -> Original {
        Original {
            body: delivery.data.clone(),
            properties: delivery.properties.clone(),
            exchange: delivery.exchange.to_string(),
            routing_key: delivery.routing_key.to_string(),
        }
    }

    /// Clean hand-backs the message has been through.
    pub fn handbacks(&self) -> u32 {
        handbacks(&self.properties)
    }
}

/// The [`HEADER_HANDBACKS`] count of a message (0 when absent).
pub fn handbacks(properties: &BasicProperties) -> u32 {
    let value = properties.headers().as_ref().and_then(|h| h.inner().get(HEADER_HANDBACKS).cloned());
    match value {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongInt(n)) => u32::try_from(n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongUInt(n)) => n,
        _ => 0,
    }
}

/// Why a message could not be published again.
#[derive(Debug, thiserror::Error)]
pub enum RepublishError {
    #[error("hand-back limit reached ({MAX_HANDBACKS} clean hand-backs)")]
    Limit,
    #[error("republish failed: {0}")]
    Publish(#[from] lapin::Error),
    #[error("the broker did not confirm the republish within {}s", CONFIRM_TIMEOUT.as_secs())]
    Timeout,
    #[error("the broker refused the republish ({0})")]
    Refused(&'static str),
}

/// Publishes `original` again with one more hand-back counted, and waits for the broker's confirm.
/// The caller acks the original only when this succeeds (a crash between the two leaves two
/// copies: the second finds the job finished and is acked without running).
pub async fn republish(channel: &Channel, original: &Original) -> Result<(), RepublishError> {
    let count = original.handbacks();
    if count >= MAX_HANDBACKS {
        return Err(RepublishError::Limit);
    }
    let mut headers = fresh_headers(&original.properties);
    headers.insert(ShortString::from(HEADER_HANDBACKS), AMQPValue::LongLongInt(i64::from(count) + 1));
    publish_confirmed(channel, &original.exchange, &original.routing_key, &original.body, original.with(headers)).await
}

/// Publishes `original` to the dead-letter exchange `exchange` with its reason (`reason`: a code,
/// `detail`: what was wrong, `queue`: where it came from) and waits for the broker's confirm.
/// The caller acks the original only when this succeeds.
pub async fn dead_letter(
    channel: &Channel,
    exchange: &str,
    original: &Original,
    reason: &str,
    detail: &str,
    queue: &str,
) -> Result<(), RepublishError> {
    use fleet_queue::message::{HEADER_DEAD_LETTER_DETAIL, HEADER_DEAD_LETTER_QUEUE, HEADER_DEAD_LETTER_REASON};
    let mut headers = fresh_headers(&original.properties);
    for (name, value) in
        [(HEADER_DEAD_LETTER_REASON, reason), (HEADER_DEAD_LETTER_DETAIL, detail), (HEADER_DEAD_LETTER_QUEUE, queue)]
    {
        headers.insert(ShortString::from(name), AMQPValue::LongString(LongString::from(value)));
    }
    let properties = original.with(headers).with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
    publish_confirmed(channel, exchange, "", &original.body, properties).await
}

impl Original {
    fn with(&self, headers: FieldTable) -> BasicProperties {
        self.properties.clone().with_headers(headers)
    }
}

/// The message's headers without the broker's delivery count: a new copy starts afresh.
fn fresh_headers(properties: &BasicProperties) -> FieldTable {
    let mut fresh = FieldTable::default();
    for (name, value) in properties.headers().as_ref().map(|h| h.inner().iter()).into_iter().flatten() {
        if name.as_str() != "x-delivery-count" {
            fresh.insert(name.clone(), value.clone());
        }
    }
    fresh
}

async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), RepublishError> {
    let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    let confirm = channel.basic_publish(exchange, routing_key, options, body, properties).await?;
    match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
        Err(_) => Err(RepublishError::Timeout),
        Ok(Err(e)) => Err(RepublishError::Publish(e)),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)))) => Err(RepublishError::Refused("unroutable")),
        Ok(Ok(Confirmation::Nack(None))) => Err(RepublishError::Refused("nack")),
        Ok(Ok(Confirmation::NotRequested)) => Err(RepublishError::Refused("the channel has no publisher confirms")),
    }
}
