//! The dispatcher's shared state: configuration, keys and the service clients.

use std::sync::Arc;
use std::time::Duration;

use fleet_core::FleetConfig;
use fleet_queue::{Broker, Publisher, Topology};
use fleet_status::StatusStore;

use crate::auth::ApiKeys;
use crate::metrics::Metrics;
use crate::server::DispatcherError;
use crate::submit::DepthCache;

/// Cheap to clone; handed to every request.
#[derive(Clone, Debug)]
pub struct App {
    pub config: Arc<FleetConfig>,
    pub keys: Arc<ApiKeys>,
    pub status: Arc<StatusStore>,
    pub broker: Arc<Broker>,
    pub publisher: Arc<Publisher>,
    pub metrics: Arc<Metrics>,
    pub depths: Arc<DepthCache>,
    /// The tenants' lanes this process has declared and registered.
    pub lanes: Arc<crate::lanes::Lanes>,
    /// Bulk runs as `fleet bulk` records them in Redis.
    pub bulk_runs: Arc<crate::bulk_runs::BulkRuns>,
    /// Where workers store images; the images endpoint redirects to (or streams from) it.
    pub store: Arc<fleet_storage::ImageStore>,
}

impl App {
    /// Connects to Redis and RabbitMQ (declaring the topology) and checks the image store (bucket
    /// and credentials), or says which one is missing or misconfigured.
    pub async fn connect(config: FleetConfig) -> Result<App, DispatcherError> {
        let status = StatusStore::connect(&config.redis).await.map_err(DispatcherError::Status)?;
        status.check_durability(config.redis.allow_volatile).await.map_err(DispatcherError::Status)?;
        let bulk_runs = crate::bulk_runs::BulkRuns::connect(&config.redis).await.map_err(DispatcherError::BulkRuns)?;
        let topology = Topology::new(&config.rabbitmq, config.models.keys().map(String::as_str));
        let broker = Arc::new(
            Broker::connect_any(config.rabbitmq.broker_urls(), topology).await.map_err(DispatcherError::Queue)?,
        );
        let store = fleet_storage::ImageStore::connect(&config.s3).await.map_err(DispatcherError::Storage)?;
        let publisher = Publisher::new(broker.clone(), Duration::from_secs(config.rabbitmq.publish_timeout_secs));
        Ok(App {
            keys: Arc::new(ApiKeys::new(&config.http.api_keys)),
            config: Arc::new(config),
            status: Arc::new(status),
            broker,
            publisher: Arc::new(publisher),
            metrics: Arc::new(Metrics::default()),
            depths: Arc::new(DepthCache::default()),
            lanes: Arc::default(),
            store: Arc::new(store),
            bulk_runs: Arc::new(bulk_runs),
        })
    }
}
