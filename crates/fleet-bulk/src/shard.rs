//! Writing one finished shard: WebDataset tar (`NNNNN.tar`) or an image folder (`NNNNN/` with a
//! Hugging Face ImageFolder `metadata.jsonl`), then the manifests (JSONL and Parquet), then the stats.
//!
//! The stats file goes last: its presence is what marks a shard complete, so a crash part-way
//! leaves a shard that a resume rewrites.

use crate::error::BulkError;
use crate::output::Output;
use crate::plan::shard_name;
use crate::record::{SampleRecord, ShardStats};

pub use fleet_status::bulk_runs::Layout;

/// `NNNNN_stats.json`.
pub fn stats_name(shard: u64) -> String {
    format!("{}_stats.json", shard_name(shard))
}

/// `NNNNN_manifest.jsonl`.
pub fn manifest_name(shard: u64) -> String {
    format!("{}_manifest.jsonl", shard_name(shard))
}

/// The records of a JSONL manifest's bytes (`name` for errors), in order.
pub fn parse_manifest(name: &str, bytes: &[u8]) -> Result<Vec<SampleRecord>, BulkError> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| serde_json::from_slice(line).map_err(|e| BulkError::json(name, e)))
        .collect()
}

/// `NNNNN_manifest.parquet`.
pub fn parquet_manifest_name(shard: u64) -> String {
    format!("{}_manifest.parquet", shard_name(shard))
}

/// `NNNNN.tar`.
pub fn tar_name(shard: u64) -> String {
    format!("{}.tar", shard_name(shard))
}

/// A shard being written; samples are added in index order.
pub enum ShardWriter {
    /// Entries go into a tar in a scratch file.
    Tar { shard: u64, builder: tar::Builder<tempfile::NamedTempFile>, mtime: u64 },
    /// Images are stored one by one; `metadata.jsonl` collects their records.
    Files { shard: u64, metadata: Vec<u8> },
}

impl ShardWriter {
    /// Starts shard `shard`.
    pub fn new(layout: Layout, shard: u64, output: &Output) -> Result<ShardWriter, BulkError> {
        Ok(match layout {
            Layout::WebDataset => ShardWriter::Tar {
                shard,
                builder: tar::Builder::new(output.scratch()?),
                mtime: chrono::Utc::now().timestamp().max(0) as u64,
            },
            Layout::Files => ShardWriter::Files { shard, metadata: Vec::new() },
        })
    }

    /// Adds one succeeded sample with its image.
    pub async fn add(&mut self, output: &Output, record: &SampleRecord, image: Vec<u8>) -> Result<(), BulkError> {
        let json = serde_json::to_vec(record).map_err(|e| BulkError::json("sample record", e))?;
        match self {
            ShardWriter::Tar { builder, mtime, .. } => {
                let entries = [
                    (record.image_name(), image),
                    (format!("{}.txt", record.key), record.prompt.clone().into_bytes()),
                    (format!("{}.json", record.key), json),
                ];
                for (name, body) in entries {
                    append(builder, &name, &body, *mtime)?;
                }
                Ok(())
            }
            ShardWriter::Files { shard, metadata } => {
                let name = format!("{}/{}", shard_name(*shard), record.image_name());
                output.put(&name, image, content_type(&record.format)).await?;
                let mut row = serde_json::to_value(record).map_err(|e| BulkError::json("sample record", e))?;
                if let Some(fields) = row.as_object_mut() {
                    fields.insert("file_name".into(), record.image_name().into());
                }
                serde_json::to_writer(&mut *metadata, &row).map_err(|e| BulkError::json("metadata.jsonl", e))?;
                metadata.push(b'\n');
                Ok(())
            }
        }
    }

    /// Publishes the shard, its manifests (every sample, failed ones too) and last its stats.
    pub async fn finish(self, output: &Output, records: &[SampleRecord]) -> Result<ShardStats, BulkError> {
        let shard = match self {
            ShardWriter::Tar { shard, builder, .. } => {
                let file = builder.into_inner().map_err(|e| BulkError::io(tar_name(shard), e))?;
                output.put_file(&tar_name(shard), file, "application/x-tar").await?;
                shard
            }
            ShardWriter::Files { shard, metadata } => {
                output.put(&format!("{}/metadata.jsonl", shard_name(shard)), metadata, "application/jsonl").await?;
                shard
            }
        };
        let mut manifest = Vec::new();
        for record in records {
            serde_json::to_writer(&mut manifest, record).map_err(|e| BulkError::json("manifest", e))?;
            manifest.push(b'\n');
        }
        output.put(&manifest_name(shard), manifest, "application/jsonl").await?;
        let parquet = crate::manifest::write_manifest(records)?;
        output.put(&parquet_manifest_name(shard), parquet, "application/vnd.apache.parquet").await?;
        let stats = ShardStats::of(shard, records);
        let body = serde_json::to_vec_pretty(&stats).map_err(|e| BulkError::json("stats", e))?;
        output.put(&stats_name(shard), body, "application/json").await?;
        Ok(stats)
    }
}

fn append(
    builder: &mut tar::Builder<tempfile::NamedTempFile>,
    name: &str,
    body: &[u8],
    mtime: u64,
) -> Result<(), BulkError> {
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, name, body).map_err(|e| BulkError::io(name, e))
}

/// MIME type of an image extension.
pub fn content_type(extension: &str) -> &'static str {
    match extension {
        "jpg" => "image/jpeg",
        "webp" => "image/webp",
        _ => "image/png",
    }
}

/// The entries of a tar shard in order, as (name, bytes): for checks and small tools.
pub fn read_tar(path: &std::path::Path) -> Result<Vec<(String, Vec<u8>)>, BulkError> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| BulkError::io(path, e))?;
    let mut archive = tar::Archive::new(file);
    let mut entries = Vec::new();
    for entry in archive.entries().map_err(|e| BulkError::io(path, e))? {
        let mut entry = entry.map_err(|e| BulkError::io(path, e))?;
        let name = entry.path().map_err(|e| BulkError::io(path, e))?.display().to_string();
        let mut body = Vec::new();
        entry.read_to_end(&mut body).map_err(|e| BulkError::io(path, e))?;
        entries.push((name, body));
    }
    Ok(entries)
}
