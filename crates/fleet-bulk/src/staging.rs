//! Samples made but not yet in a published shard: `_staging/NNNNN/KEY.<ext>` plus `KEY.json`
//! (written last) in the output location, for fleet and `--local` runs alike, removed once the
//! shard is published.
//!
//! A resume takes a staged sample as made and submits nothing for it, so no sample whose image
//! is in the output is generated again — whether or not the fleet still remembers its job (a
//! fleet run deletes each job once its sample is staged; with `--keep-jobs` an idempotency key
//! lives `redis.idempotency_ttl_secs`, a job's record and images their retention). A shard
//! reopened by `retry-failed` has its made samples staged again from the published shard
//! ([`restage`]) for the same reason. Staged files are written without waiting for the disk: a staged sample lost in
//! a crash of the machine costs one regeneration, never a wrong image, since a resume takes
//! only a staged image whose SHA-256 matches its record.

use std::collections::HashMap;
use std::io::Read as _;

use crate::error::BulkError;
use crate::output::Output;
use crate::plan::shard_name;
use crate::record::{SampleRecord, SampleState};
use crate::shard::{Layout, content_type, manifest_name, parse_manifest, tar_name};

/// Name of the staging folder inside the output location.
pub const STAGING_DIR: &str = "_staging";

/// A staged sample: its record and the name of its image in the output location.
#[derive(Debug, Clone)]
pub struct Staged {
    pub record: SampleRecord,
    pub image: String,
}

/// `_staging/NNNNN`: the staging folder of one shard.
pub fn shard_dir(shard: u64) -> String {
    format!("{STAGING_DIR}/{}", shard_name(shard))
}

fn record_name(shard: u64, key: &str) -> String {
    format!("{}/{key}.json", shard_dir(shard))
}

/// Stages a made sample (image first, record last) without waiting for the disk; returns the
/// image's name.
pub async fn stage(output: &Output, record: &SampleRecord, image: Vec<u8>) -> Result<String, BulkError> {
    stage_as(output, record, image, false).await
}

async fn stage_as(output: &Output, record: &SampleRecord, image: Vec<u8>, synced: bool) -> Result<String, BulkError> {
    let name = format!("{}/{}", shard_dir(record.shard), record.image_name());
    let json = serde_json::to_vec(record).map_err(|e| BulkError::json("staged sample record", e))?;
    let json_name = record_name(record.shard, &record.key);
    if synced {
        output.put(&name, image, content_type(&record.format)).await?;
        output.put(&json_name, json, "application/json").await?;
    } else {
        output.put_unsynced(&name, image, content_type(&record.format)).await?;
        output.put_unsynced(&json_name, json, "application/json").await?;
    }
    Ok(name)
}

/// The samples staged for `shard` by earlier invocations, by key: only those whose record
/// says `succeeded` and whose image is there with the recorded SHA-256 (anything else is made
/// again).
pub async fn load(output: &Output, shard: u64) -> Result<HashMap<String, Staged>, BulkError> {
    let names = output.list(&shard_dir(shard)).await?;
    let mut staged = HashMap::new();
    for name in names.iter().filter(|n| n.ends_with(".json")) {
        let Some(bytes) = output.get(name).await? else { continue };
        let record: SampleRecord = match serde_json::from_slice(&bytes) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(name, error = %e, "staged record unreadable; the sample is made again");
                continue;
            }
        };
        if record.status != SampleState::Succeeded || record.shard != shard {
            continue;
        }
        let image = format!("{}/{}", shard_dir(shard), record.image_name());
        let Some(bytes) = output.get(&image).await? else { continue };
        if record.sha256.as_deref() != Some(fleet_storage::sha256_hex(&bytes).as_str()) {
            tracing::warn!(name = image, "staged image does not match its record; the sample is made again");
            continue;
        }
        staged.insert(record.key.clone(), Staged { record, image });
    }
    Ok(staged)
}

/// Stages again the made samples of published shard `shard` (from its JSONL manifest and its
/// tar or image folder), waiting for the disk, before the shard is reopened: the resume that
/// rewrites it takes them from the output instead of asking the fleet, which no longer has their
/// jobs. A tar is read entry by entry, so memory holds a few images, not the shard. A sample whose
/// image is missing or does not match its record's SHA-256 is left out (and made again).
/// Returns how many were staged.
pub async fn restage(output: &Output, layout: Layout, shard: u64) -> Result<usize, BulkError> {
    let name = manifest_name(shard);
    let manifest = output.get(&name).await?.ok_or_else(|| {
        BulkError::Config(format!("{name} is missing from {output}: shard {shard}'s made samples are unknown"))
    })?;
    let mut made: HashMap<String, SampleRecord> = parse_manifest(&name, &manifest)?
        .into_iter()
        .filter(|record| record.status == SampleState::Succeeded)
        .map(|record| (record.image_name(), record))
        .collect();
    let wanted: std::collections::HashSet<String> = made.keys().cloned().collect();
    let mut staged = 0;
    let mut stage_one = async |image: String, body: Vec<u8>| -> Result<(), BulkError> {
        let Some(record) = made.remove(&image) else { return Ok(()) };
        if record.sha256.as_deref() == Some(fleet_storage::sha256_hex(&body).as_str()) {
            stage_as(output, &record, body, true).await?;
            staged += 1;
        }
        Ok(())
    };
    match layout {
        Layout::WebDataset => {
            let tar = tar_name(shard);
            let reader: Box<dyn std::io::Read + Send> = match output.dir() {
                Some(dir) => {
                    let path = dir.join(&tar);
                    Box::new(std::fs::File::open(&path).map_err(|e| BulkError::io(&path, e))?)
                }
                None => Box::new(std::io::Cursor::new(
                    output
                        .get(&tar)
                        .await?
                        .ok_or_else(|| BulkError::Config(format!("{tar} is missing from {output}")))?,
                )),
            };
            let (entries, mut next) = tokio::sync::mpsc::channel(4);
            let reading = tokio::task::spawn_blocking(move || read_entries(reader, &tar, &wanted, &entries));
            while let Some((image, body)) = next.recv().await {
                stage_one(image, body).await?;
            }
            reading.await.map_err(|e| BulkError::Config(format!("tar reader thread: {e}")))??;
        }
        Layout::Files => {
            for image in wanted {
                if let Some(body) = output.get(&format!("{}/{image}", shard_name(shard))).await? {
                    stage_one(image, body).await?;
                }
            }
        }
    }
    for image in made.keys() {
        tracing::warn!(shard, image, "a made sample's image is missing or altered; it is made again");
    }
    Ok(staged)
}

/// Sends the tar entries named in `wanted` down `entries`, one at a time (blocking reads).
fn read_entries(
    reader: Box<dyn std::io::Read + Send>,
    tar: &str,
    wanted: &std::collections::HashSet<String>,
    entries: &tokio::sync::mpsc::Sender<(String, Vec<u8>)>,
) -> Result<(), BulkError> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(|e| BulkError::io(tar, e))? {
        let mut entry = entry.map_err(|e| BulkError::io(tar, e))?;
        let path = entry.path().map_err(|e| BulkError::io(tar, e))?.display().to_string();
        if wanted.contains(&path) {
            let mut body = Vec::new();
            entry.read_to_end(&mut body).map_err(|e| BulkError::io(tar, e))?;
            if entries.blocking_send((path, body)).is_err() {
                return Ok(()); // the stager stopped (an error of its own, which it reports)
            }
        }
    }
    Ok(())
}

/// Removes the staging of a published shard; a failure only leaves files behind (logged).
pub async fn clear(output: &Output, shard: u64) {
    if let Err(e) = output.delete_dir(&shard_dir(shard)).await {
        tracing::warn!(shard, error = %e, "staging of a published shard not removed");
    }
}
