//! RabbitMQ for lightning-fleet.
//!
//! - [`topology`]: the exchange, the per-model × priority quorum queues and the dead-letter queue,
//!   declared idempotently by dispatcher and workers alike;
//! - [`message`]: a job as an AMQP message (JSON body, headers for tenant, priority, trace id);
//! - [`broker`]: one connection with reconnect and backoff;
//! - [`publisher`]: persistent, `mandatory`, confirmed publishing.

pub mod broker;
pub mod error;
pub mod message;
pub mod publisher;
pub mod topology;

pub use broker::{Broker, connection_properties};
pub use error::QueueError;
pub use publisher::Publisher;
pub use topology::{QueueDepth, Topology};
