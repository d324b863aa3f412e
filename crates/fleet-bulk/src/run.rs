//! A run's settings and record: `run.json` in the output location (and a copy in Redis), and the
//! progress snapshot `fleet bulk status` shows.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::input::InputFormat;
use crate::shard::Layout;

/// Name of the run record in the output location.
pub const RUN_FILE: &str = "run.json";
/// Name of the progress snapshot in the output location.
pub const PROGRESS_FILE: &str = "_progress.json";
/// Marker a `fleet bulk cancel` leaves in the output location; a running run stops when it sees it.
pub const CANCEL_FILE: &str = "_cancelled";

/// Everything that decides what a run produces. Fixed at `run`; `resume` reuses it as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub name: String,
    /// The input file (absolute path).
    pub input: PathBuf,
    pub input_format: InputFormat,
    /// Output location: a directory or `s3://bucket/prefix`.
    pub out: String,
    pub layout: Layout,
    pub shard_size: u32,
    pub seeds_per_prompt: u32,
    /// Run seed; every sample's seed derives from it and the sample key.
    pub seed: u64,
    /// Job fields from the command line (a row's own fields win).
    pub defaults: Map<String, Value>,
    /// Most jobs submitted and not yet final.
    pub max_in_flight: usize,
    /// Record invalid rows as failed samples instead of refusing to start.
    pub skip_invalid: bool,
    /// Generate in-process instead of through the fleet.
    pub local: bool,
}

/// What the input held, from the scan before the run starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputSummary {
    /// Lower-case hex SHA-256 of the input file.
    pub sha256: String,
    pub rows: u64,
    pub invalid_rows: u64,
    pub samples: u64,
    pub shards: u64,
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    #[default]
    Running,
    Finished,
    Cancelled,
}

/// Final counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub succeeded: u64,
    pub failed: u64,
    pub shards: u64,
}

/// `run.json`: the full configuration, the input's hash, start and end, totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFile {
    pub config: RunConfig,
    pub input: InputSummary,
    pub state: RunState,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    pub totals: Totals,
    /// Version of the `fleet` that wrote it.
    pub fleet_version: String,
}

/// A moment of a run, for `fleet bulk status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub state: RunState,
    /// Samples planned.
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// `failed` split by error code (`unknown_lora`, `invalid_spec`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed_by_code: BTreeMap<String, u64>,
    /// Submitted, waiting for a worker.
    pub queued: u64,
    /// Being generated.
    pub running: u64,
    pub shards_done: u64,
    pub shards_total: u64,
    /// Samples finished per second since this invocation started.
    pub images_per_second: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl Snapshot {
    /// Samples neither final nor submitted.
    pub fn waiting(&self) -> u64 {
        self.total.saturating_sub(self.succeeded + self.failed + self.queued + self.running)
    }
}
