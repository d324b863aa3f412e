//! `fleet bulk run | status | resume | retry-failed | cancel`: thin wiring around `fleet_bulk`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use fleet_bulk::api::ApiClient;
use fleet_bulk::{BulkError, InputFormat, Layout, RunConfig, RunFile, RunState, Session, Snapshot};
use fleet_core::FleetConfig;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::cli::{BulkArgs, BulkCommand, BulkRunArgs, BulkRunRef, Cli, ServerArgs, server_and_key};
use crate::cmd::submit::generation_fields;

pub fn run(cli: &Cli, args: &BulkArgs) -> anyhow::Result<ExitCode> {
    let config = cli.load_config()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match &args.command {
            BulkCommand::Run(a) => start(config, a).await,
            BulkCommand::Status(a) => status(&config, &a.run, a.watch).await,
            BulkCommand::Resume(a) => {
                let session = session(config, &a.server, true, true);
                let resumed = fleet_bulk::resume(&a.name, a.out.as_deref(), &session);
                let Some(result) = until_interrupted(resumed, &a.name, a.out.as_deref()).await else {
                    return Ok(ExitCode::from(INTERRUPTED));
                };
                finish(result, a.server.json)
            }
            BulkCommand::RetryFailed(a) => {
                let session = session(config, &a.server, true, true);
                let retried = fleet_bulk::retry_failed(&a.name, a.out.as_deref(), &session);
                let Some(result) = until_interrupted(retried, &a.name, a.out.as_deref()).await else {
                    return Ok(ExitCode::from(INTERRUPTED));
                };
                let (run, reopened) = result?;
                eprintln!("{reopened} shard(s) with failed samples rewritten");
                finish(Ok(run), a.server.json)
            }
            BulkCommand::Cancel(a) => {
                let session = session(config, &a.server, true, false);
                let cancelled = fleet_bulk::cancel(&a.name, a.out.as_deref(), &session).await?;
                outln!("run `{}` cancelled; {cancelled} unfinished job(s) cancelled", a.name);
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// The session of a command; the API client only if a key is configured (local runs need none).
fn session(config: FleetConfig, server: &ServerArgs, want_api: bool, bar: bool) -> Session {
    let (base, key) = server_and_key(server, &config);
    let api = if want_api { ApiClient::new(&base, &key).ok() } else { None };
    let on_progress = (bar && !server.json).then(progress_bar);
    Session { config, api, on_progress }
}

fn progress_bar() -> fleet_bulk::runner::ProgressHook {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    Arc::new(move |s: &Snapshot| {
        bar.set_length(s.total);
        bar.set_position(s.succeeded + s.failed + s.duplicates);
        bar.set_message(summary(s));
    })
}

async fn start(config: FleetConfig, args: &BulkRunArgs) -> anyhow::Result<ExitCode> {
    let g = &args.generation;
    if !g.prompts.is_empty() || g.num_images.is_some() {
        bail!("--prompt and --num-images do not apply to bulk runs (prompts come from INPUT; use --seeds-per-prompt)");
    }
    let mut defaults = generation_fields(g)?;
    defaults.remove("seed");
    if args.image_format.is_some() || args.quality.is_some() {
        let mut output = serde_json::Map::new();
        if let Some(format) = &args.image_format {
            output.insert("format".into(), Value::from(format.as_str()));
        }
        if let Some(quality) = args.quality {
            output.insert("quality".into(), Value::from(quality));
        }
        defaults.insert("output".into(), Value::Object(output));
    }
    let (given, input_format) = match (&args.template, &args.input) {
        (Some(template), _) => (template, InputFormat::Template),
        (None, Some(input)) => (input, InputFormat::from_path(input)),
        (None, None) => bail!("give INPUT or --template FILE"),
    };
    let input = std::path::absolute(given).with_context(|| format!("input {}", given.display()))?;
    let input_format = match &args.input_format {
        Some(name) => InputFormat::parse(name)?,
        None => input_format,
    };
    let run = RunConfig {
        name: args.name.clone(),
        input,
        input_format,
        out: args.out.clone().unwrap_or_else(|| args.name.clone()),
        layout: Layout::parse(&args.format)?,
        shard_size: args.shard_size,
        seeds_per_prompt: args.seeds_per_prompt,
        seed: g.seed.unwrap_or(0),
        defaults,
        max_in_flight: args.max_in_flight,
        skip_invalid: args.skip_invalid,
        local: args.local,
        samples: args.samples,
        dedup_hamming: args.dedup_hamming,
        keep_jobs: args.keep_jobs,
    };
    if args.dry_run {
        return dry_run(&run, &config, given);
    }
    let session = session(config, &args.server, !args.local, true);
    // A local run has no Redis record: its resume finds it by its output directory.
    let out = args.local.then(|| run.out.clone());
    let shown = given.clone();
    let started = fleet_bulk::start_with(run, &session, move |scan| show_scan(&shown, scan));
    let Some(result) = until_interrupted(started, &args.name, out.as_deref()).await else {
        return Ok(ExitCode::from(INTERRUPTED));
    };
    match result {
        Err(BulkError::InvalidRows { rows, total }) => {
            report_invalid(given, &rows, total, "the run did not start");
            Ok(ExitCode::from(1))
        }
        other => finish(other, args.server.json),
    }
}

fn report_invalid(input: &Path, rows: &[fleet_bulk::RowError], total: u64, outcome: &str) {
    for row in rows {
        eprintln!("{}:{}: {}: {}", input.display(), row.line, row.field, row.message);
    }
    eprintln!(
        "{}: {total} invalid row(s); {outcome} (fix them, or pass --skip-invalid to record them as failed samples)",
        input.display()
    );
}

/// `--dry-run`: the scan a run would make, printed; nothing is written or submitted.
fn dry_run(run: &RunConfig, config: &FleetConfig, input: &Path) -> anyhow::Result<ExitCode> {
    let scan = fleet_bulk::check_input(run, config)?;
    show_scan(input, &scan);
    if scan.summary.invalid_rows > 0 {
        report_invalid(input, &scan.errors, scan.summary.invalid_rows, "a run would not start");
        return Ok(ExitCode::from(1));
    }
    outln!("dry run: nothing submitted");
    Ok(ExitCode::SUCCESS)
}

/// What a run is about to make: counts, exact duplicate prompts, the first prompts.
fn show_scan(input: &Path, scan: &fleet_bulk::scan::Scan) {
    let s = &scan.summary;
    outln!(
        "{}: {} row(s), {} sample(s) in {} shard(s), {} exact duplicate prompt(s)",
        input.display(),
        s.rows,
        s.samples,
        s.shards,
        scan.duplicate_prompts
    );
    for (i, prompt) in scan.preview.iter().enumerate() {
        outln!("  {}: {prompt}", i + 1);
    }
}

/// Exit status after Ctrl-C (128 + SIGINT), as shells report a command stopped by it.
const INTERRUPTED: u8 = 130;

/// Drives a run until it ends, or until Ctrl-C: then the run stops where it is (finished shards
/// stay, jobs in flight go on in the fleet and a resume collects them), and the command that goes
/// on with it is printed. `None` when interrupted.
async fn until_interrupted<T>(run: impl Future<Output = T>, name: &str, out: Option<&str>) -> Option<T> {
    tokio::select! {
        result = run => Some(result),
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\n{}", resume_hint(name, out));
            None
        }
    }
}

/// What Ctrl-C prints: the exact command that resumes the run.
fn resume_hint(name: &str, out: Option<&str>) -> String {
    let mut command = format!("fleet bulk resume {}", shell_word(name));
    if let Some(out) = out {
        command.push_str(&format!(" --out {}", shell_word(out)));
    }
    format!("interrupted: run `{name}` stopped; finished shards are kept. Resume it with:\n  {command}")
}

/// `word` as a shell reads it back: as is when it holds only safe characters, else single-quoted.
fn shell_word(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '+' | ','));
    if safe { word.to_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

/// Prints the outcome of a run; exit 0 only if it finished with every sample made.
fn finish(result: Result<RunFile, BulkError>, json: bool) -> anyhow::Result<ExitCode> {
    let run = result?;
    let t = &run.totals;
    if json {
        outln!("{}", serde_json::to_string_pretty(&run)?);
    } else {
        let duplicates =
            if t.duplicates > 0 { format!(", {} near-duplicate(s) dropped", t.duplicates) } else { String::new() };
        outln!(
            "run `{}` {}: {} succeeded, {} failed{duplicates}, {} shard(s) in {}",
            run.config.name,
            state_name(run.state),
            t.succeeded,
            t.failed,
            t.shards,
            run.config.out
        );
    }
    Ok(if run.state == RunState::Finished && t.failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

async fn status(config: &FleetConfig, run: &BulkRunRef, watch: bool) -> anyhow::Result<ExitCode> {
    let (record, snapshot) = fleet_bulk::status(&run.name, run.out.as_deref(), config).await?;
    if run.server.json {
        outln!("{}", serde_json::to_string_pretty(&json!({"run": record, "progress": snapshot}))?);
        return Ok(ExitCode::SUCCESS);
    }
    if !watch {
        outln!("run `{}` ({}): {}", run.name, record.config.out, summary(&snapshot));
        return Ok(ExitCode::SUCCESS);
    }
    let show = progress_bar();
    let mut snapshot = snapshot;
    loop {
        show(&snapshot);
        if snapshot.state != RunState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        snapshot = fleet_bulk::status(&run.name, run.out.as_deref(), config).await?.1;
    }
    outln!("\nrun `{}`: {}", run.name, summary(&snapshot));
    Ok(ExitCode::SUCCESS)
}

fn state_name(state: RunState) -> &'static str {
    match state {
        RunState::Running => "running",
        RunState::Finished => "finished",
        RunState::Cancelled => "cancelled",
    }
}

/// `running: 532/1000 done, 3 failed, 12 running, 40 queued, 413 waiting; shards 0/1; 4.2 img/s, ETA 1m40s`;
/// a run nothing drives says `stalled: no driver since <time>` instead of the ETA.
fn summary(s: &Snapshot) -> String {
    let mut line = format!(
        "{}: {}/{} done, {} failed, {} running, {} queued, {} waiting; shards {}/{}; {:.1} img/s",
        state_name(s.state),
        s.succeeded,
        s.total,
        s.failed,
        s.running,
        s.queued,
        s.waiting(),
        s.shards_done,
        s.shards_total,
        s.images_per_second
    );
    if s.duplicates > 0 {
        line.push_str(&format!(", {} near-duplicate(s) dropped", s.duplicates));
    }
    if let Some(since) = s.stalled_since {
        let since = since.format("%Y-%m-%d %H:%M:%S UTC");
        line.push_str(&format!(", stalled: no driver since {since} (resume it to go on)"));
    } else if let (Some(eta), RunState::Running) = (s.eta_seconds, s.state) {
        let eta = eta.round() as u64;
        line.push_str(&format!(", ETA {}m{:02}s", eta / 60, eta % 60));
    }
    if !s.failed_by_code.is_empty() {
        let codes: Vec<String> = s.failed_by_code.iter().map(|(code, n)| format!("{code} {n}")).collect();
        line.push_str(&format!("; failures: {}", codes.join(", ")));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resume_hint_is_a_command_a_shell_runs_as_printed() {
        assert!(resume_hint("cats-v1", None).ends_with("\n  fleet bulk resume cats-v1"));
        assert!(resume_hint("cats", Some("/data/my out")).ends_with("  fleet bulk resume cats --out '/data/my out'"));
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}
