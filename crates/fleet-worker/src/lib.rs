//! The lightning-fleet worker: keeps its models warm, pulls jobs from RabbitMQ, runs them in
//! compatible batches through fleet-render (the engine), uploads the images and records status — acking a
//! message only once its effect (images in storage, status in Redis) is durable.
//!
//! - batching: the policy is fleet-render's (`fleet_render::batching`), shared with `fleet generate --jobs`;
//! - [`consumers`]: the queues it consumes — its models' shared queues and every tenant's lane;
//! - [`intake`]: turning deliveries into validated jobs waiting for a batch;
//! - [`republish`]: clean hand-backs that the broker does not count, dead letters with a reason;
//! - [`engine_thread`]: the one thread generations run on;
//! - [`noop`]: the engine mode (real, or the overhead benchmark's no-op);
//! - [`lora_fetch`]: LoRAs jobs give by URL, fetched into a disk cache and checked by digest;
//! - [`runner`]: running one batch end to end;
//! - [`result_set`]: an execution's images under its own keys, the record's compare-and-set picking the one set;
//! - [`heartbeat`]: liveness and counters in Redis;
//! - [`recover`]: finished jobs' records rebuilt from their stored images (`fleet recover`, and a
//!   worker meeting a job whose record was lost);
//! - [`worker`]: the consume loop and graceful shutdown.

pub mod consumers;
pub mod engine_thread;
pub mod finishing;
pub mod heartbeat;
pub mod intake;
pub mod lora_fetch;
pub mod metrics;
pub mod noop;
pub mod recover;
pub mod republish;
pub mod result_set;
pub mod runner;
pub mod worker;

pub use worker::{Worker, WorkerError, WorkerOptions};
