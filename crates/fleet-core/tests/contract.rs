//! Contract tests: properties of validation, serde round trips, the committed schema,
//! and configuration layering.

use std::collections::HashMap;

use fleet_core::config::{ConfigError, ConfigSources};
use fleet_core::status::{ImageResult, JobError, JobState, JobStatus, Progress};
use fleet_core::{ControlNetSpec, ErrorCode, FleetConfig, ImageFormat, JobSpec, Limits, LoraRef, OutputSpec, Priority};
use proptest::prelude::*;

#[path = "contract/hostile.rs"]
mod hostile;

fn arb_lora() -> impl Strategy<Value = LoraRef> {
    ("[a-z][a-z0-9_-]{0,12}", -6.0f32..6.0).prop_map(|(name, scale)| LoraRef { name, scale })
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
    job.loras = vec![LoraRef { name: "pixel-art".into(), scale: -0.5 }];
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
        }],
        error: Some(JobError::new(ErrorCode::Oom, "out of memory at batch 4")),
        metadata: serde_json::Map::new(),
        request: Some(fleet_core::RequestRecord::of(&job)),
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

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn config_layers_defaults_file_env_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        r#"
[redis]
url = "redis://from-file:6379/0"
key_prefix = "file-prefix"

[rabbitmq]
delivery_limit = 5

[[http.api_keys]]
key = "file-key-123"
tenant = "alice"
"#,
    )
    .unwrap();
    let sources = ConfigSources {
        file: Some(file),
        env: env(&[
            ("FLEET__REDIS__KEY_PREFIX", "env-prefix"),
            ("FLEET__WORKER__MAX_BATCH_IMAGES", "4"),
            ("FLEET__WORKER__PNG_COMPRESSION", "balanced"),
            ("FLEET__S3__PATH_STYLE", "false"),
            ("FLEET_API_KEYS", "env-key-456=bob:admin"),
            ("UNRELATED", "x"),
        ]),
        overrides: vec!["redis.url=redis://from-flag:6379/1".into()],
    };
    let cfg = FleetConfig::load(&sources).unwrap();
    assert_eq!(cfg.redis.url, "redis://from-flag:6379/1", "flags beat file");
    assert_eq!(cfg.redis.key_prefix, "env-prefix", "env beats file");
    assert_eq!(cfg.rabbitmq.delivery_limit, 5, "file beats defaults");
    assert_eq!(cfg.worker.max_batch_images, 4);
    assert_eq!(cfg.worker.png_compression, fleet_core::config::PngCompression::Balanced);
    assert_eq!(FleetConfig::default().worker.png_compression, fleet_core::config::PngCompression::Fast);
    assert!(!cfg.s3.path_style);
    assert_eq!(cfg.rabbitmq.exchange, "fleet.jobs", "defaults fill the rest");
    let tenants: Vec<_> = cfg.http.api_keys.iter().map(|k| (k.tenant.as_str(), k.admin)).collect();
    assert_eq!(tenants, [("alice", false), ("bob", true)]);
}

#[test]
fn config_errors_name_the_key() {
    let sources = ConfigSources {
        env: env(&[("FLEET__REDIS__URL", "http://wrong"), ("FLEET__HTTP__LISTEN", "nowhere")]),
        ..ConfigSources::default()
    };
    let message = FleetConfig::load(&sources).unwrap_err().to_string();
    assert!(message.contains("redis.url"), "{message}");
    assert!(message.contains("http.listen"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(&file, "[redis]\nurll = \"redis://x\"\n").unwrap();
    let err = FleetConfig::from_file(&file).unwrap_err();
    assert!(matches!(err, ConfigError::Load(_)));
    assert!(err.to_string().contains("urll"), "{err}");

    std::fs::write(&file, "[worker]\npng_compression = \"turbo\"\n").unwrap();
    let err = FleetConfig::from_file(&file).unwrap_err().to_string();
    assert!(err.contains("turbo") && err.contains("png_compression"), "{err}");

    let missing = FleetConfig::from_file(std::path::Path::new("/nonexistent/fleet.toml")).unwrap_err();
    assert!(missing.to_string().contains("fleet.toml"), "{missing}");
}

#[test]
fn example_config_file_loads_and_masks_secrets() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fleet.example.toml");
    let cfg = FleetConfig::from_file(&path).unwrap();
    let masked = cfg.masked();
    assert!(!masked.rabbitmq.url.contains("guest@"), "{}", masked.rabbitmq.url);
    for key in &masked.http.api_keys {
        assert!(key.key.ends_with("***"));
    }
}

#[test]
fn a_models_table_replaces_the_built_in_models() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(&file, "[models.sdxl-lightning-2step]\nsource = \"ByteDance/SDXL-Lightning\"\n").unwrap();
    let cfg = FleetConfig::from_file(&file).unwrap();
    assert_eq!(cfg.models.keys().map(String::as_str).collect::<Vec<_>>(), ["sdxl-lightning-2step"]);
    let from_env = FleetConfig::load(&ConfigSources {
        env: env(&[("FLEET__MODELS__ONLY__SOURCE", "tiny")]),
        ..ConfigSources::default()
    })
    .unwrap();
    assert_eq!(from_env.models.keys().map(String::as_str).collect::<Vec<_>>(), ["only"]);
    let builtin = FleetConfig::load(&ConfigSources::default()).unwrap();
    assert_eq!(builtin.models, FleetConfig::default().models, "no [models]: the built-in ones");
}
