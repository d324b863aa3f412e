//! RabbitMQ for lightning-fleet.
//!
//! - [`topology`]: the exchange, the per-model × priority quorum queues and the dead-letter queue,
//!   declared idempotently by dispatcher and workers alike;
//! - [`lane`]: a tenant's own queue per model and priority, so backlogs do not mix;
//! - [`message`]: a job as an AMQP message (JSON body, headers for tenant, priority, trace id);
//! - [`broker`]: one connection with reconnect and backoff;
//! - [`publisher`]: persistent, `mandatory`, confirmed publishing.

pub mod broker;
pub mod error;
pub mod lane;
pub mod message;
pub mod publisher;
pub mod topology;

pub use broker::{Broker, connection_properties};
pub use error::QueueError;
pub use lane::Lane;
pub use publisher::Publisher;
pub use topology::{QueueDepth, Topology};
