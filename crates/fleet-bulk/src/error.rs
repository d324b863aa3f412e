//! The crate's error type.

use crate::input::RowError;

/// Why a bulk run (or one of its commands) could not go on.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The input is unusable as a whole (unknown format, unreadable header).
    #[error("input: {0}")]
    Input(String),
    /// Rows that are not valid jobs; the run refuses to start (see `--skip-invalid`).
    #[error("{} invalid row(s) in the input (first: {}); fix them or pass --skip-invalid", .total, first_row(.rows))]
    InvalidRows {
        /// The first invalid rows (at most [`crate::scan::MAX_REPORTED_ROWS`]).
        rows: Vec<RowError>,
        /// How many rows are invalid in all.
        total: u64,
    },
    /// A run option or stored run that does not make sense.
    #[error("{0}")]
    Config(String),
    /// No run of this name (in Redis, or at the given output location).
    #[error("no bulk run `{0}` found (give --out LOCATION for runs made with --local)")]
    RunNotFound(String),
    /// The output store failed (boxed: the storage error is large and rare).
    #[error("output storage: {0}")]
    Storage(Box<fleet_storage::StorageError>),
    /// The fleet's status store (Redis) failed.
    #[error("status store: {0}")]
    Status(#[from] fleet_status::StatusError),
    /// The run-state keys in Redis could not be read or written.
    #[error("run state in Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The dispatcher refused or could not be reached.
    #[error("dispatcher: {0}")]
    Api(String),
    /// The in-process engine failed to load a model.
    #[error("engine: {0}")]
    Engine(String),
    /// A Parquet manifest could not be written or read.
    #[error("{what}: {source}")]
    Parquet {
        /// Which manifest.
        what: String,
        /// What the parquet crate said.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A stored JSON document (run.json, stats) is not what this crate writes.
    #[error("{what}: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

fn first_row(rows: &[RowError]) -> String {
    rows.first().map(ToString::to_string).unwrap_or_default()
}

impl From<fleet_storage::StorageError> for BulkError {
    fn from(e: fleet_storage::StorageError) -> BulkError {
        BulkError::Storage(Box::new(e))
    }
}

impl BulkError {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> BulkError {
        BulkError::Io { path: path.as_ref().display().to_string(), source }
    }

    /// A JSON error in the document `what`.
    pub fn json(what: impl Into<String>, source: serde_json::Error) -> BulkError {
        BulkError::Json { what: what.into(), source }
    }
}
