//! What can go wrong with webhooks.

/// A webhook failure (the deliverer's and relay's loops log these and carry on).
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A secret is not `whsec_<base64>` (the text itself is never shown).
    #[error("the webhook secret is not `whsec_` followed by base64")]
    BadSecret,
    /// A delivery's signature does not verify.
    #[error("webhook signature refused: {0}")]
    BadSignature(&'static str),
    #[error("{0}")]
    Status(#[from] fleet_status::StatusError),
    #[error("{0}")]
    Queue(#[from] fleet_queue::QueueError),
    #[error("{0}")]
    Egress(#[from] fleet_egress::EgressError),
    /// The broker failed mid-conversation (channel closed, publish refused).
    #[error("RabbitMQ: {what}: {source}")]
    Amqp {
        what: String,
        #[source]
        source: lapin::Error,
    },
    /// The broker did not confirm a publish (nacked, returned, or no answer in time).
    #[error("RabbitMQ did not confirm {0}")]
    NotConfirmed(String),
    /// An outbox entry or queued message is not a delivery.
    #[error("not a webhook delivery: {0}")]
    BadDelivery(String),
}

impl WebhookError {
    pub(crate) fn amqp(what: impl Into<String>) -> impl FnOnce(lapin::Error) -> WebhookError {
        let what = what.into();
        move |source| WebhookError::Amqp { what, source }
    }
}
