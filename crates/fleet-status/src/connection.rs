//! The fleet's connection to Redis: a [`ConnectionManager`] to `redis.url`, or, with
//! `redis.sentinels`, a connection to the primary the sentinels name, followed across a failover.
//!
//! Behind Sentinel every (re)connection goes through the sentinels, as Redis's guidelines for
//! Sentinel clients ask: a `ConnectionManager` would reconnect by itself to the address it was
//! made for, and a killed primary restarted there answers as a primary (with its old data) until
//! the sentinels turn it into a replica seconds later, which throws away everything written to it
//! in between. So a call that fails for a reason of the connection (refused, dropped, timed out,
//! `READONLY`) drops the connection, and the next call asks the sentinels for the primary (they
//! check its `ROLE`) and connects to that. The failing call itself still fails: callers retry as
//! they do for any unavailable Redis.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fleet_core::config::RedisConfig;
use futures::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};

use crate::error::is_availability_error;

/// Least time between two questions to the sentinels, so a burst of failing calls asks once.
const RESOLVE_EVERY: Duration = Duration::from_millis(200);

/// A Redis connection that calls go through; cheap to clone (clones share the connection).
#[derive(Clone)]
pub(crate) enum RedisConn {
    /// A fixed address (`redis.url`).
    Direct { manager: ConnectionManager, client: Client },
    /// Whatever primary the sentinels name.
    Sentinel(Arc<Follower>),
}

/// The current primary behind Sentinel and the means to find the next one.
pub(crate) struct Follower {
    sentinel: tokio::sync::Mutex<Resolver>,
    /// `None` after a connection failure, until the sentinels name the primary again.
    current: RwLock<Option<Primary>>,
    /// The database of `redis.url`, for [`ConnectionLike::get_db`] while no primary is known.
    db: i64,
}

struct Resolver {
    client: SentinelClient,
    last_asked: Option<Instant>,
    /// The primary's address last connected to, for logging a move.
    last_addr: String,
}

#[derive(Clone)]
struct Primary {
    /// `host:port`, for comparing and logging.
    addr: String,
    conn: MultiplexedConnection,
    client: Client,
    /// Tells connections apart (clones of one share it), so a late failure on a connection
    /// already replaced does not drop its successor.
    id: Arc<()>,
}

impl RedisConn {
    /// Connects to `redis.url`, or through `redis.sentinels` to the current primary.
    pub(crate) async fn open(cfg: &RedisConfig, manager_cfg: ConnectionManagerConfig) -> RedisResult<RedisConn> {
        if cfg.sentinels.is_empty() {
            let client = Client::open(cfg.url.as_str())?;
            let manager = ConnectionManager::new_with_config(client.clone(), manager_cfg).await?;
            return Ok(RedisConn::Direct { manager, client });
        }
        // The primary's database, user and password come from `redis.url`; its address from the sentinels.
        let node = SentinelNodeConnectionInfo {
            tls_mode: None,
            redis_connection_info: Some(cfg.url.as_str().into_connection_info()?.redis),
        };
        let db = node.redis_connection_info.as_ref().map_or(0, |info| info.db);
        let mut sentinel = SentinelClient::build(
            cfg.sentinels.clone(),
            cfg.sentinel_master.clone(),
            Some(node),
            SentinelServerType::Master,
        )?;
        let client = sentinel.async_get_client().await?;
        let primary = Primary::connect(client).await?;
        tracing::info!(primary = %primary.addr, master = %cfg.sentinel_master, "Redis primary found through Sentinel");
        Ok(RedisConn::Sentinel(Arc::new(Follower {
            sentinel: tokio::sync::Mutex::new(Resolver {
                client: sentinel,
                last_asked: Some(Instant::now()),
                last_addr: primary.addr.clone(),
            }),
            current: RwLock::new(Some(primary)),
            db,
        })))
    }

    /// A client for the current primary, for connections of their own (pub/sub).
    pub(crate) async fn client(&self) -> RedisResult<Client> {
        match self {
            RedisConn::Direct { client, .. } => Ok(client.clone()),
            RedisConn::Sentinel(follower) => Ok(follower.primary().await?.client),
        }
    }
}

impl Primary {
    async fn connect(client: Client) -> RedisResult<Primary> {
        let addr = client.get_connection_info().addr.to_string();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(crate::store::CONNECT_TIMEOUT)
            .set_response_timeout(crate::store::CALL_TIMEOUT);
        let conn = client.get_multiplexed_async_connection_with_config(&config).await?;
        Ok(Primary { addr, conn, client, id: Arc::new(()) })
    }
}

impl Follower {
    fn known(&self) -> Option<Primary> {
        // A poisoned lock only means a panic elsewhere while swapping; the value is whole.
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The primary to send a call to: the one connected to, else the one the sentinels name now.
    async fn primary(&self) -> RedisResult<Primary> {
        match self.known() {
            Some(primary) => Ok(primary),
            None => self.resolve().await,
        }
    }

    /// After a call on `used`: a connection failure drops that connection (never reconnecting to
    /// its address by itself), so the next call asks the sentinels.
    fn after<T>(&self, used: &Primary, result: &RedisResult<T>) {
        if let Err(e) = result
            && is_availability_error(e)
        {
            let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if current.as_ref().is_some_and(|p| Arc::ptr_eq(&p.id, &used.id)) {
                tracing::warn!(primary = %used.addr, error = %e, "lost the Redis primary; asking the sentinels");
                *current = None;
            }
        }
    }

    /// Asks the sentinels for the primary and connects to it. One caller asks at a time, at most
    /// every [`RESOLVE_EVERY`]; the others wait for its answer.
    async fn resolve(&self) -> RedisResult<Primary> {
        let mut resolver = self.sentinel.lock().await;
        if let Some(primary) = self.known() {
            return Ok(primary);
        }
        if let Some(at) = resolver.last_asked {
            tokio::time::sleep(RESOLVE_EVERY.saturating_sub(at.elapsed())).await;
        }
        resolver.last_asked = Some(Instant::now());
        // The sentinel client also checks that the node it names says it is a primary.
        let client = match tokio::time::timeout(crate::store::CALL_TIMEOUT, resolver.client.async_get_client()).await {
            Ok(result) => result?,
            Err(_) => return Err(timed_out("the sentinels did not answer in time")),
        };
        let primary = match tokio::time::timeout(crate::store::CALL_TIMEOUT, Primary::connect(client)).await {
            Ok(result) => result?,
            Err(_) => return Err(timed_out("the Redis primary did not answer in time")),
        };
        if primary.addr != resolver.last_addr {
            tracing::warn!(from = %resolver.last_addr, to = %primary.addr, "Redis failed over; following the new primary");
            resolver.last_addr = primary.addr.clone();
        } else {
            tracing::info!(primary = %primary.addr, "reconnected to the Redis primary the sentinels name");
        }
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(primary.clone());
        Ok(primary)
    }
}

fn timed_out(what: &str) -> redis::RedisError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_owned()).into()
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Direct { manager, .. } => manager.req_packed_command(cmd),
            RedisConn::Sentinel(follower) => async move {
                let primary = follower.primary().await?;
                let result = primary.conn.clone().req_packed_command(cmd).await;
                follower.after(&primary, &result);
                result
            }
            .boxed(),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Direct { manager, .. } => manager.req_packed_commands(cmd, offset, count),
            RedisConn::Sentinel(follower) => async move {
                let primary = follower.primary().await?;
                let result = primary.conn.clone().req_packed_commands(cmd, offset, count).await;
                follower.after(&primary, &result);
                result
            }
            .boxed(),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Direct { manager, .. } => manager.get_db(),
            RedisConn::Sentinel(follower) => follower.db,
        }
    }
}
