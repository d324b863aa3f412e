//! Job status in Redis for lightning-fleet: the record clients poll, the idempotency keys the
//! dispatcher checks, the events an SSE stream follows, cancellation flags workers read between
//! steps, worker heartbeats and per-model counters; and the bulk runs `fleet bulk` records
//! ([`bulk_runs`]).
//!
//! Everything goes through [`StatusStore`]. Every multi-key write is one Lua script, so the
//! invariants hold with many dispatchers and workers at once: an idempotency key creates one job,
//! a job record changes only by compare-and-set along [`fleet_core::JobState`]'s legal
//! transitions, and a job leaves the in-flight count exactly once. Calls never hang: each gives
//! up after [`store::CALL_TIMEOUT`] with [`StatusError::Unavailable`].
//!
//! The key layout is in the crate's `README.md`.

#![warn(missing_docs)]

pub mod bulk_runs;
mod connection;
pub mod durability;
mod error;
mod keys;
mod replication;
mod scripts;
pub mod store;
mod types;

pub use bulk_runs::{BulkRunStore, BulkRunsError};
pub use durability::Persistence;
pub use error::StatusError;
pub use store::{ExpiredJob, FINISHED_MARKER_SECS, MAX_USAGE_HOURS, RemovalRequest, StatusStore};
pub use types::{
    Admission, BatchInfo, CreateOutcome, JobEvent, JobPage, QueueCounters, Quota, RateVerdict, Versioned,
    WorkerHeartbeat,
};
