//! The queues a worker consumes: the shared queue of each of its models and priorities, and every
//! tenant's lane of them (`fleet_queue::lane`) — those registered when it starts and those it
//! finds in the lane registry later, so a new tenant's first job is seen within [`LANE_POLL`].

use std::collections::HashSet;
use std::time::Duration;

use fleet_core::FleetConfig;
use fleet_core::config::TenantsConfig;
use fleet_queue::topology::{JobQueue, PRIORITIES};
use fleet_queue::{Lane, Topology};
use fleet_status::StatusStore;
use futures::stream::SelectAll;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};

use crate::worker::WorkerError;

/// How often a worker looks for lanes new tenants opened.
pub const LANE_POLL: Duration = Duration::from_millis(500);

/// How many messages of one queue a worker may hold (RabbitMQ's per-consumer prefetch).
///
/// A shared queue: two batches' worth, enough to fill a batch and start the next. A tenant's lane:
/// three batches' worth times the tenant's weight (at least one), because the worker can only give
/// a tenant the turns its held jobs allow: the jobs of the running batch and those still being
/// stored count against the prefetch too, and a tenant of weight 3 takes three quarters of each
/// batch against one of weight 1.
pub fn prefetch(max_images: u32, tenants: &TenantsConfig, queue: &JobQueue) -> u16 {
    let count = match &queue.tenant {
        None => f64::from(max_images) * 2.0,
        Some(tenant) => f64::from(max_images) * 3.0 * tenants.settings(tenant).share.weight.max(1.0),
    };
    count.ceil().clamp(1.0, f64::from(u16::MAX)) as u16
}

/// Who consumes: the worker's id, models and configuration.
pub struct ConsumingWorker<'a> {
    pub id: &'a str,
    pub models: Vec<String>,
    pub config: &'a FleetConfig,
}

/// The consumers of one channel, merged into one stream of deliveries.
pub struct Consumers {
    channel: Channel,
    worker_id: String,
    models: Vec<String>,
    max_images: u32,
    tenants: TenantsConfig,
    /// Every consumer's deliveries.
    pub deliveries: SelectAll<Consumer>,
    /// Consumer tags, to cancel them on shutdown.
    pub tags: Vec<String>,
    queues: HashSet<String>,
}

impl Consumers {
    /// Consumes the shared queues of the worker's models and their lanes registered so far. A
    /// registry that cannot be read now leaves the lanes to the next [`Consumers::follow_new_lanes`].
    pub async fn start(
        channel: Channel,
        worker: &ConsumingWorker<'_>,
        topology: &Topology,
        status: &StatusStore,
    ) -> Result<Consumers, WorkerError> {
        let mut consumers = Consumers {
            channel,
            worker_id: worker.id.to_owned(),
            models: worker.models.clone(),
            max_images: worker.config.worker.max_batch_images,
            tenants: worker.config.tenants.clone(),
            deliveries: SelectAll::new(),
            tags: Vec::new(),
            queues: HashSet::new(),
        };
        let shared: Vec<JobQueue> = consumers
            .models
            .iter()
            .flat_map(|model| PRIORITIES.iter().filter_map(|&p| topology.queue_for(model, p).cloned()))
            .collect();
        for queue in &shared {
            consumers.add(queue).await?;
        }
        consumers.follow_new_lanes(topology, status).await?;
        Ok(consumers)
    }

    /// Starts consuming the registered lanes of this worker's models it does not consume yet
    /// (declaring each first: the queue exists, but a consume on a missing queue would close the
    /// channel). A registry read that fails is logged and tried again at the next poll.
    pub async fn follow_new_lanes(&mut self, topology: &Topology, status: &StatusStore) -> Result<(), WorkerError> {
        let registered = match status.lanes().await {
            Ok(lanes) => lanes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the lane registry; consuming the lanes known so far");
                return Ok(());
            }
        };
        for routing_key in registered {
            let Some(lane) = Lane::parse(&routing_key) else { continue };
            if !self.models.contains(&lane.model) {
                continue;
            }
            let queue = topology.lane_queue(&lane);
            if self.queues.contains(&queue.name) {
                continue;
            }
            topology.declare_queue(&self.channel, &queue).await?;
            self.add(&queue).await?;
            tracing::info!(worker = %self.worker_id, queue = %queue.name, "consuming a tenant's lane");
        }
        Ok(())
    }

    async fn add(&mut self, queue: &JobQueue) -> Result<(), WorkerError> {
        let tag = format!("{}:{}", self.worker_id, queue.name);
        // A per-consumer limit: it applies to the consumers this channel starts after it.
        let count = prefetch(self.max_images, &self.tenants, queue);
        self.channel.basic_qos(count, BasicQosOptions::default()).await.map_err(WorkerError::Consume)?;
        let consumer = self
            .channel
            .basic_consume(&queue.name, &tag, BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(WorkerError::Consume)?;
        self.deliveries.push(consumer);
        self.tags.push(tag);
        self.queues.insert(queue.name.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use fleet_core::Priority;
    use fleet_core::config::{RabbitMqConfig, TenantSettings, TenantShare};

    use super::*;

    #[test]
    fn lanes_hold_three_batches_times_their_weight_shared_queues_two() {
        let topology = Topology::new(&RabbitMqConfig::default(), ["tiny"]);
        let mut tenants = TenantsConfig::default();
        tenants.0.insert("heavy".into(), TenantSettings { share: TenantShare { weight: 2.5 }, ..Default::default() });
        tenants.0.insert("light".into(), TenantSettings { share: TenantShare { weight: 0.5 }, ..Default::default() });
        let lane = |t: &str| topology.route("tiny", Priority::Bulk, Some(t)).unwrap();
        assert_eq!(prefetch(8, &tenants, topology.queue_for("tiny", Priority::Bulk).unwrap()), 16);
        assert_eq!(prefetch(8, &tenants, &lane("anyone")), 24);
        assert_eq!(prefetch(8, &tenants, &lane("heavy")), 60);
        assert_eq!(prefetch(8, &tenants, &lane("light")), 24, "never less than three batches");
        assert_eq!(prefetch(60_000, &tenants, &lane("heavy")), u16::MAX);
    }
}
