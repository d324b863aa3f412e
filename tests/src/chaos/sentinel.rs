//! The Redis failover scenario: the fleet reaches Redis through three sentinels; the primary is
//! SIGKILLed mid-batch and the replica promoted.
//!
//! What an asynchronous-replication failover can lose, and what makes up for it:
//! - writes the primary acknowledged that had not reached the replica. Behind Sentinel the
//!   status store waits for a replica (`WAIT 1 500`) after each write that matters — a job's
//!   creation, each state change, the "published" mark — so only a write whose caller was still
//!   waiting can be lost, and that caller sees an error and retries: the dispatcher answers 503
//!   (the client retries with its idempotency key; nothing was published), a worker retries its
//!   write against the new primary (its compare-and-set finds the record as the replica had it);
//! - progress writes (they do not wait): a job shows older progress until the next write;
//! - a record lost all the same (the replica down, so writes stopped waiting; or a Redis without
//!   Sentinel that restarted empty): a worker that gets the job again re-creates its record from
//!   the message, or, when the job's images are all stored, rebuilds its `succeeded` record from
//!   them; `fleet recover` does that for finished jobs whose message is gone.
//!
//! The killed node comes back at once at its old address, a primary with its old data until the
//! sentinels demote it: the fleet must not write to it meanwhile (every reconnection asks the
//! sentinels, `crates/fleet-status/src/connection.rs`), or those writes vanish with the resync.

use std::time::Duration;

use super::fleet::{ChaosFleet, Services};

/// Kills the primary while a worker is mid-batch, waits for the promotion and brings the killed
/// node back as the new replica.
pub async fn kill_primary(fleet: &ChaosFleet, services: &mut Services) {
    let _ = fleet.victim(Duration::from_secs(10)).await;
    let group = services.sentinel.as_mut().expect("the failover scenario runs with Services::with_sentinel");
    let without_primary = tokio::task::block_in_place(|| group.fail_over(Duration::from_secs(60)));
    eprintln!("[Redis failover] no primary for {:.1} s", without_primary.as_secs_f64());
}
