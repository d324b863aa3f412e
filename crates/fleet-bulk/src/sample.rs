//! From input rows to samples: defaults and overrides merged, prompt programs expanded (every
//! expansion, or `--samples N` drawn with the run seed), each sample a validated job with its
//! key, seed and idempotency key.
//!
//! A program's sample keys come from its expansion: `t` + 16 hex digits of SHA-256(line, own
//! key, template, expansion number, repeat), or `OWNKEY_` + 12 of them; so a rerun or a resume
//! gives every expansion the same key, seed and place.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use fleet_core::{FleetConfig, JobSpec, Priority};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::input::{RowError, RowResult};
use crate::plan::{ShardPlan, check_key, derive_seed};
use crate::template::{ListCache, Program};

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
    /// Which of the prompt's `--seeds-per-prompt` samples it is (0 for the first).
    pub variant: u32,
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
    /// Run seed (every sample's seed is derived from it and the key; prompt draws from it).
    pub seed: u64,
    /// Samples per input row, each with its own seed.
    pub seeds_per_prompt: u32,
    /// Job fields from the command line; a row's own fields win.
    pub defaults: Map<String, Value>,
    /// Shard layout.
    pub plan: ShardPlan,
    /// Models a sample may use (`None`: any; the dispatcher decides).
    pub models: Option<BTreeSet<String>>,
    /// Prompts drawn from each prompt program; `None`: every expansion, in product order.
    pub samples: Option<u64>,
    /// The input file's directory: where `{__name__}` finds `name.txt` and where image fields
    /// given as relative paths are read from.
    pub list_dir: PathBuf,
}

/// One prompt of a row: a program's expansion (or the row's own prompt) and its key.
struct Unit {
    /// `None`: the row's own `prompt`.
    prompt: Option<String>,
    /// `None`: the positional key.
    key: Option<String>,
}

/// Where the factory is within a row.
struct RowCursor {
    line: usize,
    parsed: Result<(JobSpec, Option<String>), Vec<RowError>>,
    program: Option<ProgramCursor>,
    /// The row's one unit when it has no program (taken on first use).
    single: Option<Unit>,
    unit: Option<Unit>,
    variant: u32,
}

/// A row's prompt program and how far it is expanded.
struct ProgramCursor {
    program: Program,
    /// What keys hash besides the expansion: line, own key, template text.
    id: String,
    own_key: Option<String>,
    /// Next expansion (product) or draws made (sampling).
    next: u64,
    draw: Option<Draws>,
}

/// Seeded draws of one program.
struct Draws {
    rng: ChaCha8Rng,
    total: u64,
    /// How often each expansion was drawn so far (repeats get their own keys).
    seen: HashMap<u64, u32>,
}

impl ProgramCursor {
    fn next_unit(&mut self) -> Option<Unit> {
        let (prompt, k, occurrence) = match &mut self.draw {
            None => {
                if self.next >= self.program.count() {
                    return None;
                }
                let k = self.next;
                (self.program.expand(k), k, 0)
            }
            Some(draws) => {
                if self.next >= draws.total {
                    return None;
                }
                let (prompt, k) = self.program.draw(&mut draws.rng);
                let seen = draws.seen.entry(k).or_insert(0);
                *seen += 1;
                (prompt, k, *seen - 1)
            }
        };
        self.next += 1;
        let digest = Sha256::digest(format!("{}\n{k}\n{occurrence}", self.id).as_bytes());
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let key = match &self.own_key {
            Some(own) => format!("{own}_{}", &hex[..12]),
            None => format!("t{hex}"),
        };
        Some(Unit { prompt: Some(prompt), key: Some(key) })
    }
}

/// Turns rows into samples, numbering them in input order. A row gives
/// `--seeds-per-prompt` samples per prompt: one prompt, or each expansion of its program.
pub struct SampleFactory {
    settings: SampleSettings,
    config: FleetConfig,
    next: u64,
    lists: ListCache,
    row: Option<RowCursor>,
}

impl std::fmt::Debug for SampleFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleFactory").field("settings", &self.settings).field("next", &self.next).finish()
    }
}

impl SampleFactory {
    /// A factory starting at sample 0; `config` provides the validation limits of each model.
    pub fn new(settings: SampleSettings, config: FleetConfig) -> SampleFactory {
        SampleFactory { settings, config, next: 0, lists: ListCache::default(), row: None }
    }

    /// Every sample of one row (see [`SampleFactory::push_row`] for rows with many).
    pub fn samples(&mut self, row: RowResult) -> Vec<Sample> {
        self.push_row(row);
        std::iter::from_fn(|| self.next_sample()).collect()
    }

    /// Starts a row; [`SampleFactory::next_sample`] then gives its samples one by one, so a
    /// program with millions of expansions never sits in memory. An invalid row still takes
    /// the places of one prompt (as failed samples), so the keys of the rows after it do not
    /// depend on it being fixed.
    pub fn push_row(&mut self, row: RowResult) {
        let (line, parsed, program) = match row {
            Ok(row) => {
                let line = row.line;
                match self.parse_row(line, row.fields) {
                    Ok((spec, own, program)) => (line, Ok((spec, own)), program),
                    Err(errors) => (line, Err(errors), None),
                }
            }
            Err(errors) => (errors.first().map_or(0, |e| e.line), Err(errors), None),
        };
        let own = parsed.as_ref().ok().and_then(|(_, own)| own.clone());
        let single = program.is_none().then_some(Unit { prompt: None, key: own });
        self.row = Some(RowCursor { line, parsed, program, single, unit: None, variant: 0 });
    }

    /// The next sample of the current row, `None` when the row has given all of them.
    pub fn next_sample(&mut self) -> Option<Sample> {
        let per_row = self.settings.seeds_per_prompt.max(1);
        let cursor = self.row.as_mut()?;
        if cursor.unit.is_none() || cursor.variant >= per_row {
            let unit = match &mut cursor.program {
                Some(program) => program.next_unit(),
                None => cursor.single.take(),
            };
            let Some(unit) = unit else {
                self.row = None;
                return None;
            };
            cursor.unit = Some(unit);
            cursor.variant = 0;
        }
        let variant = cursor.variant;
        cursor.variant += 1;
        let line = cursor.line;
        let unit = cursor.unit.as_ref()?;
        let (own_key, prompt) = (unit.key.clone(), unit.prompt.clone());
        let parsed = match &cursor.parsed {
            Ok((spec, _)) => Ok(spec.clone()),
            Err(errors) => Err(errors.clone()),
        };
        let ordinal = self.next;
        self.next += 1;
        let (shard, index) = self.settings.plan.locate(ordinal);
        let key = match own_key {
            Some(own) if per_row > 1 => format!("{own}_{variant}"),
            Some(own) => own,
            None => self.settings.plan.key(shard, index),
        };
        let job = parsed.and_then(|mut spec| {
            if let Some(prompt) = prompt {
                spec.prompt = prompt;
            }
            self.finish_job(spec, &key, variant, line)
        });
        Some(Sample { ordinal, shard, index, key, line, variant, job })
    }

    /// A row's program, from its `template` field (which stands instead of `prompt`).
    fn program(&mut self, line: usize, template: &str, own_key: Option<&str>) -> Result<ProgramCursor, RowError> {
        let dir = self.settings.list_dir.clone();
        let mut load = |name: &str| -> Result<Option<(String, String)>, String> {
            let path = dir.join(format!("{name}.txt"));
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(Some((path.display().to_string(), text))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{}: {e}", path.display())),
            }
        };
        let program = Program::parse(template, "", line, &mut self.lists, &mut load).map_err(|e| {
            let message =
                if e.source_name.is_empty() { format!("column {}: {}", e.column, e.message) } else { e.to_string() };
            RowError { line, field: "template".into(), message }
        })?;
        let id = format!("{line}\n{}\n{template}", own_key.unwrap_or(""));
        let draw = self.settings.samples.map(|total| {
            let seed: [u8; 32] = Sha256::digest(format!("{}\n{id}", self.settings.seed).as_bytes()).into();
            Draws { rng: ChaCha8Rng::from_seed(seed), total, seen: HashMap::new() }
        });
        Ok(ProgramCursor { program, id, own_key: own_key.map(str::to_owned), next: 0, draw })
    }

    /// The row as a job (seed and keys still to fill in) and its own key, or every problem.
    fn parse_row(&mut self, line: usize, mut fields: Map<String, Value>) -> Result<ParsedRow, Vec<RowError>> {
        let mut errors = Vec::new();
        let template = match fields.remove("template") {
            None | Some(Value::Null) => None,
            Some(Value::String(_)) if fields.contains_key("prompt") => {
                errors.push(RowError {
                    line,
                    field: "template".into(),
                    message: "a row has `prompt` or `template`, not both".into(),
                });
                None
            }
            Some(Value::String(text)) => {
                // Stands in for the expansions while the row's other fields are checked.
                fields.insert("prompt".into(), Value::from("template"));
                Some(text)
            }
            Some(_) => {
                errors.push(RowError { line, field: "template".into(), message: "must be a string".into() });
                None
            }
        };
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
        crate::input_images::inline_files(&mut fields, &self.settings.list_dir, line, &mut errors);
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
        let program = match &template {
            Some(text) if errors.is_empty() => match self.program(line, text, own_key.as_deref()) {
                Ok(program) => Some(program),
                Err(error) => {
                    errors.push(error);
                    None
                }
            },
            _ => None,
        };
        match spec {
            Some(spec) if errors.is_empty() => Ok((spec, own_key, program)),
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

/// A valid row: its job (prompt still to fill in for programs), own key and program.
type ParsedRow = (JobSpec, Option<String>, Option<ProgramCursor>);

/// Namespace of the job ids [`job_id`] derives (a fixed random UUID).
const JOB_ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f1c_2a4e_93d7_4b8a_a5e2_1c0d_7f3b_9e64);

/// The job id of a sample's job: a UUID v5 of its idempotency key. The dispatcher returns the
/// existing job for an id its tenant already used, as long as the job's record lives
/// (`redis.status_ttl_secs`, or its retention), so a resume finds the jobs it made even once
/// their idempotency keys (`redis.idempotency_ttl_secs`) are gone.
pub fn job_id(idempotency_key: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(&JOB_ID_NAMESPACE, idempotency_key.as_bytes())
}

/// `bulk/<run>/<key>`, plus `/<attempt>` for a deliberate new attempt (a retry of a failed or
/// cancelled sample), so the dispatcher creates a new job instead of returning the old one.
pub fn idempotency_key(run: &str, key: &str, attempt: Option<&str>) -> String {
    match attempt {
        Some(attempt) => format!("bulk/{run}/{key}/{attempt}"),
        None => format!("bulk/{run}/{key}"),
    }
}
