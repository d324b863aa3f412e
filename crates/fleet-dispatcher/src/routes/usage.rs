//! `GET /v1/usage`: a tenant's usage (jobs, images, megapixel-steps, worker seconds) over a time
//! range, grouped by period, tenant and model. A caller sees its own tenant; an admin any
//! tenant, or all of them.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use fleet_core::ErrorCode;
use fleet_core::usage::{UsageGrouping, UsageRow, group_usage, hour_start};
use fleet_status::MAX_USAGE_HOURS;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::App;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Query;

/// The default range: the last 7 days.
const DEFAULT_DAYS: i64 = 7;

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct UsageQuery {
    /// Start of the range (RFC 3339 time, or a date `YYYY-MM-DD` meaning its UTC midnight);
    /// rounded down to its hour. Default: 7 days before `to`.
    from: Option<String>,
    /// End of the range, exclusive (same forms). Default: now.
    to: Option<String>,
    /// Comma-separated: `hour` or `day`, `tenant`, `model` (empty: one row for the whole range).
    /// Default: `day,model`.
    group_by: Option<String>,
    /// Admin only: the tenant to report (default: every tenant). Other callers get their own.
    tenant: Option<String>,
}

/// The usage report.
#[derive(Debug, Serialize, JsonSchema)]
pub struct UsageReport {
    /// Start of the first hour counted.
    from: DateTime<Utc>,
    /// End of the range (exclusive).
    to: DateTime<Utc>,
    /// The tenant reported, or none for every tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    /// Rows ordered by period, tenant, model; groups without usage are left out.
    rows: Vec<UsageRow>,
}

pub async fn usage(
    State(app): State<App>,
    caller: Caller,
    Query(q): Query<UsageQuery>,
) -> Result<Json<UsageReport>, ApiError> {
    let to = q.to.as_deref().map(|t| parse_time("to", t)).transpose()?.unwrap_or_else(Utc::now);
    let from = match q.from.as_deref() {
        Some(t) => parse_time("from", t)?,
        None => to - Duration::days(DEFAULT_DAYS),
    };
    if from >= to {
        return Err(invalid(format!("`from` ({from}) must be before `to` ({to})")));
    }
    if (to - from).num_hours() >= MAX_USAGE_HOURS {
        return Err(invalid(format!(
            "the range covers more than {MAX_USAGE_HOURS} hours ({} days); ask for less",
            MAX_USAGE_HOURS / 24
        )));
    }
    let grouping = match q.group_by.as_deref() {
        Some(text) => UsageGrouping::parse(text).map_err(|e| invalid(format!("group_by: {e}")))?,
        None => UsageGrouping::DEFAULT,
    };
    let tenant = match (q.tenant, caller.admin) {
        (Some(tenant), true) => Some(tenant),
        (None, true) => None,
        (Some(tenant), false) if tenant != caller.tenant => {
            return Err(ApiError::new(ErrorCode::Forbidden, "another tenant's usage needs an admin API key"));
        }
        (_, false) => Some(caller.tenant.clone()),
    };
    let entries = app.status.usage(from, to, tenant.as_deref()).await?;
    Ok(Json(UsageReport { from: hour_start(from), to, tenant, rows: group_usage(&entries, grouping) }))
}

/// An RFC 3339 time, or a date (its UTC midnight).
fn parse_time(name: &str, text: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| invalid(format!("`{name}` `{text}`: not an RFC 3339 time or a YYYY-MM-DD date")))
}

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, message)
}
