//! `fleet submit`: jobs from flags or a JSONL file, optionally followed to the end.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use fleet_core::names::{check_library_name, parse_name_scale};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::cli::{Cli, GenerationArgs, SubmitArgs};
use crate::cmd::jobs::wait_for;

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

fn jobs_from(args: &SubmitArgs) -> anyhow::Result<Vec<Value>> {
    let mut defaults = generation_fields(&args.generation)?;
    if let Some(p) = &args.priority {
        defaults.insert("priority".into(), Value::from(p.as_str()));
    }
    if let Some(f) = &args.format {
        defaults.insert("output".into(), json!({"format": f}));
    }
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
    let client = cli.client(&args.server)?;
    let jobs = jobs_from(args)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let answer = client.call(Method::POST, "/v1/jobs", Some(&Value::Array(jobs))).await?;
        let items = answer["jobs"].as_array().cloned().unwrap_or_default();
        let mut ids = Vec::new();
        let mut failed = 0;
        for item in &items {
            if let Some(id) = item["status"]["id"].as_str() {
                ids.push(id.to_owned());
                if !args.server.json {
                    println!("{id}  {}", item["status"]["state"].as_str().unwrap_or("?"));
                }
            } else {
                failed += 1;
                eprintln!("refused: {}", crate::client::describe_error(item));
            }
        }
        if args.server.json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
        }
        let mut ok = failed == 0;
        if args.wait {
            for id in &ids {
                ok &= wait_for(&client, id, args.server.json).await?;
            }
        }
        Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
    })
}
