//! Webhooks end to end against the real Redis and RabbitMQ (`FLEET_TEST_REDIS_URL`,
//! `FLEET_TEST_AMQP_URL`): a job's state change written to Redis is relayed, signed, POSTed to a
//! receiver on loopback, retried and logged. Each test works under its own key and queue
//! prefix and deletes its queues and keys at the end.

#[path = "webhooks/delivery.rs"]
mod delivery;
#[path = "webhooks/kill.rs"]
mod kill;
#[path = "webhooks/receiver.rs"]
mod receiver;
#[path = "webhooks/safety.rs"]
mod safety;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fleet_core::FleetConfig;
use fleet_core::config::TenantSettings;
use fleet_core::webhook::{AttemptOutcome, WebhookAttempt, WebhookEvent, WebhookSpec};
use fleet_core::{JobSpec, JobStatus, Limits};
use fleet_queue::{Broker, Topology};
use fleet_status::StatusStore;
use fleet_webhooks::WebhookTopology;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The tenant the tests' jobs belong to, and its secret.
const TENANT: &str = "acme";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A configuration under fresh key and queue prefixes, webhooks on, loopback over plain http
/// allowed, the tenant's secret set.
fn config() -> FleetConfig {
    config_tagged(&Uuid::now_v7().simple().to_string())
}

/// [`config`] under the key and queue prefixes of `tag` (a process started by a test shares its
/// parent's).
fn config_tagged(tag: &str) -> FleetConfig {
    let mut cfg = FleetConfig::default();
    if let Ok(url) = std::env::var("FLEET_TEST_AMQP_URL") {
        cfg.rabbitmq.url = url;
    }
    if let Ok(url) = std::env::var("FLEET_TEST_REDIS_URL") {
        cfg.redis.url = url;
    }
    cfg.rabbitmq.queue_prefix = format!("t-{tag}");
    cfg.redis.key_prefix = format!("t-{tag}");
    cfg.webhooks.enabled = true;
    cfg.webhooks.allow_http = true;
    cfg.webhooks.allowed_private = vec!["127.0.0.0/8".into()];
    cfg.webhooks.timeout_secs = 3;
    let mut settings = TenantSettings::default();
    settings.webhooks.secret = SECRET.into();
    cfg.tenants.0.insert(TENANT.into(), settings);
    cfg
}

/// The relay and deliverer running on one configuration.
struct Service {
    cfg: FleetConfig,
    store: StatusStore,
    broker: Arc<Broker>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    async fn start(cfg: FleetConfig) -> Service {
        let store = StatusStore::connect(&cfg.redis).await.expect("Redis for tests must be running");
        let topology = Topology::new(&cfg.rabbitmq, std::iter::empty::<&str>());
        let broker = Arc::new(Broker::with_urls(cfg.rabbitmq.broker_urls(), topology));
        let stop = CancellationToken::new();
        let task = fleet_webhooks::run(&cfg, store.clone(), broker.clone(), stop.clone()).expect("webhooks start");
        Service { cfg, store, broker, stop, task }
    }

    /// A job of the tenant, created and taken through start to success, its webhook `url` for
    /// `events`; the final record.
    async fn finish_job(&self, url: &str, events: &[WebhookEvent]) -> JobStatus {
        let mut spec = JobSpec::new("a lighthouse");
        spec.webhook = Some(WebhookSpec { url: url.to_owned(), events: events.to_vec() });
        let job = spec.validate(&Limits::default()).unwrap().assign(TENANT, Uuid::now_v7);
        let status = JobStatus::queued(&job, Utc::now()).unwrap();
        self.store.create(&status, None).await.unwrap();
        self.store.update(status.id, |s| s.start("w1", Utc::now())).await.unwrap();
        self.store.update(status.id, |s| s.succeed(Vec::new(), Utc::now())).await.unwrap()
    }

    /// The job's delivery log once it has `n` attempts (or what it has after `within`).
    async fn log(&self, job: Uuid, n: usize, within: Duration) -> Vec<WebhookAttempt> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let log = self.store.webhook_attempts(job).await.unwrap();
            if log.len() >= n || tokio::time::Instant::now() >= deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Messages waiting on the webhook queue and its wait queues (ready ones; not those a
    /// deliverer holds unacked).
    async fn queued(&self) -> u32 {
        let connection = self.broker.open_connection(Duration::from_secs(10)).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let topology = WebhookTopology::new(&self.cfg.rabbitmq.queue_prefix);
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let mut queued = 0;
        for name in std::iter::once(&topology.queue).chain(topology.waits.iter().map(|(_, name)| name)) {
            let queue = channel.queue_declare(name, passive, lapin::types::FieldTable::default()).await.unwrap();
            queued += queue.message_count();
        }
        let _ = connection.close(200, "done").await;
        queued
    }

    /// Stops the service and deletes its queues and keys.
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
        if let Ok(connection) = self.broker.open_connection(Duration::from_secs(10)).await {
            if let Ok(channel) = connection.create_channel().await {
                let _ = WebhookTopology::new(&self.cfg.rabbitmq.queue_prefix).delete(&channel).await;
            }
            let _ = connection.close(200, "done").await;
        }
        let client = redis::Client::open(self.cfg.redis.url.as_str()).unwrap();
        let mut raw = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}:*", self.cfg.redis.key_prefix)).query_async(&mut raw).await.unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut raw).await.unwrap();
        }
    }
}

/// The outcomes of a log, in order.
fn outcomes(log: &[WebhookAttempt]) -> Vec<AttemptOutcome> {
    log.iter().map(|a| a.outcome).collect()
}
