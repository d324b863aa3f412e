//! Bulk runs as `fleet bulk` records them in Redis, read-only, for `GET /v1/bulk/runs`.
//!
//! The layout is fleet-bulk's (`fleet_bulk::registry`): `<p>:bulk:<run>` is a hash whose `run`
//! field holds the run record (`RunFile` JSON) and `progress` the latest `Snapshot` JSON;
//! `<p>:bulk:<run>:jobs` is the set of the run's unfinished job ids; `<p>:bulk_runs` is a sorted set
//! of run names scored by the last write of their record. The dispatcher does not link fleet-bulk
//! (it would pull in the engine), so the types below mirror the fields it serves; the e2e test
//! `console::bulk_runs_written_by_fleet_bulk_read_back_through_the_api` writes a run with
//! fleet-bulk's own code and reads it here, so a drift in names or types fails it.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_core::config::{RedisConfig, mask_url};
use redis::aio::ConnectionManager;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest one read may wait for Redis (as the status store does).
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BulkRunsError {
    #[error("Redis at {url} is unavailable: {message}")]
    Unavailable { url: String, message: String },
    /// A record that is not what fleet-bulk writes: a version mismatch, to be reported, not hidden.
    #[error("bulk run `{run}`: its {field} in Redis is not readable: {message}")]
    Corrupt { run: String, field: &'static str, message: String },
}

impl BulkRunsError {
    pub fn code(&self) -> fleet_core::ErrorCode {
        match self {
            BulkRunsError::Unavailable { .. } => fleet_core::ErrorCode::StatusUnavailable,
            BulkRunsError::Corrupt { .. } => fleet_core::ErrorCode::Internal,
        }
    }
}

/// Where a run stands (fleet-bulk's `RunState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Finished,
    Cancelled,
}

/// The run's settings (fleet-bulk's `RunConfig`), fixed when it started.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunSettings {
    pub name: String,
    /// The input file, as a path on the machine that ran `fleet bulk run`.
    pub input: String,
    /// `jsonl`, `csv` or `text`.
    pub input_format: String,
    /// Output location: a directory or `s3://bucket/prefix`.
    pub out: String,
    /// `webdataset` or `files`.
    pub layout: String,
    pub shard_size: u32,
    pub seeds_per_prompt: u32,
    pub seed: u64,
    /// Job fields from the command line (rows may override them).
    pub defaults: Map<String, Value>,
    pub max_in_flight: u64,
    pub skip_invalid: bool,
    pub local: bool,
}

/// What the input held (fleet-bulk's `InputSummary`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct InputSummary {
    pub sha256: String,
    pub rows: u64,
    pub invalid_rows: u64,
    pub samples: u64,
    pub shards: u64,
}

/// Final counts (fleet-bulk's `Totals`), set when the run ends.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Totals {
    pub succeeded: u64,
    pub failed: u64,
    pub shards: u64,
}

/// The run record (fleet-bulk's `RunFile`).
#[derive(Debug, Clone, Deserialize)]
struct RunRecord {
    config: RunSettings,
    input: InputSummary,
    state: RunState,
    started_at: DateTime<Utc>,
    #[serde(default)]
    finished_at: Option<DateTime<Utc>>,
    totals: Totals,
    fleet_version: String,
}

/// The latest progress (fleet-bulk's `Snapshot`), corrected by the record as `fleet bulk status` does.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Progress {
    pub state: RunState,
    /// Samples planned.
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// `failed` split by error code (`unknown_lora`, `invalid_spec`, …); absent when none failed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed_by_code: BTreeMap<String, u64>,
    /// Submitted, waiting for a worker.
    pub queued: u64,
    /// Being generated.
    pub running: u64,
    /// Neither final nor submitted yet (computed here).
    #[serde(default)]
    pub waiting: u64,
    pub shards_done: u64,
    pub shards_total: u64,
    /// Samples finished per second since the current `fleet bulk` invocation started.
    pub images_per_second: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
    /// When `fleet bulk` last wrote it (a running run whose update is old has lost its process).
    pub updated_at: Option<DateTime<Utc>>,
}

/// One bulk run as the API serves it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BulkRun {
    pub name: String,
    pub state: RunState,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Version of the `fleet` that wrote the record.
    pub fleet_version: String,
    pub config: RunSettings,
    pub input: InputSummary,
    pub totals: Totals,
    pub progress: Progress,
    /// Jobs submitted and not known to be final (one run only, not in lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfinished_jobs: Option<u64>,
}

/// A page of runs, most recently written first.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BulkRunPage {
    pub runs: Vec<BulkRun>,
}

fn parse<T: serde::de::DeserializeOwned>(run: &str, field: &'static str, json: &str) -> Result<T, BulkRunsError> {
    serde_json::from_str(json).map_err(|e| BulkRunsError::Corrupt {
        run: run.to_owned(),
        field,
        message: e.to_string(),
    })
}

/// The run from its two hash fields; `None` when the record is gone (expired).
fn assemble(name: &str, record: Option<String>, progress: Option<String>) -> Result<Option<BulkRun>, BulkRunsError> {
    let Some(record) = record else { return Ok(None) };
    let record: RunRecord = parse(name, "run record", &record)?;
    let mut progress = match progress {
        Some(json) => parse(name, "progress", &json)?,
        None => Progress {
            state: record.state,
            total: 0,
            succeeded: 0,
            failed: 0,
            failed_by_code: BTreeMap::new(),
            queued: 0,
            running: 0,
            waiting: 0,
            shards_done: 0,
            shards_total: 0,
            images_per_second: 0.0,
            eta_seconds: None,
            updated_at: None,
        },
    };
    // As `fleet bulk status`: the record knows best whether the run ended (a killed process
    // leaves `running` in the snapshot), and how many samples and shards it plans.
    if record.state != RunState::Running {
        progress.state = record.state;
    }
    progress.total = record.input.samples;
    progress.shards_total = record.input.shards;
    progress.waiting =
        progress.total.saturating_sub(progress.succeeded + progress.failed + progress.queued + progress.running);
    Ok(Some(BulkRun {
        name: record.config.name.clone(),
        state: record.state,
        started_at: record.started_at,
        finished_at: record.finished_at,
        fleet_version: record.fleet_version,
        config: record.config,
        input: record.input,
        totals: record.totals,
        progress,
        unfinished_jobs: None,
    }))
}

/// Reads bulk runs from the Redis that `fleet bulk` writes to.
#[derive(Clone)]
pub struct BulkRuns {
    conn: ConnectionManager,
    prefix: String,
    url: String,
}

impl std::fmt::Debug for BulkRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkRuns").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl BulkRuns {
    pub async fn connect(cfg: &RedisConfig) -> Result<BulkRuns, BulkRunsError> {
        let url = mask_url(&cfg.url);
        let unavailable = |message: String| BulkRunsError::Unavailable { url: url.clone(), message };
        let client = redis::Client::open(cfg.url.as_str()).map_err(|e| unavailable(e.to_string()))?;
        let conn = tokio::time::timeout(TIMEOUT, ConnectionManager::new(client))
            .await
            .map_err(|_| unavailable(format!("no answer within {} s", TIMEOUT.as_secs())))?
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(BulkRuns { conn, prefix: cfg.key_prefix.clone(), url })
    }

    fn run_key(&self, name: &str) -> String {
        format!("{}:bulk:{name}", self.prefix)
    }

    async fn query<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, BulkRunsError> {
        let unavailable = |message: String| BulkRunsError::Unavailable { url: self.url.clone(), message };
        let mut conn = self.conn.clone();
        tokio::time::timeout(TIMEOUT, pipe.query_async::<T>(&mut conn))
            .await
            .map_err(|_| unavailable(format!("no answer within {} s", TIMEOUT.as_secs())))?
            .map_err(|e| unavailable(e.to_string()))
    }

    /// Up to `limit` runs, most recently written first (runs whose keys expired are left out).
    pub async fn list(&self, limit: usize) -> Result<Vec<BulkRun>, BulkRunsError> {
        let index = format!("{}:bulk_runs", self.prefix);
        let stop = isize::try_from(limit).unwrap_or(isize::MAX).saturating_sub(1);
        let mut pipe = redis::pipe();
        pipe.cmd("ZREVRANGE").arg(&index).arg(0).arg(stop);
        let (names,): (Vec<String>,) = self.query(&pipe).await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.cmd("HMGET").arg(self.run_key(name)).arg("run").arg("progress");
        }
        let fields: Vec<(Option<String>, Option<String>)> = self.query(&pipe).await?;
        let mut runs = Vec::with_capacity(names.len());
        for (name, (record, progress)) in names.iter().zip(fields) {
            runs.extend(assemble(name, record, progress)?);
        }
        Ok(runs)
    }

    /// One run by name, with its count of unfinished jobs.
    pub async fn get(&self, name: &str) -> Result<Option<BulkRun>, BulkRunsError> {
        let key = self.run_key(name);
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(&key).arg("run").arg("progress").cmd("SCARD").arg(format!("{key}:jobs"));
        let ((record, progress), unfinished): ((Option<String>, Option<String>), u64) = self.query(&pipe).await?;
        let run = assemble(name, record, progress)?;
        Ok(run.map(|run| BulkRun { unfinished_jobs: Some(unfinished), ..run }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_record_is_no_run_and_a_broken_one_says_which_field() {
        assert!(assemble("a", None, Some("{}".into())).unwrap().is_none());
        let err = assemble("a", Some("{\"config\": 1}".into()), None).unwrap_err();
        assert!(err.to_string().contains("bulk run `a`: its run record"), "{err}");
    }
}
