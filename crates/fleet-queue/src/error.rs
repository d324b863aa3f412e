//! What can go wrong talking to RabbitMQ, and the stable code each failure maps to.

use fleet_core::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The broker cannot be reached (connect, channel or I/O failure).
    #[error("RabbitMQ at {url} is unavailable: {source}")]
    Unavailable {
        url: String,
        #[source]
        source: lapin::Error,
    },
    /// No queue is bound for this routing key: no worker pool serves the model.
    #[error(
        "no queue serves model `{model}` at priority `{priority}` (routing key `{routing_key}` on exchange `{exchange}`)"
    )]
    Unroutable { model: String, priority: String, routing_key: String, exchange: String },
    /// The broker refused the message (e.g. the queue is at its length limit).
    #[error("RabbitMQ refused job {id} (negative confirm)")]
    Nacked { id: String },
    /// No confirm arrived in time; the job must be treated as not accepted.
    #[error("RabbitMQ did not confirm job {id} within {secs} s")]
    ConfirmTimeout { id: String, secs: u64 },
    /// Declaring the topology failed, e.g. a queue exists with other arguments.
    #[error("declaring {what} failed: {source}")]
    Topology {
        what: String,
        #[source]
        source: lapin::Error,
    },
    /// The broker was given no address at all (configuration allows no such thing).
    #[error("no RabbitMQ address given (rabbitmq.url or rabbitmq.urls)")]
    NoBrokerAddress,
    /// The job could not be serialised.
    #[error("cannot encode job: {0}")]
    Encode(#[from] serde_json::Error),
}

impl QueueError {
    /// The error code clients see.
    pub fn code(&self) -> ErrorCode {
        match self {
            QueueError::Unroutable { .. } => ErrorCode::ModelUnavailable,
            QueueError::Encode(_) => ErrorCode::Internal,
            QueueError::Unavailable { .. }
            | QueueError::NoBrokerAddress
            | QueueError::Nacked { .. }
            | QueueError::ConfirmTimeout { .. }
            | QueueError::Topology { .. } => ErrorCode::QueueUnavailable,
        }
    }
}
