//! Run state in Redis, so any machine can find a run by name: the run record, the latest
//! progress snapshot, and the ids of the run's jobs not yet final (what `cancel` cancels when no
//! `fleet bulk` process is running).
//!
//! Keys, under the configured `redis.key_prefix`: `<p>:bulk:<run>` (hash: `run`, `progress`) and
//! `<p>:bulk:<run>:jobs` (set of job ids). Both expire 30 days after the run's last write.
//! `<p>:bulk_runs` (sorted set: run name, scored by the Unix milliseconds of its record's last
//! write) indexes the runs, so readers such as the dispatcher's `GET /v1/bulk/runs` list them
//! without scanning the keyspace; entries older than the keys' lifetime are trimmed on each write.

use fleet_core::config::RedisConfig;
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use uuid::Uuid;

use crate::error::BulkError;
use crate::run::{RunFile, Snapshot};

/// How long a run's keys outlive its last write.
const TTL_SECS: i64 = 30 * 24 * 3600;

/// The run-state keys of one Redis.
#[derive(Clone)]
pub struct Registry {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Registry {
    /// Connects to the configured Redis.
    pub async fn connect(cfg: &RedisConfig) -> Result<Registry, BulkError> {
        let client = redis::Client::open(cfg.url.as_str())?;
        let conn = tokio::time::timeout(std::time::Duration::from_secs(5), ConnectionManager::new(client))
            .await
            .map_err(|_| {
                BulkError::Config(format!(
                    "Redis at {} did not answer within 5 s",
                    fleet_core::config::mask_url(&cfg.url)
                ))
            })??;
        Ok(Registry { conn, prefix: cfg.key_prefix.clone() })
    }

    fn run_key(&self, run: &str) -> String {
        format!("{}:bulk:{run}", self.prefix)
    }

    /// The index of runs (not `<p>:bulk:…`, where a run could be named like it).
    pub fn index_key(prefix: &str) -> String {
        format!("{prefix}:bulk_runs")
    }

    fn jobs_key(&self, run: &str) -> String {
        format!("{}:bulk:{run}:jobs", self.prefix)
    }

    async fn set_field(&self, run: &str, field: &str, json: String) -> Result<(), BulkError> {
        let key = self.run_key(run);
        let mut conn = self.conn.clone();
        redis::pipe()
            .hset(&key, field, json)
            .ignore()
            .expire(&key, TTL_SECS)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn get_field<T: serde::de::DeserializeOwned>(&self, run: &str, field: &str) -> Result<Option<T>, BulkError> {
        let mut conn = self.conn.clone();
        let json: Option<String> = conn.hget(self.run_key(run), field).await?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| BulkError::json(format!("run `{run}` {field} in Redis"), e)))
            .transpose()
    }

    /// Stores the run record, and lists the run in the index.
    pub async fn save_run(&self, run: &RunFile) -> Result<(), BulkError> {
        let json = serde_json::to_string(run).map_err(|e| BulkError::json("run record", e))?;
        self.set_field(&run.config.name, "run", json).await?;
        let now = chrono::Utc::now().timestamp_millis();
        let index = Self::index_key(&self.prefix);
        let mut conn = self.conn.clone();
        redis::pipe()
            .zadd(&index, &run.config.name, now)
            .ignore()
            .zrembyscore(&index, "-inf", now - TTL_SECS * 1000)
            .ignore()
            .expire(&index, TTL_SECS)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// The run record, if Redis knows the run.
    pub async fn load_run(&self, name: &str) -> Result<Option<RunFile>, BulkError> {
        self.get_field(name, "run").await
    }

    /// Stores the latest progress snapshot.
    pub async fn save_progress(&self, name: &str, snapshot: &Snapshot) -> Result<(), BulkError> {
        let json = serde_json::to_string(snapshot).map_err(|e| BulkError::json("progress", e))?;
        self.set_field(name, "progress", json).await
    }

    /// The latest progress snapshot.
    pub async fn load_progress(&self, name: &str) -> Result<Option<Snapshot>, BulkError> {
        self.get_field(name, "progress").await
    }

    /// Records jobs as submitted and not yet final.
    pub async fn add_jobs(&self, name: &str, ids: &[Uuid]) -> Result<(), BulkError> {
        self.change_jobs(name, ids, true).await
    }

    /// Records jobs as final.
    pub async fn remove_jobs(&self, name: &str, ids: &[Uuid]) -> Result<(), BulkError> {
        self.change_jobs(name, ids, false).await
    }

    async fn change_jobs(&self, name: &str, ids: &[Uuid], add: bool) -> Result<(), BulkError> {
        if ids.is_empty() {
            return Ok(());
        }
        let key = self.jobs_key(name);
        let members: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let mut pipe = redis::pipe();
        if add {
            pipe.sadd(&key, members).ignore().expire(&key, TTL_SECS).ignore();
        } else {
            pipe.srem(&key, members).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Jobs of the run not known to be final.
    pub async fn jobs(&self, name: &str) -> Result<Vec<Uuid>, BulkError> {
        let mut conn = self.conn.clone();
        let members: Vec<String> = conn.smembers(self.jobs_key(name)).await?;
        Ok(members.iter().filter_map(|m| m.parse().ok()).collect())
    }
}
