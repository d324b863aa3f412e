//! `fleet status | cancel | delete | jobs | queues | workers | download`: reading and steering jobs through the API.

use std::process::ExitCode;

use reqwest::Method;
use serde_json::Value;

use crate::cli::{Cli, DeleteArgs, DownloadArgs, JobArgs, JobsArgs, ServerArgs};

fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(f: F) -> anyhow::Result<ExitCode> {
    tokio::runtime::Runtime::new()?.block_on(f)
}

pub fn print_json(value: &Value) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn summary(job: &Value) -> String {
    let p = &job["progress"];
    let mut line = format!(
        "{}  {:<9}  {}  step {}/{}  images {}/{}",
        job["id"].as_str().unwrap_or("?"),
        job["state"].as_str().unwrap_or("?"),
        job["model"].as_str().unwrap_or("?"),
        p["step"],
        p["steps"],
        p["images_done"],
        p["images_total"],
    );
    if let Some(code) = job["error"]["code"].as_str() {
        line.push_str(&format!("  error {code}: {}", job["error"]["message"].as_str().unwrap_or("")));
    }
    line
}

/// What the job asked for (its record's `request`) and when it ended, a line each.
fn request_lines(job: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    if let Ok(r) = serde_json::from_value::<fleet_core::RequestRecord>(job["request"].clone()) {
        lines.push(format!("  prompt: {}", r.prompt));
        if let Some(negative) = &r.negative_prompt {
            lines.push(format!("  negative prompt: {negative}"));
        }
        lines.push(format!(
            "  {}×{}, {} steps, guidance {}, seed {}, {} image(s), {}",
            r.width,
            r.height,
            r.steps,
            r.guidance,
            r.seed,
            r.num_images,
            r.output.format.extension()
        ));
        for lora in &r.loras {
            let digest = lora.sha256.as_deref().map(|d| format!(" (sha256 {d})")).unwrap_or_default();
            lines.push(format!("  lora: {}{digest} × {}", lora.label(), lora.scale));
        }
        if let Some(cn) = &r.controlnet {
            let hash = cn.image_sha256.as_deref().map(|h| format!(" (sha256 {h})")).unwrap_or_default();
            lines.push(format!(
                "  controlnet: {} × {} ({}–{}), image {}{hash}",
                cn.model, cn.scale, cn.start, cn.end, cn.image
            ));
        }
        let hash = |h: &Option<String>| h.as_deref().map(|h| format!(" (sha256 {h})")).unwrap_or_default();
        if let Some(init) = &r.init_image {
            let strength = r.strength.map(|s| format!(", strength {s}")).unwrap_or_default();
            lines.push(format!("  init image: {}{}{strength}", init.image, hash(&init.image_sha256)));
        }
        if let Some(mask) = &r.mask_image {
            lines.push(format!("  mask image: {}{}", mask.image, hash(&mask.image_sha256)));
        }
    }
    if let Some(finished) = job["finished_at"].as_str() {
        lines.push(format!("  {}: {finished}", job["state"].as_str().unwrap_or("finished")));
    }
    if let Some(expires) = job["expires_at"].as_str() {
        lines.push(format!("  images and record removed after: {expires}"));
    } else if let Some(secs) = job["retention_secs"].as_u64() {
        lines.push(format!("  kept {secs} s after it finishes"));
    }
    lines
}

pub fn status(cli: &Cli, args: &JobArgs) -> anyhow::Result<ExitCode> {
    let client = cli.client(&args.server)?;
    block_on(async {
        let job = client.call(Method::GET, &format!("/v1/jobs/{}", args.id), None).await?;
        if args.server.json {
            print_json(&job)?;
        } else {
            outln!("{}", summary(&job));
            for line in request_lines(&job) {
                outln!("{line}");
            }
            for image in job["result"].as_array().into_iter().flatten() {
                outln!("  image {}: {} (seed {})", image["index"], image["key"].as_str().unwrap_or("?"), image["seed"]);
                if let (Some(url), Some(until)) = (image["url"].as_str(), image["url_expires_at"].as_str()) {
                    outln!("    {url}\n    (this URL works until {until})");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn cancel(cli: &Cli, args: &JobArgs) -> anyhow::Result<ExitCode> {
    let client = cli.client(&args.server)?;
    block_on(async {
        let job = client.call(Method::POST, &format!("/v1/jobs/{}/cancel", args.id), None).await?;
        if args.server.json {
            print_json(&job)?
        } else {
            outln!("{}", summary(&job))
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `fleet delete ID...`: each job deleted in turn; one that cannot be (not found, a service
/// down) is reported and the rest still go.
pub fn delete(cli: &Cli, args: &DeleteArgs) -> anyhow::Result<ExitCode> {
    let client = cli.client(&args.server)?;
    block_on(async {
        let mut failed = false;
        for id in &args.ids {
            match client.call(Method::DELETE, &format!("/v1/jobs/{id}"), None).await {
                // 202: the job was not finished; it is cancelled and removed once final.
                Ok(job) if job.is_object() => {
                    if args.server.json {
                        print_json(&job)?;
                    } else {
                        outln!("{}", summary(&job));
                        outln!("{id}  cancelled; its images and record are removed once it is final");
                    }
                }
                // 204: removed.
                Ok(_) => {
                    if args.server.json {
                        print_json(&serde_json::json!({"id": id, "deleted": true}))?;
                    } else {
                        outln!("{id}  deleted");
                    }
                }
                Err(e) => {
                    failed = true;
                    eprintln!("error: {id}: {}", crate::output::error_text(&e));
                }
            }
        }
        Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
    })
}

pub fn list(cli: &Cli, args: &JobsArgs) -> anyhow::Result<ExitCode> {
    let client = cli.client(&args.server)?;
    let mut query = format!("/v1/jobs?limit={}", args.limit);
    if let Some(state) = &args.state {
        query.push_str(&format!("&state={state}"));
    }
    if let Some(cursor) = &args.cursor {
        query.push_str(&format!("&cursor={cursor}"));
    }
    block_on(async {
        let page = client.call(Method::GET, &query, None).await?;
        if args.server.json {
            print_json(&page)?;
        } else {
            for job in page["jobs"].as_array().into_iter().flatten() {
                outln!("{}", summary(job));
            }
            if let Some(next) = page["next_cursor"].as_str() {
                outln!("more: --cursor {next}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn queues(cli: &Cli, args: &ServerArgs) -> anyhow::Result<ExitCode> {
    let client = cli.client(args)?;
    block_on(async {
        let answer = client.call(Method::GET, "/v1/queues", None).await?;
        if args.json {
            print_json(&answer)?;
        } else {
            outln!("{:<50} {:>10} {:>10}", "queue", "ready", "consumers");
            for q in answer["queues"].as_array().into_iter().flatten() {
                outln!("{:<50} {:>10} {:>10}", q["name"].as_str().unwrap_or("?"), q["messages"], q["consumers"]);
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn workers(cli: &Cli, args: &ServerArgs) -> anyhow::Result<ExitCode> {
    let client = cli.client(args)?;
    block_on(async {
        let answer = client.call(Method::GET, "/v1/workers", None).await?;
        if args.json {
            print_json(&answer)?;
        } else {
            for w in answer["workers"].as_array().into_iter().flatten() {
                outln!(
                    "{}  {}  {}  last seen {}",
                    w["id"].as_str().unwrap_or("?"),
                    w["device"].as_str().unwrap_or("?"),
                    w["models"],
                    w["last_seen"].as_str().unwrap_or("?")
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn download(cli: &Cli, args: &DownloadArgs) -> anyhow::Result<ExitCode> {
    let client = cli.client(&args.server)?;
    block_on(async {
        let job = client.call(Method::GET, &format!("/v1/jobs/{}", args.id), None).await?;
        let results = job["result"].as_array().cloned().unwrap_or_default();
        if results.is_empty() {
            anyhow::bail!("job {} has no images (state {})", args.id, job["state"].as_str().unwrap_or("?"));
        }
        std::fs::create_dir_all(&args.out).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", args.out.display()))?;
        for r in results {
            let n = r["index"].as_u64().unwrap_or(0);
            let ext = r["key"].as_str().and_then(|k| k.rsplit('.').next()).unwrap_or("png");
            let bytes = client.bytes(&format!("/v1/jobs/{}/images/{n}", args.id)).await?;
            let path = args.out.join(format!("{}_{n}.{ext}", args.id));
            std::fs::write(&path, &bytes).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            outln!("{}", path.display());
        }
        Ok(ExitCode::SUCCESS)
    })
}
