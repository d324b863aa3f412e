//! `GET /v1/bulk/runs` and `GET /v1/bulk/runs/{name}`: bulk runs and their progress, read-only.
//!
//! Admin keys only: a run record (fleet-bulk's `RunFile`) does not say which tenant's key
//! submitted its jobs, so there is nothing to scope a run to a tenant by.

use axum::Json;
use axum::extract::State;
use fleet_core::names::is_run_name;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::App;
use crate::auth::Caller;
use crate::bulk_runs::{BulkRun, BulkRunPage};
use crate::error::ApiError;
use crate::extract::{Path, Query};

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct ListQuery {
    /// Runs per page: 1 to 200, default 50.
    limit: Option<usize>,
}

/// `/v1/bulk/runs/{name}`
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct RunPath {
    /// The run's name.
    name: String,
}

/// `GET /v1/bulk/runs?limit=` (admin): runs, most recently started or resumed first.
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<BulkRunPage>, ApiError> {
    caller.require_admin()?;
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    Ok(Json(BulkRunPage { runs: app.bulk_runs.list(limit).await? }))
}

/// `GET /v1/bulk/runs/{name}` (admin): one run, with its count of unfinished jobs.
pub async fn get_one(
    State(app): State<App>,
    caller: Caller,
    Path(RunPath { name }): Path<RunPath>,
) -> Result<Json<BulkRun>, ApiError> {
    caller.require_admin()?;
    let not_found = || ApiError::not_found(format!("bulk run `{name}`"));
    // Anything that is not a run name cannot name a run, nor reach another key.
    if !is_run_name(&name) {
        return Err(not_found());
    }
    app.bulk_runs.get(&name).await?.map(Json).ok_or_else(not_found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_are_fleet_bulk_names() {
        for good in ["cats-v1", "a.b_c", "X"] {
            assert!(is_run_name(good), "{good}");
        }
        for bad in ["", "a:jobs", "a b", "a/b", &"x".repeat(65)] {
            assert!(!is_run_name(bad), "{bad}");
        }
    }
}
