//! One AMQP connection and channel, re-established with backoff when lost.

use std::time::Duration;

use fleet_core::backoff::{self, Retryable as _};
use fleet_core::config::mask_url;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::{QueueError, Topology};

/// Connection properties that run lapin on the caller's tokio runtime: its internal tasks on the
/// runtime's workers, its socket on the runtime's reactor. lapin's defaults start an executor and
/// a reactor of their own, so every frame crossed to their threads and back (two more thread
/// wake-ups per message). Outside a runtime, lapin's defaults.
pub fn connection_properties() -> ConnectionProperties {
    let defaults = ConnectionProperties::default();
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => defaults
            .with_executor(tokio_executor_trait::Tokio::default().with_handle(handle))
            .with_reactor(tokio_reactor_trait::Tokio),
        Err(_) => defaults,
    }
}

/// How long to keep retrying a refused or failed connection before the caller gets `Unavailable`.
const RETRY_FOR: Duration = Duration::from_secs(5);
/// Longest one AMQP connection handshake may take on the request path: a request
/// should fail fast rather than hang on a dead broker.
const RECONNECT_HANDSHAKE: Duration = Duration::from_secs(5);
/// Longest the first handshake at start-up may take. A busy 2-core machine (or a broker still
/// booting) can need well over 5 s for it.
const STARTUP_HANDSHAKE: Duration = Duration::from_secs(30);

/// A lazily (re)connected broker session with publisher confirms on and the topology declared.
pub struct Broker {
    url: String,
    topology: Topology,
    session: Mutex<Option<Session>>,
}

struct Session {
    connection: Connection,
    channel: Channel,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("url", &mask_url(&self.url)).finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker that connects on first use.
    pub fn new(url: &str, topology: Topology) -> Broker {
        Broker { url: url.to_owned(), topology, session: Mutex::new(None) }
    }

    /// Connects now and declares the topology; fails if the broker is unreachable.
    pub async fn connect(url: &str, topology: Topology) -> Result<Broker, QueueError> {
        let broker = Broker::new(url, topology);
        let session = broker.connect_with_backoff(STARTUP_HANDSHAKE).await?;
        *broker.session.lock().await = Some(session);
        Ok(broker)
    }

    /// The topology this broker declares.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The URL with its password masked, for messages.
    pub fn display_url(&self) -> String {
        mask_url(&self.url)
    }

    /// A live channel with confirms on, reconnecting (with backoff) if the last one died.
    pub async fn channel(&self) -> Result<Channel, QueueError> {
        let mut session = self.session.lock().await;
        if let Some(s) = session.as_ref() {
            if s.connection.status().connected() && s.channel.status().connected() {
                return Ok(s.channel.clone());
            }
            tracing::warn!(url = %self.display_url(), "RabbitMQ connection lost; reconnecting");
        }
        *session = None;
        let fresh = self.connect_with_backoff(RECONNECT_HANDSHAKE).await?;
        let channel = fresh.channel.clone();
        *session = Some(fresh);
        Ok(channel)
    }

    /// Closes the connection (AMQP close handshake) when the process is done with the broker; a
    /// later call would connect again.
    pub async fn close(&self) {
        if let Some(old) = self.session.lock().await.take() {
            let _ = old.connection.close(200, "closing").await;
        }
    }

    /// Forgets the current session so the next call reconnects (after an I/O error on it).
    pub async fn reset(&self) {
        if let Some(old) = self.session.lock().await.take() {
            let _ = old.connection.close(320, "reset after error").await;
        }
    }

    async fn connect_with_backoff(&self, handshake: Duration) -> Result<Session, QueueError> {
        (|| self.open_session(handshake))
            .retry(backoff::policy(Duration::from_millis(100), Duration::from_secs(2), Some(RETRY_FOR)))
            .sleep(tokio::time::sleep)
            .notify(|err, delay| tracing::debug!(error = %err, ?delay, "RabbitMQ connect failed; retrying"))
            .await
    }

    async fn open_session(&self, handshake: Duration) -> Result<Session, QueueError> {
        let unavailable = |source| QueueError::Unavailable { url: self.display_url(), source };
        let connect = Connection::connect(&self.url, connection_properties());
        let connection = match tokio::time::timeout(handshake, connect).await {
            Ok(result) => result.map_err(unavailable)?,
            Err(_) => return Err(unavailable(lapin::Error::InvalidConnectionState(lapin::ConnectionState::Closed))),
        };
        let channel = connection.create_channel().await.map_err(unavailable)?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(unavailable)?;
        self.topology.declare(&channel).await?;
        Ok(Session { connection, channel })
    }

    /// Ready-message and consumer counts of every job queue and the dead-letter queue.
    pub async fn depths(&self) -> Result<Vec<crate::QueueDepth>, QueueError> {
        let channel = self.channel().await?;
        let mut names: Vec<&str> = self.topology.queues.iter().map(|q| q.name.as_str()).collect();
        names.push(&self.topology.dead_letter_queue);
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            out.push(self.depth_on(&channel, name).await?);
        }
        Ok(out)
    }

    /// Counts of one queue.
    pub async fn depth(&self, queue: &str) -> Result<crate::QueueDepth, QueueError> {
        let channel = self.channel().await?;
        self.depth_on(&channel, queue).await
    }

    async fn depth_on(&self, channel: &Channel, queue: &str) -> Result<crate::QueueDepth, QueueError> {
        use lapin::options::QueueDeclareOptions;
        // A passive declare only reads counts; it fails (and closes the channel) if the queue is missing.
        let opts = QueueDeclareOptions { passive: true, durable: true, ..QueueDeclareOptions::default() };
        match channel.queue_declare(queue, opts, lapin::types::FieldTable::default()).await {
            Ok(q) => Ok(crate::QueueDepth {
                name: queue.to_owned(),
                messages: q.message_count(),
                consumers: q.consumer_count(),
            }),
            Err(source) => {
                self.reset().await;
                Err(QueueError::Topology { what: format!("queue {queue}"), source })
            }
        }
    }
}
