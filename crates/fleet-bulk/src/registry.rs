//! Run state in Redis, so any machine can find a run by name: the run record, the latest
//! progress snapshot, and the ids of the run's jobs not yet final (what `cancel` cancels when no
//! `fleet bulk` process is running).
//!
//! The keys and their layout are fleet-status's ([`fleet_status::bulk_runs`]); this wraps its
//! store in the crate's error type.

use fleet_core::config::RedisConfig;
use fleet_status::bulk_runs::{BulkRunStore, BulkRunsError};
use uuid::Uuid;

use crate::error::BulkError;
use crate::run::{RunFile, Snapshot};

/// The run-state keys of one Redis.
#[derive(Debug, Clone)]
pub struct Registry {
    store: BulkRunStore,
}

impl From<BulkRunsError> for BulkError {
    fn from(e: BulkRunsError) -> BulkError {
        match e {
            BulkRunsError::TimedOut { url, limit } => {
                BulkError::Config(format!("Redis at {url} did not answer within {} s", limit.as_secs()))
            }
            BulkRunsError::Unavailable { source, .. } => BulkError::Redis(source),
            BulkRunsError::Corrupt { run, field, source } => {
                BulkError::json(format!("run `{run}` {} in Redis", field.name()), source)
            }
        }
    }
}

impl Registry {
    /// Connects to the configured Redis.
    pub async fn connect(cfg: &RedisConfig) -> Result<Registry, BulkError> {
        Ok(Registry { store: BulkRunStore::connect(cfg).await? })
    }

    /// Stores the run record, and lists the run in the index.
    pub async fn save_run(&self, run: &RunFile) -> Result<(), BulkError> {
        Ok(self.store.save_run(run).await?)
    }

    /// The run record, if Redis knows the run.
    pub async fn load_run(&self, name: &str) -> Result<Option<RunFile>, BulkError> {
        Ok(self.store.load_run(name).await?)
    }

    /// Stores the latest progress snapshot.
    pub async fn save_progress(&self, name: &str, snapshot: &Snapshot) -> Result<(), BulkError> {
        Ok(self.store.save_progress(name, snapshot).await?)
    }

    /// The latest progress snapshot.
    pub async fn load_progress(&self, name: &str) -> Result<Option<Snapshot>, BulkError> {
        Ok(self.store.load_progress(name).await?)
    }

    /// Records jobs as submitted and not yet final.
    pub async fn add_jobs(&self, name: &str, ids: &[Uuid]) -> Result<(), BulkError> {
        Ok(self.store.add_jobs(name, ids).await?)
    }

    /// Records jobs as final.
    pub async fn remove_jobs(&self, name: &str, ids: &[Uuid]) -> Result<(), BulkError> {
        Ok(self.store.remove_jobs(name, ids).await?)
    }

    /// Jobs of the run not known to be final.
    pub async fn jobs(&self, name: &str) -> Result<Vec<Uuid>, BulkError> {
        Ok(self.store.jobs(name).await?)
    }
}
