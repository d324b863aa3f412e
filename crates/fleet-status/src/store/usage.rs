//! Reading usage back: the hourly counts of a time range, and the all-time totals. The counts
//! are written by the update script when a job finishes (see [`crate::scripts::UPDATE`]).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use fleet_core::usage::{UsageCounts, UsageEntry, hour_name, hour_start, parse_usage_field};

use super::StatusStore;
use crate::error::StatusError;

/// Most hours one usage read covers (a little over a year).
pub const MAX_USAGE_HOURS: i64 = 24 * 400;

impl StatusStore {
    /// The usage of every hour that starts in `[from, to)` (from rounded down to its hour), of
    /// `tenant` or of every tenant, one entry per hour, tenant and model that counted anything.
    /// At most [`MAX_USAGE_HOURS`] hours are read; a longer range is [`StatusError::InvalidRange`].
    pub async fn usage(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        tenant: Option<&str>,
    ) -> Result<Vec<UsageEntry>, StatusError> {
        let first = hour_start(from);
        let hours = (to - first).num_hours() + i64::from((to - first).num_seconds() % 3600 != 0);
        if hours > MAX_USAGE_HOURS {
            return Err(StatusError::InvalidRange(format!(
                "{hours} hours asked for; at most {MAX_USAGE_HOURS} can be read at once"
            )));
        }
        let starts: Vec<DateTime<Utc>> = (0..hours.max(0)).map(|h| first + Duration::hours(h)).collect();
        if starts.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for start in &starts {
            pipe.hgetall(self.keys.usage_hour(&hour_name(*start)));
        }
        let mut con = self.conn.clone();
        let what = self.keys.usage_hour("*");
        let hashes: Vec<HashMap<String, u64>> =
            self.call(&what, async move { pipe.query_async(&mut con).await }).await?;
        let mut entries = Vec::new();
        for (hour, hash) in starts.into_iter().zip(hashes) {
            for ((tenant, model), counts) in by_tenant_and_model(&hash, tenant) {
                entries.push(UsageEntry { hour, tenant, model, counts });
            }
        }
        Ok(entries)
    }

    /// Every tenant's and model's usage since the fleet first counted it (what the dispatcher's
    /// `/metrics` exposes), by tenant and model.
    pub async fn usage_totals(&self) -> Result<BTreeMap<(String, String), UsageCounts>, StatusError> {
        let key = self.keys.usage_totals();
        let mut con = self.conn.clone();
        let query = redis::cmd("HGETALL").arg(&key).clone();
        let hash: HashMap<String, u64> = self.call(&key, async move { query.query_async(&mut con).await }).await?;
        Ok(by_tenant_and_model(&hash, None))
    }
}

/// A usage hash's counts by tenant and model, only `tenant`'s when given; fields of another
/// shape are skipped.
fn by_tenant_and_model(hash: &HashMap<String, u64>, tenant: Option<&str>) -> BTreeMap<(String, String), UsageCounts> {
    let mut counts: BTreeMap<(String, String), UsageCounts> = BTreeMap::new();
    for (field, n) in hash {
        let Some((t, model, metric)) = parse_usage_field(field) else { continue };
        if tenant.is_some_and(|wanted| wanted != t) {
            continue;
        }
        counts.entry((t.to_owned(), model.to_owned())).or_default().set(metric, *n);
    }
    counts
}
