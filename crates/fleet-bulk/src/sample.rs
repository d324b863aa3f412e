//! From input rows to samples: defaults and overrides merged, each sample a validated job with
//! its key, seed and idempotency key.

use std::collections::BTreeSet;

use fleet_core::{FleetConfig, JobSpec, Priority};
use serde_json::{Map, Value};

use crate::input::{RowError, RowResult};
use crate::plan::{ShardPlan, check_key, derive_seed};

/// Job fields a row may not set: the run decides them.
const RESERVED: [(&str, &str); 6] = [
    ("v", "the wire version is the run's"),
    ("id", "job ids are assigned by the dispatcher"),
    ("idempotency_key", "derived from the run name and the sample key"),
    ("tenant", "set from the API key"),
    ("priority", "bulk runs submit at `bulk` priority"),
    ("num_images", "one image per sample; use --seeds-per-prompt"),
];

/// One image of the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Position among all samples, in input order.
    pub ordinal: u64,
    /// Shard number.
    pub shard: u64,
    /// Index within the shard.
    pub index: u32,
    /// Key: file stem inside the shard, unique within it.
    pub key: String,
    /// 1-based line of the row it came from.
    pub line: usize,
    /// The job to run, or why the row is not one.
    pub job: Result<JobSpec, Vec<RowError>>,
}

impl Sample {
    /// The prompt, if the row had a usable one (for records of invalid rows).
    pub fn prompt(&self) -> &str {
        self.job.as_ref().map_or("", |j| j.prompt.as_str())
    }
}

/// What the factory needs to know about the run.
#[derive(Debug, Clone)]
pub struct SampleSettings {
    /// Run name (part of every idempotency key).
    pub run: String,
    /// Run seed (every sample's seed is derived from it and the key).
    pub seed: u64,
    /// Samples per input row, each with its own seed.
    pub seeds_per_prompt: u32,
    /// Job fields from the command line; a row's own fields win.
    pub defaults: Map<String, Value>,
    /// Shard layout.
    pub plan: ShardPlan,
    /// Models a sample may use (`None`: any; the dispatcher decides).
    pub models: Option<BTreeSet<String>>,
}

/// Turns rows into samples, numbering them in input order.
#[derive(Debug)]
pub struct SampleFactory {
    settings: SampleSettings,
    config: FleetConfig,
    next: u64,
}

impl SampleFactory {
    /// A factory starting at sample 0; `config` provides the validation limits of each model.
    pub fn new(settings: SampleSettings, config: FleetConfig) -> SampleFactory {
        SampleFactory { settings, config, next: 0 }
    }

    /// The `seeds_per_prompt` samples of one row. An invalid row still takes its places (as
    /// failed samples), so the keys of the rows after it do not depend on it being fixed.
    pub fn samples(&mut self, row: RowResult) -> Vec<Sample> {
        let per_row = self.settings.seeds_per_prompt.max(1);
        let (line, parsed) = match row {
            Ok(row) => (row.line, self.parse_row(row.line, row.fields)),
            Err(errors) => (errors.first().map_or(0, |e| e.line), Err(errors)),
        };
        let mut samples = Vec::with_capacity(per_row as usize);
        for variant in 0..per_row {
            let ordinal = self.next;
            self.next += 1;
            let (shard, index) = self.settings.plan.locate(ordinal);
            let key = match &parsed {
                Ok((_, Some(own))) if per_row > 1 => format!("{own}_{variant}"),
                Ok((_, Some(own))) => own.clone(),
                _ => self.settings.plan.key(shard, index),
            };
            let job = match &parsed {
                Ok((spec, _)) => self.finish_job(spec.clone(), &key, variant, line),
                Err(errors) => Err(errors.clone()),
            };
            samples.push(Sample { ordinal, shard, index, key, line, job });
        }
        samples
    }

    /// The row as a job (seed and keys still to fill in) and its own key, or every problem.
    fn parse_row(
        &self,
        line: usize,
        mut fields: Map<String, Value>,
    ) -> Result<(JobSpec, Option<String>), Vec<RowError>> {
        let mut errors = Vec::new();
        let own_key = match fields.remove("key") {
            None | Some(Value::Null) => None,
            Some(Value::String(key)) => match check_key(&key) {
                Ok(()) => Some(key),
                Err(message) => {
                    errors.push(RowError { line, field: "key".into(), message });
                    None
                }
            },
            Some(_) => {
                errors.push(RowError { line, field: "key".into(), message: "must be a string".into() });
                None
            }
        };
        for (field, why) in RESERVED {
            if fields.contains_key(field) {
                errors.push(RowError {
                    line,
                    field: field.into(),
                    message: format!("not allowed in bulk input: {why}"),
                });
            }
        }
        for (name, value) in &self.settings.defaults {
            fields.entry(name.clone()).or_insert_with(|| value.clone());
        }
        let spec = match fleet_core::parse_job(&Value::Object(fields).to_string()) {
            Ok(spec) => Some(spec),
            Err(e) => {
                errors.push(RowError { line, field: e.field, message: e.message });
                None
            }
        };
        if let (Some(spec), Some(models)) = (&spec, &self.settings.models)
            && !models.contains(&spec.model)
        {
            let known = models.iter().cloned().collect::<Vec<_>>().join(", ");
            errors.push(RowError {
                line,
                field: "model".into(),
                message: format!("`{}` is not a configured model ({known})", spec.model),
            });
        }
        match spec {
            Some(spec) if errors.is_empty() => Ok((spec, own_key)),
            _ => Err(errors),
        }
    }

    /// Seed, idempotency key and priority filled in, then validated against the model's limits.
    fn finish_job(&self, mut spec: JobSpec, key: &str, variant: u32, line: usize) -> Result<JobSpec, Vec<RowError>> {
        spec.seed = Some(match spec.seed {
            Some(seed) => seed.wrapping_add(u64::from(variant)),
            None => derive_seed(self.settings.seed, key),
        });
        spec.idempotency_key = Some(idempotency_key(&self.settings.run, key, None));
        spec.priority = Priority::Bulk;
        spec.num_images = 1;
        let limits = self.config.limits_for(&spec.model);
        spec.validate(&limits).map(fleet_core::ValidJob::into_spec).map_err(|errors| {
            errors.0.into_iter().map(|e| RowError { line, field: e.field, message: e.message }).collect()
        })
    }
}

/// `bulk/<run>/<key>`, plus `/<attempt>` for a deliberate new attempt (a retry of a failed or
/// cancelled sample), so the dispatcher creates a new job instead of returning the old one.
pub fn idempotency_key(run: &str, key: &str, attempt: Option<&str>) -> String {
    match attempt {
        Some(attempt) => format!("bulk/{run}/{key}/{attempt}"),
        None => format!("bulk/{run}/{key}"),
    }
}
