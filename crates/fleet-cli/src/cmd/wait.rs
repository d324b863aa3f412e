//! `fleet wait` and `fleet submit --wait`: follow jobs (all at once) to their end, with progress
//! bars, until a `--timeout`.

use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt as _;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::Value;
use tokio::time::Instant;

use crate::cli::{Cli, WaitArgs};
use crate::client::{ApiClient, is_final};
use crate::cmd::jobs::{print_json, summary};

/// Events streams open at once; further jobs are followed as earlier ones end.
const MAX_STREAMS: usize = 32;
/// More jobs than this share one bar (jobs done / total) instead of a bar each.
const BARS_PER_JOB_UP_TO: usize = 8;

/// Exit code when `--timeout` passes before every job has ended.
pub const EXIT_TIMED_OUT: u8 = 3;

pub fn run(cli: &Cli, args: &WaitArgs) -> anyhow::Result<ExitCode> {
    let client = cli.client(&args.server)?;
    let timeout = args.timeout.map(Duration::from_secs);
    tokio::runtime::Runtime::new()?.block_on(wait_all(&client, &args.ids, args.server.json, timeout))
}

/// How following one job ended.
enum Outcome {
    /// It reached a final state: its status.
    Ended(Value),
    /// The deadline came first: its status then.
    TimedOut(Value),
    Failed(anyhow::Error),
}

/// Follows every job; exit 0 if all succeeded, 1 if one failed or was cancelled, 2 if one could
/// not be followed, [`EXIT_TIMED_OUT`] if the timeout passed first.
pub async fn wait_all(
    client: &ApiClient,
    ids: &[String],
    json: bool,
    timeout: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let bars = MultiProgress::new();
    let total = (ids.len() > BARS_PER_JOB_UP_TO).then(|| {
        let bar = bars.add(ProgressBar::new(ids.len() as u64));
        bar.set_style(style("jobs [{bar:30}] {pos}/{len} done"));
        bar
    });
    let one_bar_each = total.is_none();
    let follows = ids.iter().map(|id| {
        let bar = one_bar_each.then(|| {
            let bar = bars.add(ProgressBar::new(1));
            bar.set_style(style("{prefix} [{bar:30}] {pos}/{len} {msg}"));
            bar.set_prefix(id.chars().take(8).collect::<String>());
            bar
        });
        async move { (id, follow(client, id, bar, deadline).await) }
    });
    let mut outcomes = futures::stream::iter(follows).buffer_unordered(MAX_STREAMS);
    let (mut failed, mut broken, mut late) = (false, false, false);
    while let Some((id, outcome)) = outcomes.next().await {
        if let Some(bar) = &total {
            bar.inc(1);
        }
        match outcome {
            Outcome::Ended(status) => {
                failed |= status["state"] != "succeeded";
                report(&bars, &status, json)?;
            }
            Outcome::TimedOut(status) => {
                late = true;
                let secs = timeout.map(|t| t.as_secs()).unwrap_or_default();
                let mut line = format!("{id}: still {} after {secs} s", status["state"].as_str().unwrap_or("unknown"));
                if let Some(hint) = status["waiting_for"].as_str() {
                    line.push_str(&format!(": {hint}"));
                }
                bars.suspend(|| eprintln!("{line}"));
            }
            Outcome::Failed(e) => {
                broken = true;
                bars.suspend(|| eprintln!("error: {}", crate::output::error_text(&e)));
            }
        }
    }
    if let Some(bar) = total {
        bar.finish();
    }
    Ok(ExitCode::from(if broken {
        2
    } else if late {
        EXIT_TIMED_OUT
    } else if failed {
        1
    } else {
        0
    }))
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
}

fn report(bars: &MultiProgress, status: &Value, json: bool) -> anyhow::Result<()> {
    bars.suspend(|| {
        if json {
            print_json(status)
        } else {
            outln!("{}", summary(status));
            Ok(())
        }
    })
}

/// One job's events until its final state or the deadline.
async fn follow(client: &ApiClient, id: &str, bar: Option<ProgressBar>, deadline: Option<Instant>) -> Outcome {
    let mut last = Value::Null;
    let events = client.follow(id, |state, event| {
        let status = &event["status"];
        if let Some(bar) = &bar {
            let p = &status["progress"];
            bar.set_length(p["steps"].as_u64().unwrap_or(1).max(1));
            bar.set_position(p["step"].as_u64().unwrap_or(0));
            bar.set_message(state.to_owned());
        }
        last = status.clone();
    });
    let followed = match deadline {
        Some(at) => tokio::time::timeout_at(at, events).await,
        None => Ok(events.await),
    };
    if let Some(bar) = &bar {
        bar.finish();
    }
    let path = format!("/v1/jobs/{id}");
    let current = || client.call(Method::GET, &path, None);
    match followed {
        Err(_elapsed) => match current().await {
            Ok(status) if status["state"].as_str().is_some_and(is_final) => Outcome::Ended(status),
            Ok(status) => Outcome::TimedOut(status),
            Err(e) => Outcome::Failed(e),
        },
        Ok(Err(e)) => Outcome::Failed(e),
        Ok(Ok(())) if last.is_null() => match current().await {
            Ok(status) => Outcome::Ended(status),
            Err(e) => Outcome::Failed(e),
        },
        Ok(Ok(())) => Outcome::Ended(last),
    }
}
