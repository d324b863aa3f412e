//! Exchanges and queues, named from configuration and declared idempotently.
//!
//! Jobs go to a direct exchange with routing key `<model>.<priority>`; each routing key has its own
//! durable quorum queue `<prefix>.<model>.<priority>`, so interactive work never waits behind a bulk
//! backlog. With `rabbitmq.tenant_lanes`, each tenant's jobs go to a lane of their own beside the
//! shared queue ([`crate::lane`]): `<prefix>.<model>.<priority>@<tenant>`, bound with the lane's
//! routing key and declared with the same arguments. A message that keeps killing workers is
//! dead-lettered after `delivery_limit` deliveries: the fanout dead-letter exchange copies it to
//! the dead-letter queue (kept for operators) and to `<dead-letter queue>.watch` (consumed by
//! dispatchers, which mark the job failed).
//!
//! On a cluster, a quorum queue keeps a replica on `rabbitmq.quorum_initial_group_size` nodes
//! (unset: on every node the cluster has when the queue is first declared) and goes on serving
//! while a majority of them runs.

use fleet_core::Priority;
use fleet_core::config::RabbitMqConfig;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::QueueError;
use crate::lane::Lane;

/// Both priority classes, interactive first: the order workers prefer.
pub const PRIORITIES: [Priority; 2] = [Priority::Interactive, Priority::Bulk];

/// One job queue: a model and priority's shared queue, or one tenant's lane of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobQueue {
    pub name: String,
    pub routing_key: String,
    pub model: String,
    pub priority: Priority,
    /// The tenant of a lane; `None` for the shared queue.
    pub tenant: Option<String>,
}

/// The whole layout for a set of models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub exchange: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// Second queue on the dead-letter exchange, consumed by dispatchers to mark dead-lettered
    /// jobs failed; the dead-letter queue itself keeps every message for operators.
    pub dead_letter_watch_queue: String,
    pub delivery_limit: u32,
    /// Replicas of each job queue (`x-quorum-initial-group-size`); `None`: one on every node.
    pub quorum_initial_group_size: Option<u32>,
    /// The shared queues (one per model and priority); lanes are made by [`Topology::lane_queue`].
    pub queues: Vec<JobQueue>,
    /// Whether jobs of a known tenant go to the tenant's lane (`rabbitmq.tenant_lanes`).
    pub tenant_lanes: bool,
    queue_prefix: String,
}

/// Message counts of one queue, from a passive declare.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueDepth {
    pub name: String,
    /// Ready messages (not yet delivered to a consumer).
    pub messages: u32,
    pub consumers: u32,
}

/// The routing key of a model and priority.
pub fn routing_key(model: &str, priority: Priority) -> String {
    format!("{model}.{}", priority.as_str())
}

impl Topology {
    /// Queues for `models` (both priorities each), names from the configuration.
    pub fn new<'a>(cfg: &RabbitMqConfig, models: impl IntoIterator<Item = &'a str>) -> Topology {
        let queues = models
            .into_iter()
            .flat_map(|model| {
                PRIORITIES.iter().map(move |&priority| JobQueue {
                    name: format!("{}.{model}.{}", cfg.queue_prefix, priority.as_str()),
                    routing_key: routing_key(model, priority),
                    model: model.to_owned(),
                    priority,
                    tenant: None,
                })
            })
            .collect();
        Topology {
            exchange: cfg.exchange.clone(),
            dead_letter_exchange: cfg.dead_letter_exchange.clone(),
            dead_letter_queue: cfg.dead_letter_queue.clone(),
            dead_letter_watch_queue: format!("{}.watch", cfg.dead_letter_queue),
            delivery_limit: cfg.delivery_limit,
            quorum_initial_group_size: cfg.quorum_initial_group_size,
            queues,
            tenant_lanes: cfg.tenant_lanes,
            queue_prefix: cfg.queue_prefix.clone(),
        }
    }

    /// The queue of a lane; it exists once declared ([`Topology::declare_queue`]).
    pub fn lane_queue(&self, lane: &Lane) -> JobQueue {
        JobQueue {
            name: format!("{}.{}", self.queue_prefix, lane.routing_key()),
            routing_key: lane.routing_key(),
            model: lane.model.clone(),
            priority: lane.priority,
            tenant: Some(lane.tenant.clone()),
        }
    }

    /// Where a job of `tenant` for `model` at `priority` is published: the tenant's lane when lanes
    /// are on, else the shared queue; `None` when this topology does not serve the model.
    pub fn route(&self, model: &str, priority: Priority, tenant: Option<&str>) -> Option<JobQueue> {
        let shared = self.queue_for(model, priority)?;
        match tenant {
            Some(tenant) if self.tenant_lanes => Some(self.lane_queue(&Lane::new(model, priority, tenant))),
            _ => Some(shared.clone()),
        }
    }

    /// The job queue a routing key of this topology's exchange leads to (a shared queue or a lane).
    pub fn queue_of_routing_key(&self, routing_key: &str) -> Option<JobQueue> {
        if let Some(queue) = self.queues.iter().find(|q| q.routing_key == routing_key) {
            return Some(queue.clone());
        }
        let lane = Lane::parse(routing_key)?;
        self.queue_for(&lane.model, lane.priority).map(|_| self.lane_queue(&lane))
    }

    /// The queue a job for `model` at `priority` lands in, if this topology has it.
    pub fn queue_for(&self, model: &str, priority: Priority) -> Option<&JobQueue> {
        self.queues.iter().find(|q| q.model == model && q.priority == priority)
    }

    /// Arguments of every job queue. Changing them for an existing queue makes the broker refuse the
    /// declare (PRECONDITION_FAILED), so they are part of the deployment contract.
    pub fn job_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(ShortString::from("x-queue-type"), long_string("quorum"));
        args.insert(ShortString::from("x-delivery-limit"), AMQPValue::LongLongInt(i64::from(self.delivery_limit)));
        args.insert(ShortString::from("x-dead-letter-exchange"), long_string(&self.dead_letter_exchange));
        // at-least-once dead-lettering (RabbitMQ ≥ 3.10) keeps a dead-lettered job until the DLQ confirms it;
        // it requires the reject-publish overflow behaviour.
        args.insert(ShortString::from("x-dead-letter-strategy"), long_string("at-least-once"));
        args.insert(ShortString::from("x-overflow"), long_string("reject-publish"));
        if let Some(size) = self.quorum_initial_group_size {
            args.insert(ShortString::from("x-quorum-initial-group-size"), AMQPValue::LongLongInt(i64::from(size)));
        }
        args
    }

    /// Declares exchanges, queues and bindings. Safe to call from every process at every start.
    pub async fn declare(&self, channel: &Channel) -> Result<(), QueueError> {
        let durable_exchange = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        let durable_queue = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        let topo = |what: String| move |source| QueueError::Topology { what, source };

        channel
            .exchange_declare(&self.dead_letter_exchange, ExchangeKind::Fanout, durable_exchange, FieldTable::default())
            .await
            .map_err(topo(format!("exchange {}", self.dead_letter_exchange)))?;
        for queue in [&self.dead_letter_queue, &self.dead_letter_watch_queue] {
            let mut args = FieldTable::default();
            args.insert(ShortString::from("x-queue-type"), long_string("quorum"));
            channel.queue_declare(queue, durable_queue, args).await.map_err(topo(format!("queue {queue}")))?;
            channel
                .queue_bind(queue, &self.dead_letter_exchange, "", QueueBindOptions::default(), FieldTable::default())
                .await
                .map_err(topo(format!("binding {queue}")))?;
        }

        channel
            .exchange_declare(&self.exchange, ExchangeKind::Direct, durable_exchange, FieldTable::default())
            .await
            .map_err(topo(format!("exchange {}", self.exchange)))?;
        for queue in &self.queues {
            self.declare_queue(channel, queue).await?;
        }
        Ok(())
    }

    /// Declares one job queue and binds it to the job exchange (which must exist: [`Topology::declare`]).
    pub async fn declare_queue(&self, channel: &Channel, queue: &JobQueue) -> Result<(), QueueError> {
        let durable_queue = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        let topo = |what: String| move |source| QueueError::Topology { what, source };
        channel
            .queue_declare(&queue.name, durable_queue, self.job_queue_arguments())
            .await
            .map_err(topo(format!("queue {}", queue.name)))?;
        channel
            .queue_bind(
                &queue.name,
                &self.exchange,
                &queue.routing_key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(topo(format!("binding {} to {}", queue.name, queue.routing_key)))?;
        Ok(())
    }
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_per_model_and_priority() {
        let topo = Topology::new(&RabbitMqConfig::default(), ["tiny", "sdxl-lightning-4step"]);
        let names: Vec<_> = topo.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "fleet.tiny.interactive",
                "fleet.tiny.bulk",
                "fleet.sdxl-lightning-4step.interactive",
                "fleet.sdxl-lightning-4step.bulk"
            ]
        );
        assert_eq!(topo.queue_for("tiny", Priority::Bulk).map(|q| q.routing_key.as_str()), Some("tiny.bulk"));
        assert!(topo.queue_for("other", Priority::Bulk).is_none());
    }

    #[test]
    fn a_tenant_s_jobs_go_to_its_lane_when_lanes_are_on() {
        let topo = Topology::new(&RabbitMqConfig::default(), ["tiny"]);
        let lane = topo.route("tiny", Priority::Bulk, Some("acme")).unwrap();
        assert_eq!((lane.name.as_str(), lane.routing_key.as_str()), ("fleet.tiny.bulk@acme", "tiny.bulk@acme"));
        assert_eq!(lane.tenant.as_deref(), Some("acme"));
        assert_eq!(topo.route("tiny", Priority::Bulk, None).unwrap().name, "fleet.tiny.bulk");
        assert!(topo.route("other", Priority::Bulk, Some("acme")).is_none(), "a model not served has no lane");
        assert_eq!(topo.queue_of_routing_key("tiny.bulk@acme"), Some(lane));
        assert_eq!(topo.queue_of_routing_key("tiny.bulk").unwrap().name, "fleet.tiny.bulk");
        assert_eq!(topo.queue_of_routing_key("other.bulk@acme"), None);

        let off = Topology::new(&RabbitMqConfig { tenant_lanes: false, ..RabbitMqConfig::default() }, ["tiny"]);
        assert_eq!(off.route("tiny", Priority::Bulk, Some("acme")).unwrap().name, "fleet.tiny.bulk");
    }

    #[test]
    fn the_initial_group_size_is_sent_only_when_configured() {
        let key = "x-quorum-initial-group-size";
        let unset = Topology::new(&RabbitMqConfig::default(), ["tiny"]);
        assert!(!unset.job_queue_arguments().inner().contains_key(key));
        let cfg = RabbitMqConfig { quorum_initial_group_size: Some(3), ..RabbitMqConfig::default() };
        let args = Topology::new(&cfg, ["tiny"]).job_queue_arguments();
        assert_eq!(args.inner().get(key), Some(&AMQPValue::LongLongInt(3)));
    }
}
