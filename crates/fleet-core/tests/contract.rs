//! Contract tests: properties of validation, serde round trips, the committed schema,
//! and configuration layering.

use fleet_core::status::{ImageResult, JobError, JobState, JobStatus, Progress};
use fleet_core::{ControlNetSpec, ErrorCode, FleetConfig, ImageFormat, JobSpec, Limits, LoraRef, OutputSpec, Priority};
use proptest::prelude::*;

#[path = "contract/config.rs"]
mod config;
#[path = "contract/hostile.rs"]
mod hostile;

fn arb_lora() -> impl Strategy<Value = LoraRef> {
    ("[a-z][a-z0-9_-]{0,12}", -6.0f32..6.0).prop_map(|(name, scale)| LoraRef::library(name, scale))
}

fn arb_job() -> impl Strategy<Value = JobSpec> {
    (
        ".{0,40}",
        prop::sample::select(vec![1u32, 2, 3, 4, 5, 8, 16]),
        (0u32..2200, 0u32..2200),
        -1.0f32..25.0,
        0u32..20,
        prop::collection::vec(arb_lora(), 0..4),
        prop::option::of(any::<u64>()),
        prop::sample::select(vec![Priority::Interactive, Priority::Bulk]),
    )
        .prop_map(|(prompt, steps, (width, height), guidance, num_images, loras, seed, priority)| {
            let mut job = JobSpec::new(prompt);
            job.steps = steps;
            (job.width, job.height) = (width, height);
            job.guidance = guidance;
            job.num_images = num_images;
            job.loras = loras;
            job.seed = seed;
            job.priority = priority;
            job
        })
}

/// What validation must decide, written independently of the validator's code.
fn expected_field_errors(job: &JobSpec, limits: &Limits) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if job.prompt.trim().is_empty() || job.prompt.chars().count() > limits.max_prompt_chars {
        fields.push("prompt");
    }
    if job.prompt.chars().any(|c| c.is_control() && !"\t\n\r".contains(c)) {
        fields.push("prompt");
    }
    if ![1, 2, 4, 8].contains(&job.steps) {
        fields.push("steps");
    }
    if !(0.0..=20.0).contains(&job.guidance) {
        fields.push("guidance");
    }
    for side in [job.width, job.height] {
        if side % 8 != 0 {
            fields.push("size");
        }
        if side < 64 || side > limits.max_side {
            fields.push("size");
        }
    }
    if u64::from(job.width) * u64::from(job.height) > limits.max_pixels {
        fields.push("size");
    }
    if job.num_images == 0 || job.num_images > limits.max_num_images {
        fields.push("num_images");
    }
    if job.seed.is_some_and(|s| s.checked_add(u64::from(job.num_images.saturating_sub(1))).is_none()) {
        fields.push("seed");
    }
    for (i, lora) in job.loras.iter().enumerate() {
        if !(-4.0..=4.0).contains(&lora.scale) {
            fields.push("lora_scale");
        }
        if job.loras[..i].iter().any(|l| l.name == lora.name) {
            fields.push("lora_name");
        }
    }
    fields
}

fn normalise(field: &str) -> &'static str {
    match field {
        "width" | "height" => "size",
        "prompt" => "prompt",
        "steps" => "steps",
        "guidance" => "guidance",
        "num_images" => "num_images",
        "seed" => "seed",
        f if f.starts_with("loras[") && f.ends_with(".scale") => "lora_scale",
        f if f.starts_with("loras[") && f.ends_with(".name") => "lora_name",
        other => panic!("unexpected field in error: {other}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn validation_reports_exactly_the_broken_fields(job in arb_job()) {
        let limits = Limits::default();
        let mut expected = expected_field_errors(&job, &limits);
        expected.sort_unstable();
        let mut got: Vec<&str> = match job.clone().validate(&limits) {
            Ok(valid) => { prop_assert_eq!(valid.spec(), &job); Vec::new() }
            Err(errors) => errors.0.iter().map(|e| normalise(&e.field)).collect(),
        };
        got.sort_unstable();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn valid_jobs_round_trip_through_json(job in arb_job()) {
        if let Ok(valid) = job.validate(&Limits::default()) {
            let json = serde_json::to_string(valid.spec()).unwrap();
            let back = fleet_core::parse_job(&json).unwrap();
            prop_assert_eq!(&back, valid.spec());
            prop_assert!(back.validate(&Limits::default()).is_ok());
        }
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(text in ".{0,200}") {
        let _ = fleet_core::parse_job(&text);
    }
}

fn round_trip<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_string(value).unwrap();
    let back: T = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, value, "{json}");
}

#[test]
fn every_type_round_trips_through_serde() {
    let mut job = JobSpec::new("a red fox, studio light");
    job.id = Some(uuid::Uuid::now_v7());
    job.idempotency_key = Some("batch-7/row-3".into());
    job.negative_prompt = Some("blurry".into());
    job.seed = Some(u64::MAX - 20);
    job.loras = vec![LoraRef::library("pixel-art", -0.5)];
    job.controlnet = Some(ControlNetSpec {
        model: "canny".into(),
        image: "s3://controls/edges.png".into(),
        scale: 0.5,
        start: 0.0,
        end: 0.8,
    });
    job.output = OutputSpec { format: ImageFormat::Webp, quality: Some(80) };
    job.priority = Priority::Bulk;
    job.tenant = Some("acme".into());
    job.metadata.insert("row".into(), serde_json::json!({"n": 3, "tags": ["a", "b"]}));
    round_trip(&job);

    let status = JobStatus {
        id: uuid::Uuid::now_v7(),
        tenant: "acme".into(),
        state: JobState::Failed,
        model: "tiny".into(),
        priority: Priority::Interactive,
        progress: Progress { step: 2, steps: 4, images_done: 1, images_total: 2 },
        attempts: 2,
        deliveries: 1,
        handbacks: 3,
        worker: Some("worker-a".into()),
        created_at: chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
        started_at: chrono::DateTime::from_timestamp_millis(1_700_000_001_000),
        finished_at: chrono::DateTime::from_timestamp_millis(1_700_000_002_000),
        result: vec![ImageResult {
            index: 0,
            key: "images/acme/x/0.png".into(),
            seed: 1,
            width: 64,
            height: 64,
            format: ImageFormat::Png,
            sha256: "00".repeat(32),
            bytes: 1234,
            url: None,
            url_expires_at: None,
        }],
        error: Some(JobError::new(ErrorCode::Oom, "out of memory at batch 4")),
        metadata: serde_json::Map::new(),
        waiting_for: None,
        request: Some(fleet_core::RequestRecord::of(&job)),
        retention_secs: Some(86_400),
        expires_at: chrono::DateTime::from_timestamp_millis(1_700_086_402_000),
    };
    round_trip(&status);
    for &code in ErrorCode::ALL {
        round_trip(&code);
    }
    for state in [JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
        round_trip(&state);
    }
    round_trip(&FleetConfig::default());
}

fn docs_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs").join(name)
}

/// The committed schemas must be what the code generates. To update them run
/// `FLEET_UPDATE_SCHEMA=1 cargo test -p fleet-core --test contract committed_schemas`.
#[test]
fn committed_schemas_match_the_code() {
    for (file, generated) in [
        ("job.schema.json", fleet_core::schema::job_schema_json()),
        ("status.schema.json", fleet_core::schema::status_schema_json()),
    ] {
        let path = docs_path(file);
        if std::env::var_os("FLEET_UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(committed == generated, "docs/{file} is out of date; regenerate with FLEET_UPDATE_SCHEMA=1");
    }
}

#[test]
fn schema_describes_the_contract() {
    let schema: serde_json::Value = serde_json::from_str(&fleet_core::schema::job_schema_json()).unwrap();
    assert_eq!(schema["required"], serde_json::json!(["prompt"]));
    assert_eq!(schema["additionalProperties"], serde_json::json!(false));
    let props = schema["properties"].as_object().unwrap();
    for field in [
        "v",
        "id",
        "idempotency_key",
        "prompt",
        "model",
        "steps",
        "loras",
        "controlnet",
        "output",
        "priority",
        "metadata",
    ] {
        assert!(props.contains_key(field), "schema lacks {field}");
        assert!(props[field]["description"].is_string(), "{field} is undocumented in the schema");
    }
}

#[test]
fn example_jobs_file_is_valid() {
    let text =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/jobs.jsonl"))
            .unwrap();
    let mut n = 0;
    for line in text.lines() {
        if let Some(parsed) = fleet_core::parse::parse_jsonl_line(line) {
            parsed.unwrap().validate(&Limits::default()).unwrap();
            n += 1;
        }
    }
    assert!(n >= 3);
}
