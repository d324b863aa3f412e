//! `fleet submit`: jobs from flags or a JSONL file, optionally followed to the end.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use fleet_core::names::{check_library_name, parse_name_scale};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::cli::{Cli, GenerationArgs, SubmitArgs};

/// The job fields the generation flags set, as JSON (only those given).
pub fn generation_fields(g: &GenerationArgs) -> anyhow::Result<Map<String, Value>> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    };
    put("negative_prompt", g.negative_prompt.clone().map(Value::from));
    put("model", g.model.clone().map(Value::from));
    put("steps", g.steps.map(Value::from));
    put("guidance", g.guidance.map(Value::from));
    put("width", g.width.map(Value::from));
    put("height", g.height.map(Value::from));
    put("seed", g.seed.map(Value::from));
    put("num_images", g.num_images.map(Value::from));
    if !g.loras.is_empty() {
        let loras = g
            .loras
            .iter()
            .map(|spec| {
                let (name, scale) = parse_name_scale(spec).map_err(|e| anyhow::anyhow!("--lora {e}"))?;
                check_library_name(name).map_err(|e| anyhow::anyhow!("--lora {spec}: the name {e}"))?;
                Ok(json!({"name": name, "scale": scale.unwrap_or(1.0) as f32}))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        m.insert("loras".into(), Value::Array(loras));
    }
    Ok(m)
}

/// An image flag's value as a job field: an `s3://` URI as it is, a local file inline (base64).
fn image_field(flag: &str, image: &str) -> anyhow::Result<String> {
    if image.starts_with("s3://") {
        return Ok(image.to_owned());
    }
    let bytes = std::fs::read(image).with_context(|| format!("{flag}: cannot read {image}"))?;
    Ok(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes))
}

/// The job's `init_image`, `strength` and `mask_image` from `--init-image` and its companions.
fn init_fields(args: &SubmitArgs, fields: &mut Map<String, Value>) -> anyhow::Result<()> {
    let Some(init) = &args.init_image else { return Ok(()) };
    fields.insert("init_image".into(), Value::from(image_field("--init-image", init)?));
    if let Some(strength) = args.strength {
        fields.insert("strength".into(), Value::from(strength));
    }
    if let Some(mask) = &args.mask_image {
        fields.insert("mask_image".into(), Value::from(image_field("--mask-image", mask)?));
    }
    Ok(())
}

/// The job's `controlnet` from `--controlnet` and its companions; a local control image goes inline (base64).
fn control_fields(args: &SubmitArgs) -> anyhow::Result<Option<Value>> {
    let (Some(model), Some(image)) = (&args.controlnet, &args.control_image) else { return Ok(None) };
    check_library_name(model).map_err(|e| anyhow::anyhow!("--controlnet {model}: the name {e}"))?;
    let image = image_field("--control-image", image)?;
    let mut spec = Map::new();
    spec.insert("model".into(), Value::from(model.as_str()));
    spec.insert("image".into(), Value::from(image));
    for (key, value) in [("scale", args.control_scale), ("start", args.control_start), ("end", args.control_end)] {
        if let Some(v) = value {
            spec.insert(key.into(), Value::from(v));
        }
    }
    Ok(Some(Value::Object(spec)))
}

/// The jobs to submit; `default_model` (`client.model`) fills `model` where neither a flag nor a line gives one.
fn jobs_from(args: &SubmitArgs, default_model: &str) -> anyhow::Result<Vec<Value>> {
    let mut defaults = generation_fields(&args.generation)?;
    if !default_model.is_empty() {
        defaults.entry("model").or_insert_with(|| Value::from(default_model));
    }
    if let Some(p) = &args.priority {
        defaults.insert("priority".into(), Value::from(p.as_str()));
    }
    if let Some(f) = &args.format {
        defaults.insert("output".into(), json!({"format": f}));
    }
    if let Some(secs) = args.retention {
        defaults.insert("retention".into(), Value::from(secs));
    }
    if let Some(controlnet) = control_fields(args)? {
        defaults.insert("controlnet".into(), controlnet);
    }
    init_fields(args, &mut defaults)?;
    let mut jobs = Vec::new();
    if let Some(file) = &args.file {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut job: Map<String, Value> = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a JSON object", file.display(), i + 1))?;
            for (k, v) in &defaults {
                job.entry(k.clone()).or_insert_with(|| v.clone());
            }
            jobs.push(Value::Object(job));
        }
    }
    for prompt in &args.generation.prompts {
        let mut job = defaults.clone();
        job.insert("prompt".into(), Value::from(prompt.as_str()));
        jobs.push(Value::Object(job));
    }
    if let Some(key) = &args.idempotency_key {
        if jobs.len() != 1 {
            bail!("--idempotency-key applies to exactly one job, not {}", jobs.len());
        }
        if let Some(job) = jobs[0].as_object_mut() {
            job.insert("idempotency_key".into(), Value::from(key.as_str()));
        }
    }
    if jobs.is_empty() {
        bail!("nothing to submit: give --prompt TEXT or --file jobs.jsonl");
    }
    Ok(jobs)
}

pub fn run(cli: &Cli, args: &SubmitArgs) -> anyhow::Result<ExitCode> {
    let config = cli.load_config()?;
    let (server, key) = crate::cli::server_and_key(&args.server, &config);
    let client = crate::client::ApiClient::new(&server, &key)?;
    let jobs = jobs_from(args, &config.client.model)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let answer = client.call(Method::POST, "/v1/jobs", Some(&Value::Array(jobs))).await?;
        let items = answer["jobs"].as_array().cloned().unwrap_or_default();
        let mut ids = Vec::new();
        let mut failed = 0;
        for item in &items {
            if let Some(id) = item["status"]["id"].as_str() {
                ids.push(id.to_owned());
                if !args.server.json {
                    outln!("{id}  {}", item["status"]["state"].as_str().unwrap_or("?"));
                }
            } else {
                failed += 1;
                eprintln!("refused: {}", crate::client::describe_error(item));
            }
        }
        if args.server.json {
            outln!("{}", serde_json::to_string_pretty(&answer)?);
        }
        if args.wait && !ids.is_empty() {
            let timeout = args.timeout.map(std::time::Duration::from_secs);
            let waited = crate::cmd::wait::wait_all(&client, &ids, args.server.json, timeout).await?;
            if failed == 0 || waited != ExitCode::SUCCESS {
                return Ok(waited);
            }
        }
        Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
    })
}
