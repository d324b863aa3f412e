//! Confirmed publishing: a job counts as accepted only once the broker has confirmed it.

use std::time::Duration;

use fleet_core::ValidJob;
use fleet_core::backoff::{self, Retryable as _};
use lapin::options::BasicPublishOptions;
use lapin::publisher_confirm::Confirmation;

use crate::{Broker, QueueError, message};

/// How long a publish the broker refused is tried again before the caller gets `Nacked`.
pub const NACK_RETRY_FOR: Duration = Duration::from_secs(3);

/// Publishes jobs through a [`Broker`]; persistent, `mandatory`, with confirms and a timeout.
#[derive(Debug)]
pub struct Publisher {
    broker: std::sync::Arc<Broker>,
    confirm_timeout: Duration,
}

impl Publisher {
    pub fn new(broker: std::sync::Arc<Broker>, confirm_timeout: Duration) -> Publisher {
        Publisher { broker, confirm_timeout }
    }

    /// Publishes one job to its route ([`crate::Topology::route`]: the tenant's lane, or the shared
    /// queue). `Ok` means the broker confirmed it is on a queue; any error means it is not. A lane
    /// must have been declared first ([`crate::Topology::declare_queue`]), else the job is unroutable.
    ///
    /// A negative confirm is tried again for up to [`NACK_RETRY_FOR`]: a quorum queue refuses
    /// publishes while it elects a new leader (a second or two after a node dies), and a nacked
    /// message is not on the queue, so publishing it again cannot make a second copy.
    pub async fn publish(&self, job: &ValidJob, trace_id: &str) -> Result<(), QueueError> {
        (|| self.publish_once(job, trace_id))
            .retry(backoff::policy(Duration::from_millis(100), Duration::from_secs(1), Some(NACK_RETRY_FOR)))
            .when(|e| matches!(e, QueueError::Nacked { .. }))
            .sleep(tokio::time::sleep)
            .notify(|_, delay| tracing::info!(?delay, "RabbitMQ refused a publish (negative confirm); trying again"))
            .await
    }

    async fn publish_once(&self, job: &ValidJob, trace_id: &str) -> Result<(), QueueError> {
        let spec = job.spec();
        let id = spec.id.map(|id| id.to_string()).unwrap_or_default();
        let (body, props) = message::encode(job, trace_id)?;
        let exchange = self.broker.topology().exchange.clone();
        let key = match self.broker.topology().route(&spec.model, spec.priority, spec.tenant.as_deref()) {
            Some(queue) => queue.routing_key,
            None => crate::topology::routing_key(&spec.model, spec.priority),
        };
        let channel = self.broker.channel().await?;
        let unavailable = |source| QueueError::Unavailable { url: self.broker.display_url(), source };
        let opts = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };

        let confirm = match channel.basic_publish(&exchange, &key, opts, &body, props).await {
            Ok(confirm) => confirm,
            Err(source) => {
                self.broker.reset().await;
                return Err(unavailable(source));
            }
        };
        let confirmation = match tokio::time::timeout(self.confirm_timeout, confirm).await {
            Ok(Ok(c)) => c,
            Ok(Err(source)) => {
                self.broker.reset().await;
                return Err(unavailable(source));
            }
            Err(_) => {
                // The confirm may still come; the channel's state is unknown, so start afresh.
                self.broker.reset().await;
                return Err(QueueError::ConfirmTimeout { id, secs: self.confirm_timeout.as_secs() });
            }
        };
        match confirmation {
            // A returned message is also acked: unroutable, not accepted.
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => Err(QueueError::Unroutable {
                model: spec.model.clone(),
                priority: spec.priority.as_str().to_owned(),
                routing_key: key,
                exchange,
            }),
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Nack(None) => Err(QueueError::Nacked { id }),
            Confirmation::NotRequested => Err(QueueError::Nacked { id }),
        }
    }
}
