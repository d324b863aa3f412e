//! The fault suite's machinery (issue "reliability and security suite"): a fleet of separate
//! processes on restartable private services, clients that retry with idempotency keys, fault
//! injection and the audit that compares what was accepted with what Redis and S3 hold.

pub mod audit;
pub mod cluster;
pub mod fleet;
pub mod rolling;
pub mod scenario;
pub mod sentinel;
pub mod submit;

pub use audit::Row;
pub use fleet::{ChaosFleet, Services};
pub use scenario::{Fault, RunSize, Scenario};
