//! Whether the Redis the fleet writes to keeps its data across a restart.
//!
//! Redis is the system of record for job status and idempotency keys. A Redis with neither an
//! append-only file nor RDB snapshots starts empty after every restart: finished jobs lose their
//! records (their images stay in S3 with nothing pointing at them) and a client retrying with its
//! idempotency key gets a second job. The dispatcher, the workers and the bulk runner therefore
//! read the persistence settings at start ([`StatusStore::check_durability`]) and refuse such a
//! Redis unless `redis.allow_volatile` is set.
//!
//! RDB snapshots alone are accepted with a warning: a crash loses the writes since the last
//! snapshot (minutes, with the usual `save` rules), which the fleet recovers from — a job still on
//! its queue gets its record again from its message when a worker takes it, and a finished job's
//! record is rebuilt from its stored images (`fleet recover`, or a worker meeting the job again).

use crate::StatusError;
use crate::store::StatusStore;

/// What a Redis keeps across a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persistence {
    /// An append-only file (`appendonly yes`): every write, up to the last `appendfsync`.
    Aof,
    /// RDB snapshots only: a crash loses the writes since the last one.
    Snapshots {
        /// How it was seen: the `save` rules, or what `INFO persistence` showed.
        evidence: String,
    },
    /// Nothing: a restart starts empty.
    Volatile {
        /// How it was seen (`appendonly no, save ""`, or what `INFO persistence` showed).
        evidence: String,
    },
}

impl Persistence {
    /// From `CONFIG GET appendonly` and `CONFIG GET save`.
    pub fn from_config(appendonly: &str, save: &str) -> Persistence {
        if appendonly.eq_ignore_ascii_case("yes") {
            Persistence::Aof
        } else if save.trim().is_empty() {
            Persistence::Volatile { evidence: format!("appendonly {appendonly}, save \"\"") }
        } else {
            Persistence::Snapshots { evidence: format!("appendonly {appendonly}, save \"{}\"", save.trim()) }
        }
    }

    /// From the text of `INFO persistence`, for a Redis that refuses `CONFIG` (many managed
    /// ones): `aof_enabled:1` is an append-only file; otherwise a snapshot made since the start
    /// (`rdb_saves` > 0 or a last background save time) shows snapshots are taken; neither is
    /// read as volatile.
    pub fn from_info(info: &str) -> Persistence {
        let field = |name: &str| {
            info.lines().find_map(|line| line.trim().strip_prefix(name)?.strip_prefix(':').map(str::to_owned))
        };
        if field("aof_enabled").as_deref() == Some("1") {
            return Persistence::Aof;
        }
        let saves = field("rdb_saves").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let last_save_secs = field("rdb_last_bgsave_time_sec").and_then(|v| v.parse::<i64>().ok()).unwrap_or(-1);
        if saves > 0 || last_save_secs >= 0 {
            Persistence::Snapshots { evidence: format!("INFO persistence: aof_enabled:0, rdb_saves:{saves}") }
        } else {
            Persistence::Volatile {
                evidence: "INFO persistence: aof_enabled:0 and no RDB snapshot since the start (CONFIG is refused)"
                    .into(),
            }
        }
    }
}

impl StatusStore {
    /// Reads how Redis persists its data: `CONFIG GET appendonly` and `save`, or `INFO
    /// persistence` where `CONFIG` is refused.
    pub async fn persistence(&self) -> Result<Persistence, StatusError> {
        match (self.config_get("appendonly").await, self.config_get("save").await) {
            (Ok(Some(appendonly)), Ok(Some(save))) => Ok(Persistence::from_config(&appendonly, &save)),
            (Err(e @ StatusError::Unavailable { .. }), _) | (_, Err(e @ StatusError::Unavailable { .. })) => Err(e),
            // CONFIG is disabled or renamed (managed Redis): INFO tells less, but tells.
            _ => Ok(Persistence::from_info(&self.info("persistence").await?)),
        }
    }

    /// The start-up check of the dispatcher, the workers and the bulk runner: a Redis that keeps
    /// nothing across a restart is refused with [`StatusError::Volatile`] unless
    /// `allow_volatile` (`redis.allow_volatile`); snapshots without an append-only file are
    /// accepted with a warning. Returns what it found.
    pub async fn check_durability(&self, allow_volatile: bool) -> Result<Persistence, StatusError> {
        let persistence = self.persistence().await?;
        match &persistence {
            Persistence::Aof => {}
            Persistence::Snapshots { evidence } => tracing::warn!(
                redis = %self.url(),
                %evidence,
                "Redis keeps RDB snapshots but no append-only file: a crash loses the status writes since the \
                 last snapshot (the fleet rebuilds finished jobs' records from their images: `fleet recover`); \
                 set `appendonly yes` on Redis to keep every write"
            ),
            Persistence::Volatile { evidence } if allow_volatile => tracing::warn!(
                redis = %self.url(),
                %evidence,
                "Redis keeps nothing across a restart and redis.allow_volatile = true: a Redis restart loses \
                 every job's status and idempotency key"
            ),
            Persistence::Volatile { evidence } => {
                return Err(StatusError::Volatile { url: self.url().to_owned(), evidence: evidence.clone() });
            }
        }
        Ok(persistence)
    }
}
