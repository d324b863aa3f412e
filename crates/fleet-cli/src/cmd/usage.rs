//! `fleet usage`: the usage report of `GET /v1/usage` as a table (or JSON with `--json`).

use std::process::ExitCode;

use reqwest::{Method, Url};
use serde_json::Value;

use crate::cli::{Cli, UsageArgs};
use crate::cmd::jobs::print_json;

pub fn run(cli: &Cli, args: &UsageArgs) -> anyhow::Result<ExitCode> {
    let client = cli.client(&args.server)?;
    let path = query_path(args)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let report = client.call(Method::GET, &path, None).await?;
        if args.server.json {
            print_json(&report)?;
        } else {
            for line in table(&report) {
                outln!("{line}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `/v1/usage?…` with the given parameters, encoded.
fn query_path(args: &UsageArgs) -> anyhow::Result<String> {
    let mut url = Url::parse("http://dispatcher/v1/usage")?;
    {
        let mut pairs = url.query_pairs_mut();
        let params = [("from", &args.from), ("to", &args.to), ("group_by", &args.group_by), ("tenant", &args.tenant)];
        for (name, value) in params {
            if let Some(value) = value {
                pairs.append_pair(name, value);
            }
        }
    }
    Ok(match url.query() {
        Some(query) if !query.is_empty() => format!("{}?{query}", url.path()),
        _ => url.path().to_owned(),
    })
}

/// The report's rows, one line each under a header; columns the grouping left out show `-`.
fn table(report: &Value) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<20} {:<16} {:<16} {:>8} {:>8} {:>16} {:>14}",
        "period", "tenant", "model", "jobs", "images", "megapixel-steps", "worker-secs"
    )];
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    for row in report["rows"].as_array().into_iter().flatten() {
        lines.push(format!(
            "{:<20} {:<16} {:<16} {:>8} {:>8} {:>16.3} {:>14.1}",
            text(&row["period_start"]),
            text(&row["tenant"]),
            text(&row["model"]),
            row["jobs"],
            row["images"],
            row["megapixel_steps"].as_f64().unwrap_or(0.0),
            row["worker_seconds"].as_f64().unwrap_or(0.0),
        ));
    }
    if lines.len() == 1 {
        lines.push("no usage in this range".to_owned());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ServerArgs;

    #[test]
    fn parameters_are_encoded_and_rows_tabulated() {
        let args = UsageArgs {
            from: Some("2026-12-01T00:00:00+01:00".into()),
            to: None,
            group_by: Some("hour,tenant".into()),
            tenant: None,
            server: ServerArgs { server: None, api_key: None, json: false },
        };
        assert_eq!(
            query_path(&args).unwrap(),
            "/v1/usage?from=2026-12-01T00%3A00%3A00%2B01%3A00&group_by=hour%2Ctenant"
        );
        let report = serde_json::json!({"rows": [
            {"period_start": "2026-12-07T00:00:00Z", "model": "tiny", "jobs": 2, "images": 3,
             "megapixel_steps": 1.5, "worker_seconds": 2.25}
        ]});
        let lines = table(&report);
        assert_eq!(lines.len(), 2);
        assert!(lines[1].starts_with("2026-12-07T00:00:00Z"), "{}", lines[1]);
        assert!(lines[1].contains(" - ") && lines[1].contains("tiny") && lines[1].contains("1.500"), "{}", lines[1]);
        assert_eq!(table(&serde_json::json!({"rows": []}))[1], "no usage in this range");
    }
}
