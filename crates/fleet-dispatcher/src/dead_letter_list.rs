//! Looking into the dead-letter queue without emptying it, for `GET /v1/dead-letters`.
//!
//! On a connection of its own, the first [`WINDOW`] messages are taken with `basic.get` (manual
//! ack), held unacknowledged while they are read, then all returned at once with one `basic.nack`
//! (`multiple`, `requeue`); if the request dies half-way, closing the connection returns them just
//! the same. Holding them all before returning any means no message is read twice in one look.
//! A quorum queue serves returned messages before the others, in the order they came back, so a
//! look that returns the first messages in delivery-tag order leaves the queue's order as it was —
//! but only if every look takes the same number: after a look at 2, a look at 1 would move the
//! first message behind the second (a test saw exactly that). So every look takes the whole
//! window and the caller's `limit` only trims the answer. The dead-letter queue is a quorum queue without
//! `x-delivery-limit` (see `fleet_queue::topology`), so the delivery count each return adds
//! (the `x-delivery-count` header) never drops or re-dead-letters a message on RabbitMQ 3.x.
//! RabbitMQ ≥ 4.0 gives quorum queues a default delivery limit of 20: there the dead-letter queue
//! needs a `delivery-limit: -1` policy, or a message would be dropped after 20 looks.
//!
//! Its own connection, not the shared channel: that channel also carries the dead-letter watch
//! consumer, whose delivery tags a `multiple` nack would sweep up.

use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_queue::message::{HEADER_TENANT, dead_letter_reason, death, header_str, job_id};
use fleet_queue::{Broker, QueueError};
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{BasicGetOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use schemars::JsonSchema;
use serde::Serialize;

/// Longest the inspection connection's handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// Messages every look takes (and puts back), whatever the caller's limit: the most it may ask for.
pub const WINDOW: usize = 100;
/// Longest a look waits for the queue to count its returned messages as ready again.
const RETURN_WAIT: Duration = Duration::from_secs(2);
/// How much of a body that is not a job to show.
const PREVIEW_BYTES: usize = 200;

/// One dead-lettered message, as read from its body and `x-death` header.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct DeadLetter {
    /// The job id: the body's `id`, else a UUID `message_id`, else the id derived from the message
    /// (the README's wire-format section), the id its status record has.
    pub job_id: Option<uuid::Uuid>,
    /// The body's `tenant`, else the `x-fleet-tenant` header.
    pub tenant: Option<String>,
    pub model: Option<String>,
    pub priority: Option<String>,
    /// Why it was dead-lettered: `crashed` (workers kept crashing or losing their connection
    /// while holding it: the broker's delivery limit; clean stops do not count), `invalid_spec`
    /// (a worker refused it: not a valid job), or RabbitMQ's own `rejected`, `expired`, `maxlen`.
    pub reason: Option<String>,
    /// What happened, in words (for `invalid_spec`, every validation error).
    pub detail: Option<String>,
    /// The queue it died in.
    pub queue: Option<String>,
    /// How often it died there for that reason.
    pub count: Option<i64>,
    /// When it was first dead-lettered there.
    pub time: Option<DateTime<Utc>>,
    /// The start of a body that is not a job's JSON (null for jobs).
    pub body_preview: Option<String>,
}

/// The first messages of the dead-letter queue and its depth.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DeadLetterPage {
    pub queue: String,
    /// Messages in the queue when it was looked at.
    pub depth: u32,
    /// Its first `limit` messages, oldest first.
    pub messages: Vec<DeadLetter>,
}

/// `time` of the newest `x-death` entry, else the message's timestamp (set by a worker that
/// dead-lettered it itself); AMQP timestamps are Unix seconds.
fn death_time(delivery: &Delivery) -> Option<DateTime<Utc>> {
    let stamped = || DateTime::from_timestamp(i64::try_from((*delivery.properties.timestamp())?).ok()?, 0);
    let Some(headers) = delivery.properties.headers().as_ref() else { return stamped() };
    if !headers.inner().contains_key("x-death") {
        return stamped();
    }
    let AMQPValue::FieldArray(entries) = headers.inner().get("x-death")? else { return None };
    let AMQPValue::FieldTable(newest) = entries.as_slice().first()? else { return None };
    match newest.inner().get("time")? {
        AMQPValue::Timestamp(secs) => DateTime::from_timestamp(i64::try_from(*secs).ok()?, 0),
        _ => None,
    }
}

fn describe(delivery: &Delivery) -> DeadLetter {
    let body = serde_json::from_slice::<serde_json::Value>(&delivery.data).ok().filter(serde_json::Value::is_object);
    let field = |name: &str| body.as_ref()?.get(name)?.as_str().map(str::to_owned);
    let header_tenant = header_str(&delivery.properties, HEADER_TENANT).map(str::to_owned);
    let death = death(&delivery.properties);
    let why = dead_letter_reason(&delivery.properties);
    let preview = body.is_none().then(|| {
        let end = delivery.data.len().min(PREVIEW_BYTES);
        String::from_utf8_lossy(&delivery.data[..end]).into_owned()
    });
    DeadLetter {
        job_id: Some(job_id(&delivery.data, &delivery.properties)),
        tenant: field("tenant").or(header_tenant),
        model: field("model"),
        priority: field("priority"),
        reason: why.as_ref().map(|w| w.code.clone()),
        detail: why.as_ref().map(|w| w.detail.clone()),
        queue: why.and_then(|w| w.queue),
        count: death.as_ref().map(|d| d.count),
        time: death_time(delivery),
        body_preview: preview,
    }
}

/// The dead-letter queue's first `limit` (at most [`WINDOW`]) messages and its depth; every message
/// read is put back before this returns.
pub async fn look(broker: &Broker, limit: usize) -> Result<DeadLetterPage, QueueError> {
    let queue = broker.topology().dead_letter_queue.clone();
    let mut messages = peek(broker, &queue, WINDOW).await?;
    // A quorum queue takes returned messages back through its log, a moment after the nack: wait
    // until they count as ready again, so that the depth is right and a look straight after this
    // one finds them (unless someone else consumes them meanwhile: hence the bound).
    let deadline = tokio::time::Instant::now() + RETURN_WAIT;
    let depth = loop {
        let depth = broker.depth(&queue).await?.messages;
        if depth as usize >= messages.len() || tokio::time::Instant::now() >= deadline {
            break depth;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    messages.truncate(limit);
    Ok(DeadLetterPage { queue, depth, messages })
}

/// Reads up to `window` messages of `queue` and puts every one of them back.
async fn peek(broker: &Broker, queue: &str, window: usize) -> Result<Vec<DeadLetter>, QueueError> {
    let connection = broker.open_connection(HANDSHAKE).await?;
    let result = peek_on(&connection, queue, window).await;
    // Returns anything still held (after an error half-way) and frees the broker's resources.
    let _ = connection.close(200, "dead-letter inspection done").await;
    result.map_err(|source| QueueError::Topology { what: format!("reading queue {queue}"), source })
}

async fn peek_on(connection: &Connection, queue: &str, window: usize) -> Result<Vec<DeadLetter>, lapin::Error> {
    let channel = connection.create_channel().await?;
    let mut seen = Vec::new();
    let mut last_tag = None;
    while seen.len() < window {
        let Some(message) = channel.basic_get(queue, BasicGetOptions { no_ack: false }).await? else { break };
        last_tag = Some(message.delivery.delivery_tag);
        seen.push(describe(&message.delivery));
    }
    if let Some(tag) = last_tag {
        channel.basic_nack(tag, BasicNackOptions { multiple: true, requeue: true }).await?;
    }
    Ok(seen)
}
