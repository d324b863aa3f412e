//! Bulk runs in Redis: the records `fleet bulk` writes so any machine can find a run by name, and
//! the view the dispatcher's `GET /v1/bulk/runs` serves from them.
//!
//! A run is the hash `{p}:bulk:{run}` (field `run`: the [`RunRecord`] JSON, field `progress`: the
//! latest [`Snapshot`] JSON) and the set `{p}:bulk:{run}:jobs` (ids of the run's jobs not yet
//! final, what `fleet bulk cancel` cancels when no `fleet bulk` process is running). Both expire
//! [`RUN_TTL_SECS`] after the run's last write. `{p}:bulk_runs` (sorted set of run names, scored by
//! the Unix milliseconds of the record's last write) indexes the runs, so readers list them
//! without scanning the keyspace; entries older than the keys' lifetime are trimmed on each write.
//!
//! The record types are the JSON `run.json` holds too, and the dispatcher publishes them in its
//! OpenAPI document; their `schemars` names and descriptions are the published ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_core::config::{RedisConfig, mask_url};
use redis::aio::ConnectionManagerConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::connection::RedisConn;
use crate::keys::Keys;

/// How long a run's keys outlive its last write.
pub const RUN_TTL_SECS: i64 = 30 * 24 * 3600;

/// How old the progress of a `running` run may be before the run counts as stalled: the driving
/// `fleet bulk` writes it about once a second, so a gap this long means no process drives the run.
pub const STALL_AFTER_SECS: i64 = 15;

/// Longest the connection and each API read ([`BulkRunStore::list`], [`BulkRunStore::get`]) wait
/// for Redis, so an API request never hangs. `fleet bulk`'s own calls wait as long as Redis takes.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A hash field of `{p}:bulk:{run}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunField {
    /// `run`: the [`RunRecord`].
    Record,
    /// `progress`: the latest [`Snapshot`].
    Progress,
}

impl RunField {
    /// The field's name in the hash.
    pub fn name(self) -> &'static str {
        match self {
            RunField::Record => "run",
            RunField::Progress => "progress",
        }
    }

    /// What the field holds, for messages.
    pub fn label(self) -> &'static str {
        match self {
            RunField::Record => "run record",
            RunField::Progress => "progress",
        }
    }
}

/// Why a bulk-run call failed.
#[derive(Debug, thiserror::Error)]
pub enum BulkRunsError {
    /// Redis did not answer within [`READ_TIMEOUT`].
    #[error("Redis at {url} is unavailable: no answer within {} s", .limit.as_secs())]
    TimedOut {
        /// The Redis URL with any password masked.
        url: String,
        /// How long the call waited.
        limit: Duration,
    },
    /// Redis could not be reached or refused the call.
    #[error("Redis at {url} is unavailable: {source}")]
    Unavailable {
        /// The Redis URL with any password masked.
        url: String,
        /// What the client reported.
        #[source]
        source: redis::RedisError,
    },
    /// A record that is not what this module writes: a version mismatch, to be reported, not hidden.
    #[error("bulk run `{run}`: its {} in Redis is not readable: {source}", .field.label())]
    Corrupt {
        /// The run.
        run: String,
        /// The hash field that holds it.
        field: RunField,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

impl BulkRunsError {
    /// The stable error code an API response for this error carries.
    pub fn code(&self) -> fleet_core::ErrorCode {
        match self {
            BulkRunsError::TimedOut { .. } | BulkRunsError::Unavailable { .. } => {
                fleet_core::ErrorCode::StatusUnavailable
            }
            BulkRunsError::Corrupt { .. } => fleet_core::ErrorCode::Internal,
        }
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(description = "Where a run stands (fleet-bulk's `RunState`).")]
// Variant docs would turn the published string enum into a `oneOf`; the names say enough.
#[allow(missing_docs)]
pub enum RunState {
    #[default]
    Running,
    Finished,
    Cancelled,
}

/// How an input file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// One JSON object per line: `prompt` plus job-field overrides, `key`, `metadata`.
    Jsonl,
    /// A header row naming the columns (`prompt` and override columns), then one row per prompt.
    Csv,
    /// One prompt per line.
    Text,
    /// One prompt program per line (`{a|b}` wildcards, `{__list__}` option lists; see fleet-bulk's
    /// `template` module).
    Template,
}

/// A name on the command line that names no input format or layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnknownName(pub String);

impl InputFormat {
    /// The format a file name suggests: `.jsonl`/`.ndjson`/`.json` → JSONL, `.csv` → CSV, else text.
    pub fn from_path(path: &Path) -> InputFormat {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("jsonl" | "ndjson" | "json") => InputFormat::Jsonl,
            Some("csv") => InputFormat::Csv,
            _ => InputFormat::Text,
        }
    }

    /// Parses `jsonl`, `csv`, `text` or `template`.
    pub fn parse(name: &str) -> Result<InputFormat, UnknownName> {
        match name {
            "jsonl" | "ndjson" => Ok(InputFormat::Jsonl),
            "csv" => Ok(InputFormat::Csv),
            "text" | "txt" => Ok(InputFormat::Text),
            "template" => Ok(InputFormat::Template),
            other => Err(UnknownName(format!("input format `{other}`: expected jsonl, csv, text or template"))),
        }
    }
}

/// How samples are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `NNNNN.tar` with `KEY.png`, `KEY.txt`, `KEY.json` per sample.
    #[default]
    WebDataset,
    /// `NNNNN/KEY.png` plus `NNNNN/metadata.jsonl` (ImageFolder).
    Files,
}

impl Layout {
    /// Parses `webdataset` or `files`.
    pub fn parse(name: &str) -> Result<Layout, UnknownName> {
        match name {
            "webdataset" | "wds" => Ok(Layout::WebDataset),
            "files" | "imagefolder" => Ok(Layout::Files),
            other => Err(UnknownName(format!("--format {other}: expected webdataset or files"))),
        }
    }
}

/// Everything that decides what a run produces. Fixed at `run`; `resume` reuses it as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(
    rename = "RunSettings",
    description = "The run's settings (fleet-bulk's `RunConfig`), fixed when it started."
)]
// The published schema documents only some fields; a doc comment on the others would add to it.
#[allow(missing_docs)]
pub struct RunConfig {
    pub name: String,
    /// The input file, as a path on the machine that ran `fleet bulk run`.
    #[schemars(with = "String")]
    pub input: PathBuf,
    /// `jsonl`, `csv`, `text` or `template`.
    #[schemars(with = "String")]
    pub input_format: InputFormat,
    /// Output location: a directory or `s3://bucket/prefix`.
    pub out: String,
    /// `webdataset` or `files`.
    #[schemars(with = "String")]
    pub layout: Layout,
    pub shard_size: u32,
    pub seeds_per_prompt: u32,
    // Run seed; every sample's seed derives from it and the sample key.
    pub seed: u64,
    /// Job fields from the command line (rows may override them).
    pub defaults: Map<String, Value>,
    // Most jobs submitted and not yet final.
    #[schemars(with = "u64")]
    pub max_in_flight: usize,
    // Record invalid rows as failed samples instead of refusing to start.
    pub skip_invalid: bool,
    // Generate in-process instead of through the fleet.
    pub local: bool,
    /// Prompts drawn from each prompt program (`--samples`); absent: every expansion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    /// Near-duplicate control (`--dedup-hamming`): a sample is dropped when an earlier kept
    /// sample's perceptual hash lies within this many bits; absent: no sample is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_hamming: Option<u32>,
    /// Keep the fleet's job of every made sample (record, idempotency key, images) for its
    /// retention (`--keep-jobs`); by default each is deleted once its sample is staged in the
    /// output, so the fleet's Redis holds the run's unfinished jobs only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_jobs: bool,
}

/// What the input held, from the scan before the run starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(description = "What the input held (fleet-bulk's `InputSummary`).")]
#[allow(missing_docs)] // as for RunConfig: the published schema has no field descriptions
pub struct InputSummary {
    // Lower-case hex SHA-256 of the input file.
    pub sha256: String,
    pub rows: u64,
    pub invalid_rows: u64,
    pub samples: u64,
    pub shards: u64,
}

/// Final counts, set when the run ends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(description = "Final counts (fleet-bulk's `Totals`), set when the run ends.")]
#[allow(missing_docs)] // as for RunConfig: the published schema has no field descriptions
pub struct Totals {
    pub succeeded: u64,
    pub failed: u64,
    /// Samples dropped as near-duplicates of earlier ones (`--dedup-hamming`).
    #[serde(default)]
    pub duplicates: u64,
    pub shards: u64,
}

/// The run record (`run.json`, and field `run` of `{p}:bulk:{run}`): the full configuration, the
/// input's hash, start and end, totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's settings.
    pub config: RunConfig,
    /// What the input held.
    pub input: InputSummary,
    /// Where the run stands.
    pub state: RunState,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// When the run finished or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Final counts.
    pub totals: Totals,
    /// Version of the `fleet` that wrote it.
    pub fleet_version: String,
}

/// A moment of a run (field `progress` of `{p}:bulk:{run}`), for `fleet bulk status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Where the run stands, as the writing process saw it.
    pub state: RunState,
    /// Samples planned.
    pub total: u64,
    /// Samples that succeeded.
    pub succeeded: u64,
    /// Samples that failed.
    pub failed: u64,
    /// Samples dropped as near-duplicates of earlier ones.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub duplicates: u64,
    /// `failed` split by error code (`unknown_lora`, `invalid_spec`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed_by_code: BTreeMap<String, u64>,
    /// Submitted, waiting for a worker.
    pub queued: u64,
    /// Being generated.
    pub running: u64,
    /// Shards published.
    pub shards_done: u64,
    /// Shards planned.
    pub shards_total: u64,
    /// Samples finished per second by the driving invocation, measured from its start (samples
    /// that finished while no process drove the run are not counted).
    pub images_per_second: f64,
    /// Seconds left at the current rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
    /// When the snapshot was written.
    pub updated_at: Option<DateTime<Utc>>,
    /// Set by readers ([`Snapshot::settle`]), never by the writer: the run is `running` but no
    /// process has written progress since this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_since: Option<DateTime<Utc>>,
}

impl Snapshot {
    /// Samples neither final nor submitted.
    pub fn waiting(&self) -> u64 {
        self.total.saturating_sub(self.succeeded + self.failed + self.duplicates + self.queued + self.running)
    }

    /// Corrects the latest snapshot by the run record, as every reader (`fleet bulk status`, the
    /// API, the console) shows it:
    /// - the record knows best whether the run ended (a killed process leaves `running` behind),
    ///   and how many samples and shards it plans;
    /// - a run that ended has nothing queued or running (a cancel cancels its unfinished jobs),
    ///   and no rate or ETA;
    /// - a `running` run whose progress is older than [`STALL_AFTER_SECS`] at `now` is stalled:
    ///   nothing drives it, so it has no rate and no ETA, and the jobs it had in flight are
    ///   still counted as queued or running (they may finish; a resume collects them).
    pub fn settle(&mut self, record: &RunRecord, now: DateTime<Utc>) {
        self.total = record.input.samples;
        self.shards_total = record.input.shards;
        self.stalled_since = None;
        if record.state != RunState::Running {
            self.state = record.state;
            self.queued = 0;
            self.running = 0;
            self.images_per_second = 0.0;
            self.eta_seconds = None;
            return;
        }
        self.state = RunState::Running;
        let last = self.updated_at.unwrap_or(record.started_at);
        if now - last > chrono::Duration::seconds(STALL_AFTER_SECS) {
            self.stalled_since = Some(last);
            self.images_per_second = 0.0;
            self.eta_seconds = None;
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A run's progress as the API serves it: the latest [`Snapshot`] corrected by the record, plus
/// the samples waiting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(
    description = "The latest progress (fleet-bulk's `Snapshot`), corrected by the record as `fleet bulk status` does."
)]
#[allow(missing_docs)] // as for RunConfig: the published schema documents only some fields
pub struct RunProgress {
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
    /// Samples finished per second since the driving `fleet bulk` invocation started (0 when
    /// the run ended or is stalled).
    pub images_per_second: f64,
    /// Seconds left at that rate; absent when the run ended or is stalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
    /// When `fleet bulk` last wrote it.
    pub updated_at: Option<DateTime<Utc>>,
    /// The run is `running`, but no `fleet bulk` process has written progress since this time
    /// (it was stopped): resume it to go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_since: Option<DateTime<Utc>>,
}

/// One bulk run as the API serves it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[allow(missing_docs)] // as for RunConfig: the published schema documents only some fields
pub struct BulkRun {
    pub name: String,
    pub state: RunState,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Version of the `fleet` that wrote the record.
    pub fleet_version: String,
    pub config: RunConfig,
    pub input: InputSummary,
    pub totals: Totals,
    pub progress: RunProgress,
    /// Jobs submitted and not known to be final (one run only, not in lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfinished_jobs: Option<u64>,
}

impl BulkRun {
    /// The run as the API serves it, from its record and latest snapshot (none yet: all zeros).
    ///
    /// The snapshot is corrected by the record as [`Snapshot::settle`] says, at `now`, so the API
    /// shows what `fleet bulk status` shows.
    pub fn from_records(record: RunRecord, snapshot: Option<Snapshot>, now: DateTime<Utc>) -> BulkRun {
        let mut snapshot = snapshot.unwrap_or(Snapshot { state: record.state, ..Snapshot::default() });
        snapshot.settle(&record, now);
        let progress = RunProgress {
            state: snapshot.state,
            total: snapshot.total,
            succeeded: snapshot.succeeded,
            failed: snapshot.failed,
            waiting: snapshot.waiting(),
            failed_by_code: snapshot.failed_by_code,
            queued: snapshot.queued,
            running: snapshot.running,
            shards_done: snapshot.shards_done,
            shards_total: snapshot.shards_total,
            images_per_second: snapshot.images_per_second,
            eta_seconds: snapshot.eta_seconds,
            updated_at: snapshot.updated_at,
            stalled_since: snapshot.stalled_since,
        };
        BulkRun {
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
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(run: &str, field: RunField, json: &str) -> Result<T, BulkRunsError> {
    serde_json::from_str(json).map_err(|source| BulkRunsError::Corrupt { run: run.to_owned(), field, source })
}

/// The run from its two hash fields; `None` when the record is gone (expired).
fn assemble(name: &str, record: Option<String>, progress: Option<String>) -> Result<Option<BulkRun>, BulkRunsError> {
    let Some(record) = record else { return Ok(None) };
    let record: RunRecord = parse(name, RunField::Record, &record)?;
    let snapshot = progress.map(|json| parse(name, RunField::Progress, &json)).transpose()?;
    Ok(Some(BulkRun::from_records(record, snapshot, Utc::now())))
}

/// The bulk-run keys of one Redis: written by `fleet bulk`, read by it and by the dispatcher.
#[derive(Clone)]
pub struct BulkRunStore {
    conn: RedisConn,
    keys: Keys,
    url: String,
}

impl std::fmt::Debug for BulkRunStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkRunStore").field("keys", &self.keys).finish_non_exhaustive()
    }
}

impl BulkRunStore {
    /// Connects to the configured Redis, giving up after [`READ_TIMEOUT`].
    pub async fn connect(cfg: &RedisConfig) -> Result<BulkRunStore, BulkRunsError> {
        let url = mask_url(&cfg.url);
        let unavailable = |source| BulkRunsError::Unavailable { url: url.clone(), source };
        let conn = tokio::time::timeout(READ_TIMEOUT, RedisConn::open(cfg, ConnectionManagerConfig::new()))
            .await
            .map_err(|_| BulkRunsError::TimedOut { url: url.clone(), limit: READ_TIMEOUT })?
            .map_err(unavailable)?;
        Ok(BulkRunStore { conn, keys: Keys::new(&cfg.key_prefix), url })
    }

    fn unavailable(&self, source: redis::RedisError) -> BulkRunsError {
        BulkRunsError::Unavailable { url: self.url.clone(), source }
    }

    /// Runs a pipeline, as long as Redis takes.
    async fn run<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, BulkRunsError> {
        let mut conn = self.conn.clone();
        pipe.query_async::<T>(&mut conn).await.map_err(|e| self.unavailable(e))
    }

    /// Runs a pipeline under [`READ_TIMEOUT`].
    async fn read<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, BulkRunsError> {
        tokio::time::timeout(READ_TIMEOUT, self.run(pipe))
            .await
            .map_err(|_| BulkRunsError::TimedOut { url: self.url.clone(), limit: READ_TIMEOUT })?
    }

    async fn set_field(&self, run: &str, field: RunField, json: String) -> Result<(), BulkRunsError> {
        let key = self.keys.bulk_run(run);
        let mut pipe = redis::pipe();
        pipe.hset(&key, field.name(), json).ignore().expire(&key, RUN_TTL_SECS).ignore();
        self.run(&pipe).await
    }

    async fn get_field<T: serde::de::DeserializeOwned>(
        &self,
        run: &str,
        field: RunField,
    ) -> Result<Option<T>, BulkRunsError> {
        let mut pipe = redis::pipe();
        pipe.hget(self.keys.bulk_run(run), field.name());
        let (json,): (Option<String>,) = self.run(&pipe).await?;
        json.map(|j| parse(run, field, &j)).transpose()
    }

    /// Stores the run record, and lists the run in the index.
    pub async fn save_run(&self, record: &RunRecord) -> Result<(), BulkRunsError> {
        let name = &record.config.name;
        let json = serde_json::to_string(record).map_err(|source| BulkRunsError::Corrupt {
            run: name.clone(),
            field: RunField::Record,
            source,
        })?;
        self.set_field(name, RunField::Record, json).await?;
        let now = Utc::now().timestamp_millis();
        let index = self.keys.bulk_runs();
        let mut pipe = redis::pipe();
        pipe.zadd(&index, name, now)
            .ignore()
            .zrembyscore(&index, "-inf", now - RUN_TTL_SECS * 1000)
            .ignore()
            .expire(&index, RUN_TTL_SECS)
            .ignore();
        self.run(&pipe).await
    }

    /// The run record, if Redis knows the run.
    pub async fn load_run(&self, name: &str) -> Result<Option<RunRecord>, BulkRunsError> {
        self.get_field(name, RunField::Record).await
    }

    /// Stores the latest progress snapshot.
    pub async fn save_progress(&self, name: &str, snapshot: &Snapshot) -> Result<(), BulkRunsError> {
        let json = serde_json::to_string(snapshot).map_err(|source| BulkRunsError::Corrupt {
            run: name.to_owned(),
            field: RunField::Progress,
            source,
        })?;
        self.set_field(name, RunField::Progress, json).await
    }

    /// The latest progress snapshot.
    pub async fn load_progress(&self, name: &str) -> Result<Option<Snapshot>, BulkRunsError> {
        self.get_field(name, RunField::Progress).await
    }

    /// Records jobs as submitted and not yet final.
    pub async fn add_jobs(&self, name: &str, ids: &[Uuid]) -> Result<(), BulkRunsError> {
        self.change_jobs(name, ids, true).await
    }

    /// Records jobs as final.
    pub async fn remove_jobs(&self, name: &str, ids: &[Uuid]) -> Result<(), BulkRunsError> {
        self.change_jobs(name, ids, false).await
    }

    async fn change_jobs(&self, name: &str, ids: &[Uuid], add: bool) -> Result<(), BulkRunsError> {
        if ids.is_empty() {
            return Ok(());
        }
        let key = self.keys.bulk_run_jobs(name);
        let members: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let mut pipe = redis::pipe();
        if add {
            pipe.sadd(&key, members).ignore().expire(&key, RUN_TTL_SECS).ignore();
        } else {
            pipe.srem(&key, members).ignore();
        }
        self.run(&pipe).await
    }

    /// Jobs of the run not known to be final.
    pub async fn jobs(&self, name: &str) -> Result<Vec<Uuid>, BulkRunsError> {
        let mut pipe = redis::pipe();
        pipe.smembers(self.keys.bulk_run_jobs(name));
        let (members,): (Vec<String>,) = self.run(&pipe).await?;
        Ok(members.iter().filter_map(|m| m.parse().ok()).collect())
    }

    /// Up to `limit` runs, most recently written first (runs whose keys expired are left out).
    pub async fn list(&self, limit: usize) -> Result<Vec<BulkRun>, BulkRunsError> {
        let stop = isize::try_from(limit).unwrap_or(isize::MAX).saturating_sub(1);
        let mut pipe = redis::pipe();
        pipe.cmd("ZREVRANGE").arg(self.keys.bulk_runs()).arg(0).arg(stop);
        let (names,): (Vec<String>,) = self.read(&pipe).await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.cmd("HMGET").arg(self.keys.bulk_run(name)).arg(RunField::Record.name()).arg(RunField::Progress.name());
        }
        let fields: Vec<(Option<String>, Option<String>)> = self.read(&pipe).await?;
        let mut runs = Vec::with_capacity(names.len());
        for (name, (record, progress)) in names.iter().zip(fields) {
            runs.extend(assemble(name, record, progress)?);
        }
        Ok(runs)
    }

    /// One run by name, with its count of unfinished jobs.
    pub async fn get(&self, name: &str) -> Result<Option<BulkRun>, BulkRunsError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(self.keys.bulk_run(name))
            .arg(RunField::Record.name())
            .arg(RunField::Progress.name())
            .cmd("SCARD")
            .arg(self.keys.bulk_run_jobs(name));
        let ((record, progress), unfinished): ((Option<String>, Option<String>), u64) = self.read(&pipe).await?;
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

    #[test]
    fn names_on_the_command_line_parse_with_their_messages() {
        assert_eq!(InputFormat::parse("ndjson"), Ok(InputFormat::Jsonl));
        assert_eq!(InputFormat::from_path(Path::new("a.CSV")), InputFormat::Csv);
        assert_eq!(
            InputFormat::parse("xml").unwrap_err().to_string(),
            "input format `xml`: expected jsonl, csv, text or template"
        );
        assert_eq!(Layout::parse("wds"), Ok(Layout::WebDataset));
        assert_eq!(Layout::parse("zip").unwrap_err().to_string(), "--format zip: expected webdataset or files");
    }
}
