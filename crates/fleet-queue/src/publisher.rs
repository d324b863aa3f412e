//! Confirmed publishing: a job counts as accepted only once the broker has confirmed it.

use std::time::Duration;

use fleet_core::ValidJob;
use lapin::options::BasicPublishOptions;
use lapin::publisher_confirm::Confirmation;

use crate::topology::routing_key;
use crate::{Broker, QueueError, message};

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

    /// Publishes one job. `Ok` means the broker confirmed it is on a queue; any error means it is not.
    pub async fn publish(&self, job: &ValidJob, trace_id: &str) -> Result<(), QueueError> {
        let spec = job.spec();
        let id = spec.id.map(|id| id.to_string()).unwrap_or_default();
        let (body, props) = message::encode(job, trace_id)?;
        let exchange = self.broker.topology().exchange.clone();
        let key = routing_key(&spec.model, spec.priority);
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
