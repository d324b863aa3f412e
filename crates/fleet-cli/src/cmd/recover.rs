//! `fleet recover`: finished jobs' status records rebuilt from their images in S3, for when Redis
//! lost them or left them unfinished (see fleet-worker's `recover`). One line per job rebuilt,
//! finished or left without a record, then a summary; exit 0 when it got through, 1 when a job's images are no whole result set.

use std::process::ExitCode;

use fleet_status::StatusStore;
use fleet_storage::ImageStore;
use fleet_worker::recover::{JobOutcome, Recovery, Scope};

use crate::cli::{Cli, RecoverArgs};

pub fn run(cli: &Cli, args: &RecoverArgs) -> anyhow::Result<ExitCode> {
    let config = cli.load_config()?;
    if let Some(tenant) = &args.tenant
        && !tenant.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        anyhow::bail!("--tenant `{tenant}`: letters, digits, '.', '_', '-' only");
    }
    let scope = Scope { tenant: args.tenant.clone(), job: args.job, dry_run: args.dry_run };
    tokio::runtime::Runtime::new()?.block_on(async move {
        let status = StatusStore::connect(&config.redis).await?;
        let images = ImageStore::connect(&config.s3).await?;
        let recovery = Recovery { status: &status, images: &images, prefix: &config.s3.prefix };
        let verb = if scope.dry_run { "would rebuild" } else { "rebuilt" };
        let finish_verb = if scope.dry_run { "would finish" } else { "finished" };
        let summary = recovery
            .run(&scope, |id, tenant, outcome| match outcome {
                JobOutcome::Recorded => {}
                JobOutcome::Rebuilt { key_restored, key_taken_by } => {
                    let key = match (key_restored, key_taken_by) {
                        (true, _) => ", with its idempotency key",
                        (false, Some(_)) => ", its idempotency key names another job now",
                        (false, None) => "",
                    };
                    outln!("{verb} {tenant}/{id}: succeeded{key}");
                }
                JobOutcome::NotWhole(reasons) => outln!("left {tenant}/{id} without a record: {}", reasons.join("; ")),
                JobOutcome::Finished { was } => {
                    outln!("{finish_verb} {tenant}/{id}: was {}, its images are all stored: succeeded", was.as_str());
                }
            })
            .await?;
        outln!(
            "{} job(s) with images: {} had a record, {} {verb} ({} idempotency key(s){}), {} without a whole result set, {} unfinished record(s) {finish_verb}",
            summary.jobs,
            summary.recorded,
            summary.rebuilt,
            summary.keys_restored,
            if summary.keys_taken > 0 { format!(", {} taken by other jobs", summary.keys_taken) } else { String::new() },
            summary.not_whole,
            summary.finished,
        );
        Ok(if summary.not_whole > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
    })
}
