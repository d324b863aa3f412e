//! Webhooks for lightning-fleet, delivered per the Standard Webhooks specification.
//!
//! A state change a job's webhook asks for is written to Redis together with its delivery, on
//! the webhook outbox (fleet-status's update script), so neither exists without the other. From
//! there:
//!
//! - [`relay`] moves outbox entries onto the `<prefix>.webhooks` quorum queue, removing each from
//!   Redis only once RabbitMQ confirmed it;
//! - [`deliver`] consumes that queue, signs each attempt ([`signature`]) and POSTs it through
//!   fleet-egress (scheme, host and address checked after DNS and on every redirect), logs the
//!   attempt on the job, and retries a failure through the wait queues of [`topology`]
//!   (exponential backoff with jitter) until `webhooks.retry_for_secs` has passed;
//! - [`service`] runs both in the dispatcher when `webhooks.enabled`.
//!
//! Every attempt of a delivery carries the same `webhook-id`; delivery is at least once.

pub mod deliver;
pub mod error;
mod link;
pub mod relay;
pub mod service;
pub mod signature;
pub mod topology;

pub use error::WebhookError;
pub use service::{egress_policy, run};
pub use signature::Secret;
pub use topology::WebhookTopology;
