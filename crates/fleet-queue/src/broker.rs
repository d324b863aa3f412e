//! One AMQP connection and channel, re-established with backoff when lost, to any node of a
//! RabbitMQ cluster.
//!
//! A broker knows one or more node URLs (`rabbitmq.urls`). A connect tries them in turn, starting
//! at the node it used last (a random one the first time, so a fleet's processes spread over the
//! cluster); one pass over every node is one try of the backoff. A lost or reset session moves
//! the start to the next node, so a process whose node died reconnects to a live one without first
//! waiting on the dead one. Quorum queues live on every node of the cluster, so any node serves
//! every queue.

use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// The nodes' URLs; never empty ([`QueueError::NoBrokerAddress`] otherwise).
    urls: Vec<String>,
    /// The node the next connect tries first.
    next: AtomicUsize,
    topology: Topology,
    session: Mutex<Option<Session>>,
}

struct Session {
    connection: Connection,
    channel: Channel,
    /// Which of the URLs this session is connected to.
    node: usize,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("urls", &self.display_url()).finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker on one node that connects on first use.
    pub fn new(url: &str, topology: Topology) -> Broker {
        Broker::with_urls(vec![url.to_owned()], topology)
    }

    /// A broker on any of `urls` (the nodes of one cluster) that connects on first use.
    pub fn with_urls(urls: Vec<String>, topology: Topology) -> Broker {
        let first = random_index(urls.len());
        Broker { urls, next: AtomicUsize::new(first), topology, session: Mutex::new(None) }
    }

    /// Connects now to one node and declares the topology; fails if the broker is unreachable.
    pub async fn connect(url: &str, topology: Topology) -> Result<Broker, QueueError> {
        Broker::connect_any(vec![url.to_owned()], topology).await
    }

    /// Connects now to one of `urls` and declares the topology; fails if no node is reachable.
    pub async fn connect_any(urls: Vec<String>, topology: Topology) -> Result<Broker, QueueError> {
        let broker = Broker::with_urls(urls, topology);
        let session = broker.connect_with_backoff(STARTUP_HANDSHAKE).await?;
        *broker.session.lock().await = Some(session);
        Ok(broker)
    }

    /// The topology this broker declares.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The URL (every node's, comma-separated) with passwords masked, for messages.
    pub fn display_url(&self) -> String {
        self.urls.iter().map(|u| mask_url(u)).collect::<Vec<_>>().join(", ")
    }

    /// The node the current session is connected to (its URL, password masked), if any.
    pub async fn node(&self) -> Option<String> {
        self.session.lock().await.as_ref().map(|s| mask_url(&self.urls[s.node]))
    }

    /// A live channel with confirms on, reconnecting (with backoff) if the last one died.
    pub async fn channel(&self) -> Result<Channel, QueueError> {
        let mut session = self.session.lock().await;
        if let Some(s) = session.as_ref() {
            if s.connection.status().connected() && s.channel.status().connected() {
                return Ok(s.channel.clone());
            }
            tracing::warn!(url = %mask_url(&self.urls[s.node]), "RabbitMQ connection lost; reconnecting");
            self.move_past(s.node);
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
            self.move_past(old.node);
            let _ = old.connection.close(320, "reset after error").await;
        }
    }

    /// A connection of its own (no topology declared) to the first node that answers, starting
    /// with the one the shared session uses; for work that must not share its channel.
    pub async fn open_connection(&self, handshake: Duration) -> Result<Connection, QueueError> {
        let (_, connection) = self.first_answering(|node| self.open_connection_to(&self.urls[node], handshake)).await?;
        Ok(connection)
    }

    /// The next connect starts at the node after `node` (which failed or was given up).
    fn move_past(&self, node: usize) {
        let _ =
            self.next.compare_exchange(node, (node + 1) % self.urls.len().max(1), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// `open` on each node in turn from the preferred one; the first success and its node, else
    /// the last node's error.
    async fn first_answering<T, F, Fut>(&self, mut open: F) -> Result<(usize, T), QueueError>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<T, QueueError>>,
    {
        let start = self.next.load(Ordering::Relaxed);
        let mut last = QueueError::NoBrokerAddress;
        for k in 0..self.urls.len() {
            let node = (start + k) % self.urls.len();
            match open(node).await {
                Ok(value) => {
                    self.next.store(node, Ordering::Relaxed);
                    return Ok((node, value));
                }
                Err(e) => {
                    if self.urls.len() > 1 {
                        tracing::debug!(node = %mask_url(&self.urls[node]), error = %e, "RabbitMQ node unavailable; trying the next");
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn connect_with_backoff(&self, handshake: Duration) -> Result<Session, QueueError> {
        (|| self.open_session(handshake))
            .retry(backoff::policy(Duration::from_millis(100), Duration::from_secs(2), Some(RETRY_FOR)))
            .sleep(tokio::time::sleep)
            .notify(|err, delay| tracing::debug!(error = %err, ?delay, "RabbitMQ connect failed; retrying"))
            .await
    }

    /// A session on the first node that answers.
    async fn open_session(&self, handshake: Duration) -> Result<Session, QueueError> {
        let (node, (connection, channel)) =
            self.first_answering(|node| self.open_session_on(&self.urls[node], handshake)).await?;
        if self.urls.len() > 1 {
            tracing::info!(node = %mask_url(&self.urls[node]), "connected to RabbitMQ");
        }
        Ok(Session { connection, channel, node })
    }

    async fn open_session_on(&self, url: &str, handshake: Duration) -> Result<(Connection, Channel), QueueError> {
        let unavailable = |source| QueueError::Unavailable { url: mask_url(url), source };
        let connection = self.open_connection_to(url, handshake).await?;
        let channel = connection.create_channel().await.map_err(unavailable)?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(unavailable)?;
        self.topology.declare(&channel).await?;
        Ok((connection, channel))
    }

    async fn open_connection_to(&self, url: &str, handshake: Duration) -> Result<Connection, QueueError> {
        let unavailable = |source| QueueError::Unavailable { url: mask_url(url), source };
        match tokio::time::timeout(handshake, Connection::connect(url, connection_properties())).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(unavailable(lapin::Error::InvalidConnectionState(lapin::ConnectionState::Closed))),
        }
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

/// A random index below `len` (0 when `len` is 0 or 1).
fn random_index(len: usize) -> usize {
    let draw = uuid::Uuid::new_v4().as_u128();
    usize::try_from(draw % len.max(1) as u128).unwrap_or(0)
}
