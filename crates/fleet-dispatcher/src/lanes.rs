//! The tenants' lanes this dispatcher publishes to (`fleet_queue::lane`).
//!
//! Before the first job of a lane is published, the lane's queue is declared on the broker and
//! the lane recorded in the registry in Redis, where workers find it; from then on it is known
//! here and costs nothing per job. It is recorded again every [`REREGISTER`], so a registry lost
//! with its Redis fills up again as tenants submit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fleet_queue::topology::JobQueue;
use fleet_queue::{Lane, QueueDepth};

use crate::App;
use crate::error::ApiError;

/// How long a lane counts as declared and registered before the next job of it does both again.
pub const REREGISTER: Duration = Duration::from_secs(60);

/// Lanes declared and registered by this process, with when.
#[derive(Debug, Default)]
pub struct Lanes {
    known: Mutex<HashMap<String, Instant>>,
}

impl Lanes {
    /// Makes sure `queue` exists on the broker and is in the registry, if it is a lane (a shared
    /// queue is declared with the topology).
    pub async fn ensure(&self, app: &App, queue: &JobQueue) -> Result<(), ApiError> {
        if queue.tenant.is_none() || self.is_fresh(&queue.name) {
            return Ok(());
        }
        let channel = app.broker.channel().await?;
        if let Err(e) = app.broker.topology().declare_queue(&channel, queue).await {
            // A failed declare closes the channel; the next call opens another.
            app.broker.reset().await;
            return Err(e.into());
        }
        app.status.register_lane(&queue.routing_key).await?;
        if let Ok(mut known) = self.known.lock() {
            known.insert(queue.name.clone(), Instant::now());
        }
        Ok(())
    }

    /// Forgets a lane whose queue turned out to be missing (a publish to it was unroutable), so
    /// the next job declares it again.
    pub fn forget(&self, queue: &JobQueue) {
        if let Ok(mut known) = self.known.lock() {
            known.remove(&queue.name);
        }
    }

    fn is_fresh(&self, name: &str) -> bool {
        self.known.lock().is_ok_and(|known| known.get(name).is_some_and(|at| at.elapsed() < REREGISTER))
    }
}

/// Depth and consumers of every job queue, every registered lane of a served model and the
/// dead-letter queue. A lane whose depth cannot be read is left out (and logged).
pub async fn all_depths(app: &App) -> Result<Vec<QueueDepth>, ApiError> {
    let mut depths = app.broker.depths().await?;
    let topology = app.broker.topology();
    for routing_key in app.status.lanes().await? {
        let Some(lane) = Lane::parse(&routing_key).filter(|l| topology.queue_for(&l.model, l.priority).is_some())
        else {
            continue;
        };
        let name = topology.lane_queue(&lane).name;
        match app.broker.depth(&name).await {
            Ok(depth) => depths.push(depth),
            Err(e) => tracing::warn!(queue = %name, error = %e, "cannot read a lane's depth"),
        }
    }
    Ok(depths)
}
