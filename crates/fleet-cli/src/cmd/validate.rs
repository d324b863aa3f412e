//! `fleet validate FILE`: every error of every job, with line and field.

use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use fleet_core::parse::{parse_job, parse_jsonl_line};
use fleet_core::{FleetConfig, JobSpec, ParseError};

use crate::cli::{Cli, ValidateArgs};

/// One problem, located in the input.
pub(crate) struct Finding {
    pub line: usize,
    pub field: String,
    pub message: String,
}

pub fn run(cli: &Cli, args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let config = cli.load_config()?;
    let name = args.file.display().to_string();
    let text = read_input(&args.file).with_context(|| format!("cannot read {name}"))?;
    let (jobs, findings) = check(&text, is_jsonl(&args.file, &text), &config);
    for f in &findings {
        outln!("{name}:{}: {}: {}", f.line, f.field, f.message);
    }
    let bad_jobs = {
        let mut lines: Vec<usize> = findings.iter().map(|f| f.line).collect();
        lines.dedup();
        lines.len()
    };
    if bad_jobs == 0 {
        outln!("{name}: {jobs} job(s), all valid");
        Ok(ExitCode::SUCCESS)
    } else {
        outln!("{name}: {bad_jobs} of {jobs} job(s) invalid, {} error(s)", findings.len());
        Ok(ExitCode::from(1))
    }
}

fn read_input(path: &Path) -> std::io::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path)
    }
}

/// `.jsonl`/`.ndjson` by name; otherwise one document unless it is several objects, one per line.
fn is_jsonl(path: &Path, text: &str) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl" | "ndjson") => true,
        Some("json") => false,
        _ => text.lines().filter(|l| l.trim_start().starts_with('{')).count() > 1,
    }
}

/// Returns the number of jobs read and every finding, in input order.
fn check(text: &str, jsonl: bool, config: &FleetConfig) -> (usize, Vec<Finding>) {
    let mut findings = Vec::new();
    let mut jobs = 0;
    if jsonl {
        for (index, line) in text.lines().enumerate() {
            if let Some(parsed) = parse_jsonl_line(line) {
                jobs += 1;
                findings.extend(check_one(parsed, index + 1, config));
            }
        }
    } else {
        jobs = 1;
        findings.extend(check_one(parse_job(text), 0, config));
    }
    (jobs, findings)
}

/// `line_offset` 0 means the parse error's own line is the file line (one-document files).
pub(crate) fn check_one(parsed: Result<JobSpec, ParseError>, line: usize, config: &FleetConfig) -> Vec<Finding> {
    match parsed {
        Err(err) => {
            vec![Finding { line: if line == 0 { err.line } else { line }, field: err.field, message: err.message }]
        }
        Ok(spec) => {
            let limits = config.limits_for(&spec.model);
            let reported_line = line.max(1);
            match spec.validate(&limits) {
                Ok(_) => Vec::new(),
                Err(errors) => errors
                    .0
                    .into_iter()
                    .map(|e| Finding { line: reported_line, field: e.field, message: e.message })
                    .collect(),
            }
        }
    }
}
