//! Usage accounting: what a finished job counts toward its tenant's usage, what an admitted job
//! costs against a daily budget, and how hourly counts are grouped into the rows of
//! `GET /v1/usage`.
//!
//! Megapixel-steps are width × height × steps × images / 10⁶; they are counted (in Redis and
//! here) as integer pixel-steps, so sums are exact and independent of order.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, DurationRound, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::JobStatus;

/// Pixel-steps of `images` images of `width` × `height` made in `steps` steps.
pub fn pixel_steps(width: u32, height: u32, steps: u32, images: u32) -> u64 {
    u64::from(width) * u64::from(height) * u64::from(steps) * u64::from(images)
}

/// What one or more finished jobs count: the unit of the hourly usage records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageCounts {
    /// Jobs that finished (succeeded, failed or cancelled).
    pub jobs: u64,
    /// Images stored.
    pub images: u64,
    /// Pixel-steps of the images stored.
    pub pixel_steps: u64,
    /// Milliseconds from a job's start on a worker to its end (every job of a batch counts the
    /// batch's time).
    pub worker_ms: u64,
}

impl UsageCounts {
    /// The names of the counts, as Redis keeps them.
    pub const METRICS: [&'static str; 4] = ["jobs", "images", "pixel_steps", "worker_ms"];

    /// What a job that has just finished counts: itself, its stored images with their
    /// pixel-steps, and the time its last start took.
    pub fn of_finished(status: &JobStatus) -> UsageCounts {
        let steps = status.request.as_ref().map_or(status.progress.steps, |r| r.steps);
        let worker_ms = match (status.started_at, status.finished_at) {
            (Some(start), Some(end)) => u64::try_from((end - start).num_milliseconds()).unwrap_or(0),
            _ => 0,
        };
        UsageCounts {
            jobs: 1,
            images: status.result.len() as u64,
            pixel_steps: status.result.iter().map(|image| pixel_steps(image.width, image.height, steps, 1)).sum(),
            worker_ms,
        }
    }

    /// The counts by name, in [`Self::METRICS`] order.
    pub fn fields(&self) -> [(&'static str, u64); 4] {
        [("jobs", self.jobs), ("images", self.images), ("pixel_steps", self.pixel_steps), ("worker_ms", self.worker_ms)]
    }

    /// Sets the count named `metric`; false for a name that is not one of [`Self::METRICS`].
    pub fn set(&mut self, metric: &str, value: u64) -> bool {
        let slot = match metric {
            "jobs" => &mut self.jobs,
            "images" => &mut self.images,
            "pixel_steps" => &mut self.pixel_steps,
            "worker_ms" => &mut self.worker_ms,
            _ => return false,
        };
        *slot = value;
        true
    }

    fn add(&mut self, other: &UsageCounts) {
        self.jobs += other.jobs;
        self.images += other.images;
        self.pixel_steps += other.pixel_steps;
        self.worker_ms += other.worker_ms;
    }
}

/// The counts of one tenant and model in one hour, as read back from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEntry {
    /// Start of the hour (UTC).
    pub hour: DateTime<Utc>,
    pub tenant: String,
    pub model: String,
    pub counts: UsageCounts,
}

/// The field of an hour's usage hash that holds one count: `tenant/model/metric` (tenant and
/// model names never hold `/`).
pub fn usage_field(tenant: &str, model: &str, metric: &str) -> String {
    format!("{tenant}/{model}/{metric}")
}

/// The tenant, model and metric of a [`usage_field`], or `None` for a field of another shape.
pub fn parse_usage_field(field: &str) -> Option<(&str, &str, &str)> {
    let mut parts = field.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(tenant), Some(model), Some(metric)) if !metric.contains('/') => Some((tenant, model, metric)),
        _ => None,
    }
}

/// The hour `time` falls in, as the usage records name it: `YYYYMMDDHH` (UTC).
pub fn hour_name(time: DateTime<Utc>) -> String {
    time.format("%Y%m%d%H").to_string()
}

/// Start of the hour `time` falls in.
pub fn hour_start(time: DateTime<Utc>) -> DateTime<Utc> {
    time.duration_trunc(Duration::hours(1)).unwrap_or(time)
}

/// The UTC day `time` falls in, as daily quota counters name it: `YYYYMMDD`.
pub fn day_name(time: DateTime<Utc>) -> String {
    time.format("%Y%m%d").to_string()
}

/// When the UTC day after `time` starts: the reset of daily quotas.
pub fn next_day_start(time: DateTime<Utc>) -> DateTime<Utc> {
    time.duration_trunc(Duration::days(1)).unwrap_or(time) + Duration::days(1)
}

/// The period a row of `GET /v1/usage` covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UsagePeriod {
    Hour,
    Day,
}

/// What the rows of `GET /v1/usage` are grouped by: a period (or none: the whole range), the
/// tenant, the model, any combination. Written `day,model`, `hour,tenant,model`, `tenant`…
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageGrouping {
    pub period: Option<UsagePeriod>,
    pub tenant: bool,
    pub model: bool,
}

impl UsageGrouping {
    /// The default grouping: by day and model.
    pub const DEFAULT: UsageGrouping = UsageGrouping { period: Some(UsagePeriod::Day), tenant: false, model: true };

    /// Parses a comma-separated list of `hour`, `day`, `tenant`, `model` (empty: no grouping,
    /// one row for the whole range).
    pub fn parse(text: &str) -> Result<UsageGrouping, String> {
        let mut grouping = UsageGrouping::default();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let period = match word {
                "hour" => Some(UsagePeriod::Hour),
                "day" => Some(UsagePeriod::Day),
                "tenant" => {
                    grouping.tenant = true;
                    None
                }
                "model" => {
                    grouping.model = true;
                    None
                }
                other => return Err(format!("`{other}` is not one of hour, day, tenant, model")),
            };
            if let Some(period) = period {
                if grouping.period.is_some_and(|p| p != period) {
                    return Err("group by hour or by day, not both".to_owned());
                }
                grouping.period = Some(period);
            }
        }
        Ok(grouping)
    }
}

/// One row of `GET /v1/usage`: the counts of one group. A field the grouping does not split by
/// is left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageRow {
    /// Start of the hour or day (UTC) when grouped by a period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Jobs that finished (succeeded, failed or cancelled), counted in the hour they finished.
    pub jobs: u64,
    /// Images stored.
    pub images: u64,
    /// Width × height × steps of every stored image, / 10⁶.
    pub megapixel_steps: f64,
    /// Seconds from each job's start on a worker to its end.
    pub worker_seconds: f64,
}

/// Sums hourly entries into rows by `grouping`, ordered by period, tenant, model.
pub fn group_usage(entries: &[UsageEntry], grouping: UsageGrouping) -> Vec<UsageRow> {
    type Group = (Option<DateTime<Utc>>, Option<String>, Option<String>);
    let mut groups: BTreeMap<Group, UsageCounts> = BTreeMap::new();
    for entry in entries {
        let period = grouping.period.map(|p| match p {
            UsagePeriod::Hour => entry.hour,
            UsagePeriod::Day => entry.hour.duration_trunc(Duration::days(1)).unwrap_or(entry.hour),
        });
        let key = (period, grouping.tenant.then(|| entry.tenant.clone()), grouping.model.then(|| entry.model.clone()));
        groups.entry(key).or_default().add(&entry.counts);
    }
    groups
        .into_iter()
        .map(|((period_start, tenant, model), c)| UsageRow {
            period_start,
            tenant,
            model,
            jobs: c.jobs,
            images: c.images,
            megapixel_steps: c.pixel_steps as f64 / 1e6,
            worker_seconds: c.worker_ms as f64 / 1e3,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn entry(hour: u32, tenant: &str, model: &str, images: u64) -> UsageEntry {
        let counts = UsageCounts { jobs: 1, images, pixel_steps: images * 1_000_000, worker_ms: 1500 };
        let hour = Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap() + Duration::hours(i64::from(hour));
        UsageEntry { hour, tenant: tenant.into(), model: model.into(), counts }
    }

    #[test]
    fn fields_round_trip_and_odd_ones_are_refused() {
        assert_eq!(parse_usage_field(&usage_field("acme", "sdxl", "images")), Some(("acme", "sdxl", "images")));
        assert_eq!(parse_usage_field("acme/sdxl"), None);
        assert_eq!(parse_usage_field("a/b/c/d"), None);
        let mut counts = UsageCounts::default();
        for (i, metric) in UsageCounts::METRICS.iter().enumerate() {
            assert!(counts.set(metric, i as u64 + 1));
        }
        assert_eq!(counts.fields().map(|(_, v)| v), [1, 2, 3, 4]);
        assert!(!counts.set("bytes", 1));
    }

    #[test]
    fn grouping_parses_and_refuses_what_it_cannot_do() {
        assert_eq!(UsageGrouping::parse("day,model").unwrap(), UsageGrouping::DEFAULT);
        let all = UsageGrouping::parse(" hour , tenant,model").unwrap();
        assert_eq!(all, UsageGrouping { period: Some(UsagePeriod::Hour), tenant: true, model: true });
        assert_eq!(UsageGrouping::parse("").unwrap(), UsageGrouping::default());
        assert!(UsageGrouping::parse("hour,day").unwrap_err().contains("not both"));
        assert!(UsageGrouping::parse("week").unwrap_err().contains("`week`"));
    }

    #[test]
    fn rows_sum_by_period_tenant_and_model() {
        let entries = [
            entry(1, "a", "m", 2),
            entry(1, "b", "m", 3),
            entry(2, "a", "m", 4),
            entry(2, "a", "n", 1),
            entry(25, "a", "m", 5),
        ];
        let by_day_model = group_usage(&entries, UsageGrouping::DEFAULT);
        let summary: Vec<(u32, Option<&str>, u64)> = by_day_model
            .iter()
            .map(|r| (chrono::Datelike::day(&r.period_start.unwrap()), r.model.as_deref(), r.images))
            .collect();
        assert_eq!(summary, [(7, Some("m"), 9), (7, Some("n"), 1), (8, Some("m"), 5)]);
        assert!(by_day_model.iter().all(|r| r.tenant.is_none()));
        assert_eq!(by_day_model[0].jobs, 3);
        assert_eq!(by_day_model[0].megapixel_steps, 9.0);
        assert_eq!(by_day_model[0].worker_seconds, 4.5);

        let by_tenant = group_usage(&entries, UsageGrouping::parse("tenant").unwrap());
        let totals: Vec<(Option<&str>, u64)> = by_tenant.iter().map(|r| (r.tenant.as_deref(), r.images)).collect();
        assert_eq!(totals, [(Some("a"), 12), (Some("b"), 3)]);
        assert_eq!(group_usage(&entries, UsageGrouping::default()).len(), 1);
    }

    #[test]
    fn hours_are_named_and_truncated_in_utc() {
        let t = Utc.with_ymd_and_hms(2026, 12, 7, 13, 59, 59).unwrap();
        assert_eq!(hour_name(t), "2026120713");
        assert_eq!(hour_start(t), Utc.with_ymd_and_hms(2026, 12, 7, 13, 0, 0).unwrap());
        assert_eq!(pixel_steps(1024, 1024, 4, 2), 8_388_608);
        assert_eq!(day_name(t), "20261207");
        assert_eq!(next_day_start(t), Utc.with_ymd_and_hms(2026, 12, 8, 0, 0, 0).unwrap());
    }
}
