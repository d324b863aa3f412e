//! What the dataset says about each sample (`KEY.json`, manifest rows) and each shard (`_stats.json`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use fleet_core::{ErrorCode, JobSpec, JobStatus, LoraRef};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::sample::Sample;

/// Whether a sample made it into the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleState {
    /// Its image is in the shard.
    Succeeded,
    /// Listed in the shard's stats and manifest, not in the shard.
    Failed,
    /// Made, but within `--dedup-hamming` bits of an earlier kept sample: listed with that
    /// sample's key in the shard's stats and manifest, not in the shard.
    Duplicate,
}

impl SampleState {
    /// The name records use (`succeeded`, `failed`, `duplicate`).
    pub fn as_str(self) -> &'static str {
        match self {
            SampleState::Succeeded => "succeeded",
            SampleState::Failed => "failed",
            SampleState::Duplicate => "duplicate",
        }
    }
}

/// ControlNet settings of a sample (the control image itself is not repeated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlNetRecord {
    pub model: String,
    pub scale: f32,
    pub start: f32,
    pub end: f32,
}

/// When the sample was submitted, started and finished, and how long it queued and ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleTimings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Seconds from submission (creation of the job) to the start of generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_seconds: Option<f64>,
    /// Seconds from the start of generation to the stored image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_seconds: Option<f64>,
}

impl SampleTimings {
    /// Cuts the timestamps to the microsecond, the Parquet manifest's precision, so `KEY.json`
    /// and both manifests say the same.
    pub fn truncate_to_micros(&mut self) {
        use chrono::SubsecRound as _;
        for at in [&mut self.submitted_at, &mut self.started_at, &mut self.finished_at].into_iter().flatten() {
            *at = at.trunc_subsecs(6);
        }
    }
}

/// Why a sample failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleError {
    /// A fleet error code (`invalid_spec` for rows that are not valid jobs).
    pub code: ErrorCode,
    pub message: String,
}

/// One sample: `KEY.json` in the shard and one row of the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub key: String,
    pub shard: u64,
    /// 1-based line of the input row.
    pub line: usize,
    pub status: SampleState,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    pub model: String,
    pub loras: Vec<LoraRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controlnet: Option<ControlNetRecord>,
    pub steps: u32,
    pub guidance: f32,
    pub width: u32,
    pub height: u32,
    /// Image file extension (`png`, `jpg`, `webp`).
    pub format: String,
    /// Lower-case hex SHA-256 of the image bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// 64-bit perceptual hash of the image (dHash, see [`crate::phash`]), 16 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phash: Option<String>,
    /// For a `duplicate`: the key of the earlier kept sample it lies near.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
    /// For a `duplicate`: how many bits its hash differs from that sample's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_distance: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
    /// Worker id (fleet) or `local` (in-process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    pub timings: SampleTimings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<SampleError>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

impl SampleRecord {
    /// A record with the sample's settings and no outcome yet (state `failed` until filled in).
    pub fn of(sample: &Sample) -> SampleRecord {
        let fallback = JobSpec::new("");
        let spec = sample.job.as_ref().unwrap_or(&fallback);
        SampleRecord {
            key: sample.key.clone(),
            shard: sample.shard,
            line: sample.line,
            status: SampleState::Failed,
            prompt: spec.prompt.clone(),
            negative_prompt: spec.negative_prompt.clone(),
            seed: spec.seed,
            model: spec.model.clone(),
            loras: spec.loras.clone(),
            controlnet: spec.controlnet.as_ref().map(|c| ControlNetRecord {
                model: c.model.clone(),
                scale: c.scale,
                start: c.start,
                end: c.end,
            }),
            steps: spec.steps,
            guidance: spec.guidance,
            width: spec.width,
            height: spec.height,
            format: spec.output.format.extension().to_owned(),
            sha256: None,
            bytes: None,
            phash: None,
            duplicate_of: None,
            duplicate_distance: None,
            job_id: None,
            worker: None,
            timings: SampleTimings::default(),
            error: sample.job.as_ref().err().map(|errors| SampleError {
                code: ErrorCode::InvalidSpec,
                message: errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            }),
            metadata: spec.metadata.clone(),
        }
    }

    /// Fills in what a finished fleet job says: state, image digest, worker, timings, error.
    pub fn apply_status(&mut self, status: &JobStatus) {
        self.job_id = Some(status.id);
        self.worker = status.worker.clone();
        let started = status.started_at;
        let finished = status.finished_at;
        self.timings = SampleTimings {
            submitted_at: Some(status.created_at),
            started_at: started,
            finished_at: finished,
            queue_seconds: started.map(|s| seconds(status.created_at, s)),
            run_seconds: started.zip(finished).map(|(s, f)| seconds(s, f)),
        };
        match (status.state, status.result.first()) {
            (fleet_core::JobState::Succeeded, Some(image)) => {
                self.status = SampleState::Succeeded;
                self.sha256 = Some(image.sha256.clone());
                self.bytes = Some(image.bytes);
                self.seed = Some(image.seed);
                self.error = None;
            }
            (state, _) => {
                self.status = SampleState::Failed;
                self.error = Some(match &status.error {
                    Some(e) => SampleError { code: e.code, message: e.message.clone() },
                    None => {
                        SampleError { code: ErrorCode::Internal, message: format!("job ended `{}`", state.as_str()) }
                    }
                });
            }
        }
    }

    /// Marks the sample a near-duplicate of the kept sample `of`, `distance` bits away.
    pub fn mark_duplicate(&mut self, of: &str, distance: u32) {
        self.status = SampleState::Duplicate;
        self.duplicate_of = Some(of.to_owned());
        self.duplicate_distance = Some(distance);
    }

    /// Marks the sample failed with `code`.
    pub fn fail(&mut self, code: ErrorCode, message: impl Into<String>) {
        self.status = SampleState::Failed;
        self.error = Some(SampleError { code, message: message.into() });
    }

    /// The image's file name inside the shard (`KEY.png`).
    pub fn image_name(&self) -> String {
        format!("{}.{}", self.key, self.format)
    }
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

/// One failed sample, as the shard's stats list it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub key: String,
    pub line: usize,
    pub code: ErrorCode,
    pub message: String,
}

/// One sample dropped as a near-duplicate, as the shard's stats list it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Duplicate {
    pub key: String,
    pub line: usize,
    /// Key of the earlier kept sample (in this shard or an earlier one).
    pub duplicate_of: String,
    /// Bits between the two perceptual hashes.
    pub distance: u32,
}

/// Summary of numbers (seconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimingSummary {
    pub mean: f64,
    pub max: f64,
}

/// `NNNNN_stats.json`: what the shard holds and what failed. Written last, so its presence
/// means the shard is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardStats {
    pub shard: u64,
    /// Samples planned for the shard.
    pub count: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub failed_by_code: BTreeMap<String, u64>,
    pub failures: Vec<Failure>,
    /// Samples dropped as near-duplicates (`--dedup-hamming`).
    #[serde(default)]
    pub duplicate: u64,
    /// Each of them with the key it collided with.
    #[serde(default)]
    pub duplicates: Vec<Duplicate>,
    /// Total image bytes in the shard.
    pub image_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_seconds: Option<TimingSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_seconds: Option<TimingSummary>,
    pub written_at: DateTime<Utc>,
}

impl ShardStats {
    /// The stats of a shard made of `records`.
    pub fn of(shard: u64, records: &[SampleRecord]) -> ShardStats {
        let mut stats = ShardStats {
            shard,
            count: records.len() as u64,
            succeeded: 0,
            failed: 0,
            failed_by_code: BTreeMap::new(),
            failures: Vec::new(),
            duplicate: 0,
            duplicates: Vec::new(),
            image_bytes: 0,
            queue_seconds: summary(records.iter().filter_map(|r| r.timings.queue_seconds)),
            run_seconds: summary(records.iter().filter_map(|r| r.timings.run_seconds)),
            written_at: Utc::now(),
        };
        for r in records {
            match (r.status, &r.error) {
                (SampleState::Succeeded, _) => {
                    stats.succeeded += 1;
                    stats.image_bytes += r.bytes.unwrap_or(0);
                }
                (SampleState::Duplicate, _) => {
                    stats.duplicate += 1;
                    stats.duplicates.push(Duplicate {
                        key: r.key.clone(),
                        line: r.line,
                        duplicate_of: r.duplicate_of.clone().unwrap_or_default(),
                        distance: r.duplicate_distance.unwrap_or(0),
                    });
                }
                (SampleState::Failed, error) => {
                    stats.failed += 1;
                    let (code, message) =
                        error.as_ref().map_or((ErrorCode::Internal, String::new()), |e| (e.code, e.message.clone()));
                    *stats.failed_by_code.entry(code.name().to_owned()).or_default() += 1;
                    stats.failures.push(Failure { key: r.key.clone(), line: r.line, code, message });
                }
            }
        }
        stats
    }
}

fn summary(values: impl Iterator<Item = f64>) -> Option<TimingSummary> {
    let (mut n, mut sum, mut max) = (0u64, 0.0, 0.0f64);
    for v in values {
        n += 1;
        sum += v;
        max = max.max(v);
    }
    (n > 0).then(|| TimingSummary { mean: sum / n as f64, max })
}
