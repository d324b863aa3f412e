//! Bulk runs as `fleet bulk` records them in Redis, read-only, for `GET /v1/bulk/runs`.
//!
//! The keys, the records and the served view are fleet-status's ([`fleet_status::bulk_runs`]),
//! the one schema fleet-bulk writes with; only the page wrapper is the API's own.

use schemars::JsonSchema;
use serde::Serialize;

pub use fleet_status::bulk_runs::{
    BulkRun, BulkRunStore as BulkRuns, BulkRunsError, InputSummary, RunConfig as RunSettings, RunProgress as Progress,
    RunState, Totals,
};

/// A page of runs, most recently written first.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BulkRunPage {
    pub runs: Vec<BulkRun>,
}
