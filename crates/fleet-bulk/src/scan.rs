//! The pass over the input before a run: every row checked (every expansion of its prompt
//! program too), samples counted, exact duplicate prompts counted, the file hashed. Memory
//! stays flat but for 8 bytes per distinct prompt: only the first invalid rows and the first
//! prompts are kept.

use std::collections::HashSet;
use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
use std::io::Read as _;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::BulkError;
use crate::input::{InputFormat, RowError, read_rows};
use crate::plan::ShardPlan;
use crate::run::InputSummary;
use crate::sample::SampleFactory;

/// How many invalid rows a scan keeps for the report.
pub const MAX_REPORTED_ROWS: usize = 100;

/// How many prompts a scan keeps to show before a run.
pub const PREVIEW_PROMPTS: usize = 5;

/// The result of a scan.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub summary: InputSummary,
    /// The first [`MAX_REPORTED_ROWS`] problems, in input order.
    pub errors: Vec<RowError>,
    /// Prompts (one per expansion, not per seed) equal to an earlier prompt of the input.
    pub duplicate_prompts: u64,
    /// The first [`PREVIEW_PROMPTS`] prompts, in sample order.
    pub preview: Vec<String>,
}

/// Reads the whole input once through `factory` (which must be fresh).
pub fn scan(path: &Path, format: InputFormat, plan: ShardPlan, factory: &mut SampleFactory) -> Result<Scan, BulkError> {
    let mut result =
        Scan { summary: InputSummary { sha256: hash_file(path)?, ..InputSummary::default() }, ..Scan::default() };
    // A fixed-key SipHash: 64 bits per prompt, collisions negligible at any input size.
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    let mut prompts = HashSet::new();
    for row in read_rows(path, format)? {
        result.summary.rows += 1;
        factory.push_row(row);
        let mut row_invalid = false;
        while let Some(sample) = factory.next_sample() {
            result.summary.samples += 1;
            match &sample.job {
                Ok(job) if sample.variant == 0 => {
                    if !prompts.insert(hasher.hash_one(&job.prompt)) {
                        result.duplicate_prompts += 1;
                    }
                    if result.preview.len() < PREVIEW_PROMPTS {
                        result.preview.push(job.prompt.clone());
                    }
                }
                Ok(_) => {}
                // Every sample of a row shares the row's errors; report them once. A program
                // whose expansion is invalid reports the first such expansion.
                Err(errors) if !row_invalid => {
                    row_invalid = true;
                    result.summary.invalid_rows += 1;
                    let room = MAX_REPORTED_ROWS.saturating_sub(result.errors.len());
                    result.errors.extend(errors.iter().take(room).cloned());
                }
                Err(_) => {}
            }
        }
    }
    result.summary.shards = plan.shards(result.summary.samples);
    Ok(result)
}

/// Lower-case hex SHA-256 of a file, read in chunks.
pub fn hash_file(path: &Path) -> Result<String, BulkError> {
    let mut file = std::fs::File::open(path).map_err(|e| BulkError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer).map_err(|e| BulkError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
