//! The pass over the input before a run: every row checked, samples counted, the file hashed.
//! Memory stays flat: only the first invalid rows are kept.

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

/// The result of a scan.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub summary: InputSummary,
    /// The first [`MAX_REPORTED_ROWS`] problems, in input order.
    pub errors: Vec<RowError>,
}

/// Reads the whole input once through `factory` (which must be fresh).
pub fn scan(path: &Path, format: InputFormat, plan: ShardPlan, factory: &mut SampleFactory) -> Result<Scan, BulkError> {
    let mut result =
        Scan { summary: InputSummary { sha256: hash_file(path)?, ..InputSummary::default() }, errors: Vec::new() };
    for row in read_rows(path, format)? {
        result.summary.rows += 1;
        let samples = factory.samples(row);
        result.summary.samples += samples.len() as u64;
        // All samples of a row share its errors; report them once.
        if let Some(Err(errors)) = samples.first().map(|s| &s.job) {
            result.summary.invalid_rows += 1;
            let room = MAX_REPORTED_ROWS.saturating_sub(result.errors.len());
            result.errors.extend(errors.iter().take(room).cloned());
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
