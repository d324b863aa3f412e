//! A run's settings and record: `run.json` in the output location (and a copy in Redis), and the
//! progress snapshot `fleet bulk status` shows.

/// Name of the run record in the output location.
pub const RUN_FILE: &str = "run.json";
/// Name of the progress snapshot in the output location.
pub const PROGRESS_FILE: &str = "_progress.json";
/// Marker a `fleet bulk cancel` leaves in the output location; a running run stops when it sees it.
pub const CANCEL_FILE: &str = "_cancelled";

// The record types are the Redis schema's (fleet-status), so `run.json`, Redis and the
// dispatcher's API read and write one definition.
pub use fleet_status::bulk_runs::{InputSummary, RunConfig, RunState, Snapshot, Totals};

/// `run.json`: the full configuration, the input's hash, start and end, totals.
pub type RunFile = fleet_status::bulk_runs::RunRecord;
