//! The fleet's connection to Redis: a [`ConnectionManager`] to `redis.url`, or, with
//! `redis.sentinels`, to the primary the sentinels name, followed across a failover.
//!
//! `ConnectionManager` reconnects by itself, but always to the address it was made for. Behind
//! Sentinel that address stops being the primary after a failover (the old one is gone, or comes
//! back as a read-only replica), so a call that fails for a reason of the connection (refused,
//! dropped, timed out, `READONLY`) asks the sentinels for the primary again and, when it moved,
//! replaces the manager. The failing call itself still fails: callers retry as they do for any
//! unavailable Redis.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fleet_core::config::RedisConfig;
use futures::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};

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
    current: RwLock<Primary>,
    manager_cfg: ConnectionManagerConfig,
}

struct Resolver {
    client: SentinelClient,
    last_asked: Option<Instant>,
}

#[derive(Clone)]
struct Primary {
    /// `host:port`, for comparing and logging.
    addr: String,
    manager: ConnectionManager,
    client: Client,
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
        let mut sentinel = SentinelClient::build(
            cfg.sentinels.clone(),
            cfg.sentinel_master.clone(),
            Some(node),
            SentinelServerType::Master,
        )?;
        let client = sentinel.async_get_client().await?;
        let primary = Primary::connect(client, manager_cfg.clone()).await?;
        tracing::info!(primary = %primary.addr, master = %cfg.sentinel_master, "Redis primary found through Sentinel");
        Ok(RedisConn::Sentinel(Arc::new(Follower {
            sentinel: tokio::sync::Mutex::new(Resolver { client: sentinel, last_asked: Some(Instant::now()) }),
            current: RwLock::new(primary),
            manager_cfg,
        })))
    }

    /// A client for the current primary, for connections of their own (pub/sub).
    pub(crate) fn client(&self) -> Client {
        match self {
            RedisConn::Direct { client, .. } => client.clone(),
            RedisConn::Sentinel(follower) => follower.primary().client,
        }
    }
}

impl Primary {
    async fn connect(client: Client, manager_cfg: ConnectionManagerConfig) -> RedisResult<Primary> {
        let addr = client.get_connection_info().addr.to_string();
        let manager = ConnectionManager::new_with_config(client.clone(), manager_cfg).await?;
        Ok(Primary { addr, manager, client })
    }
}

impl Follower {
    fn primary(&self) -> Primary {
        // A poisoned lock only means a panic elsewhere while swapping; the value is whole.
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// After a call on the current primary: a connection failure makes it look for a new one.
    async fn after<T>(&self, result: &RedisResult<T>) {
        if let Err(e) = result
            && is_availability_error(e)
        {
            self.follow().await;
        }
    }

    /// Asks the sentinels for the primary and switches to it when it moved. One caller asks at
    /// a time, at most every [`RESOLVE_EVERY`]; the others go on with what they have.
    async fn follow(&self) {
        let Ok(mut resolver) = self.sentinel.try_lock() else { return };
        if resolver.last_asked.is_some_and(|at| at.elapsed() < RESOLVE_EVERY) {
            return;
        }
        resolver.last_asked = Some(Instant::now());
        // The sentinel client also checks that the node it names says it is a primary.
        let client = match tokio::time::timeout(crate::store::CALL_TIMEOUT, resolver.client.async_get_client()).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return tracing::debug!(error = %e, "no Redis primary from the sentinels yet"),
            Err(_) => return tracing::debug!("the sentinels did not answer in time"),
        };
        let addr = client.get_connection_info().addr.to_string();
        let old = self.primary().addr;
        if addr == old {
            return;
        }
        let connect = Primary::connect(client, self.manager_cfg.clone());
        match tokio::time::timeout(crate::store::CALL_TIMEOUT, connect).await {
            Ok(Ok(primary)) => {
                tracing::warn!(from = %old, to = %addr, "Redis failed over; following the new primary");
                *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = primary;
            }
            Ok(Err(e)) => tracing::warn!(primary = %addr, error = %e, "cannot connect to the new Redis primary"),
            Err(_) => tracing::warn!(primary = %addr, "the new Redis primary did not answer in time"),
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Direct { manager, .. } => manager.req_packed_command(cmd),
            RedisConn::Sentinel(follower) => async move {
                let mut manager = follower.primary().manager;
                let result = manager.req_packed_command(cmd).await;
                follower.after(&result).await;
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
                let mut manager = follower.primary().manager;
                let result = manager.req_packed_commands(cmd, offset, count).await;
                follower.after(&result).await;
                result
            }
            .boxed(),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Direct { manager, .. } => manager.get_db(),
            RedisConn::Sentinel(follower) => follower.primary().manager.get_db(),
        }
    }
}
