//! Deliveries → jobs waiting for a batch, each holding the one acker of its message.

use std::time::Instant;

use fleet_core::{FleetConfig, JobSpec, ValidJob};
use fleet_status::Versioned;
use lapin::acker::Acker;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::AMQPValue;

use fleet_render::batching::Waiting;

use crate::republish::{Original, RepublishError, republish};

/// Tenant of a job published straight onto the queue with neither a body `tenant` nor a header.
pub const ANONYMOUS_TENANT: &str = "anonymous";

/// A validated job waiting in this worker, with the means to settle its message exactly once.
#[derive(Debug)]
pub struct Pending {
    pub job: ValidJob,
    pub arrived: Instant,
    pub trace_id: String,
    /// Earlier deliveries of this message (`x-delivery-count`, set by quorum queues).
    pub delivery_count: u32,
    /// The job's status record as this worker last wrote it (set when it starts the job, cleared
    /// when progress writes move it on), so the final write can skip reading it again.
    pub record: Option<Versioned>,
    /// When this worker last found no cancel request for the job (set when it starts the job).
    pub cancel_checked: Option<Instant>,
    /// The message as delivered, for a clean hand-back ([`crate::republish`]); set by the consume loop.
    pub original: Option<Original>,
    /// The digest of the request as submitted, from the message's
    /// [`fleet_queue::message::HEADER_REQUEST_DIGEST`] (a dispatcher's message has one).
    pub request_digest: Option<String>,
    acker: Option<Acker>,
}

impl Waiting for Pending {
    fn spec(&self) -> &JobSpec {
        self.job.spec()
    }
    fn arrived(&self) -> Instant {
        self.arrived
    }
}

/// A message that is not a valid job: it is rejected (to the dead-letter queue), never retried.
#[derive(Debug)]
pub struct Refused {
    pub id: Option<uuid::Uuid>,
    pub tenant: Option<String>,
    pub model: Option<String>,
    pub reason: String,
    pub acker: Acker,
}

/// Reads and validates a delivery. Ids and seeds missing from directly-published jobs are filled
/// in here by the rules every delivery of the message computes alike: the id is
/// [`fleet_queue::message::job_id`]'s, the seed derives from it (`ValidJob::assign`), so a
/// redelivery is the same job with the same images.
pub fn receive(delivery: Delivery, config: &FleetConfig) -> Result<Pending, Box<Refused>> {
    let trace_id = fleet_queue::message::header_str(&delivery.properties, fleet_queue::message::HEADER_TRACE_ID)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let delivery_count = delivery_count(&delivery);
    let request_digest =
        fleet_queue::message::header_str(&delivery.properties, fleet_queue::message::HEADER_REQUEST_DIGEST)
            .map(str::to_owned);
    let job_id = || fleet_queue::message::job_id(&delivery.data, &delivery.properties);
    let spec = match fleet_queue::message::decode(&delivery.data, &delivery.properties) {
        Ok(spec) => spec,
        Err(err) => {
            return Err(Box::new(Refused {
                id: Some(job_id()),
                tenant: None,
                model: None,
                reason: format!("unreadable job: {err}"),
                acker: delivery.acker,
            }));
        }
    };
    // The body's id is the rule's first choice; the rest of it runs only for a body without one.
    let id = spec.id.unwrap_or_else(job_id);
    let (tenant, model) = (spec.tenant.clone(), Some(spec.model.clone()));
    let limits = config.limits_for(&spec.model);
    match spec.validate(&limits) {
        Ok(job) => {
            let tenant = job.spec().tenant.clone().unwrap_or_else(|| ANONYMOUS_TENANT.to_owned());
            let job = job.assign(&tenant, || id);
            Ok(Pending {
                job,
                arrived: Instant::now(),
                trace_id,
                delivery_count,
                record: None,
                cancel_checked: None,
                original: None,
                request_digest,
                acker: Some(delivery.acker),
            })
        }
        Err(errors) => Err(Box::new(Refused {
            id: Some(id),
            tenant,
            model,
            reason: format!("invalid job: {errors}"),
            acker: delivery.acker,
        })),
    }
}

fn delivery_count(delivery: &Delivery) -> u32 {
    let headers = delivery.properties.headers().as_ref();
    match headers.and_then(|h| h.inner().get("x-delivery-count")) {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::ShortInt(n)) => u32::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

impl Pending {
    pub fn id(&self) -> uuid::Uuid {
        self.job.spec().id.unwrap_or_default()
    }

    /// The effect is durable: remove the message from the queue.
    pub async fn ack(&mut self) {
        if let Some(acker) = self.acker.take()
            && let Err(err) = acker.ack(BasicAckOptions::default()).await
        {
            // The broker will redeliver; the job's keys and status are idempotent, so that is safe.
            tracing::warn!(job = %self.id(), error = %err, "ack failed; the job may run again");
        }
    }

    /// Give the message back after a failed attempt (an outage during the job, a start that could
    /// not be recorded), counted against the delivery limit: a `basic.reject`, which every
    /// RabbitMQ version counts (from 4.3 a `basic.nack` no longer does).
    pub async fn requeue(&mut self) {
        if let Some(acker) = self.acker.take()
            && let Err(err) = acker.reject(BasicRejectOptions { requeue: true }).await
        {
            tracing::warn!(job = %self.id(), error = %err, "reject failed; the broker redelivers when the channel closes");
        }
    }

    /// Give the message back with nothing wrong with the job (a stop whose clean hand-back could
    /// not be made): a `basic.nack`, which RabbitMQ 4.3 and later do not count against the
    /// delivery limit (earlier versions count every return).
    pub async fn release(&mut self) {
        if let Some(acker) = self.acker.take()
            && let Err(err) = acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await
        {
            tracing::warn!(job = %self.id(), error = %err, "nack failed; the broker redelivers when the channel closes");
        }
    }

    /// Clean hand-back (this worker stops, nothing is wrong with the job): the message is
    /// published again on `channel` and the original acked, so the broker's delivery count does
    /// not grow ([`crate::republish`]). When that cannot be done (no channel, the hand-back limit,
    /// a refused republish), the message is returned the ordinary way.
    pub async fn hand_back(&mut self, channel: Option<&lapin::Channel>) {
        let Some(channel) = channel else { return self.release().await };
        if !self.is_open() {
            return;
        }
        let republished = self.try_hand_back(channel).await;
        match republished {
            Ok(()) => {}
            // The bound on hand-backs holds on every broker version: this return counts.
            Err(err @ RepublishError::Limit) => {
                tracing::warn!(job = %self.id(), error = %err, "returning the job to the queue, counted");
                self.requeue().await;
            }
            Err(err) => {
                tracing::warn!(job = %self.id(), error = %err, "cannot hand the job back cleanly; returning it to the queue");
                self.release().await;
            }
        }
    }

    /// The clean hand-back alone: publishes the message again and acks the original. On failure
    /// the message stays unsettled here, for the caller to run or return.
    pub async fn try_hand_back(&mut self, channel: &lapin::Channel) -> Result<(), RepublishError> {
        let Some(original) = self.original.as_ref() else { return Err(RepublishError::Refused("no message kept")) };
        republish(channel, original).await?;
        self.ack().await;
        Ok(())
    }

    /// Clean hand-backs the message has been through.
    pub fn handbacks(&self) -> u32 {
        self.original.as_ref().map_or(0, Original::handbacks)
    }

    /// Whether the message is still unsettled.
    pub fn is_open(&self) -> bool {
        self.acker.is_some()
    }
}

impl Refused {
    pub async fn dead_letter(self) {
        let _ = self.acker.reject(BasicRejectOptions { requeue: false }).await;
    }
}
