//! Bulk dataset generation: a file of prompts in, a sharded, resumable dataset out.
//!
//! - [`input`], [`csv_row`]: JSONL / CSV / text rows as a stream, with line numbers;
//! - [`template`]: prompt programs (`{a|b}`, `{__list__}`, weights) expanded or drawn;
//! - [`sample`], [`plan`]: rows → samples with stable keys, seeds and idempotency keys, in shards;
//! - [`hamming`], [`phash`]: 64-bit perceptual hashes and the index that finds near-duplicates;
//! - [`scan`]: the check of every row before a run starts;
//! - [`exec`], [`fleet_exec`], [`local_exec`], [`api`]: making samples through the fleet
//!   (bounded in flight, 429-aware) or in-process;
//! - [`shard`], [`record`], [`manifest`], [`output`]: WebDataset tars or image folders, JSONL and
//!   Parquet manifests, stats, to a directory or S3;
//! - [`staging`]: made samples kept in the output until their shard is published, so a resume
//!   never makes them again;
//! - [`run`], [`registry`], [`runner`], [`control`]: run records, Redis run state, the run loop,
//!   and the `run | resume | retry-failed | cancel | status` commands.

pub mod api;
pub mod control;
pub mod csv_row;
pub mod error;
pub mod exec;
pub mod fleet_exec;
pub mod hamming;
pub mod input;
pub mod input_images;
pub mod local_exec;
pub mod manifest;
pub mod output;
pub mod phash;
pub mod plan;
pub mod record;
pub mod registry;
pub mod run;
pub mod runner;
pub mod sample;
pub mod scan;
pub mod shard;
pub mod staging;
pub mod template;

pub use control::{Session, cancel, check_input, resume, retry_failed, start, start_with, status};
pub use error::BulkError;
pub use input::{InputFormat, Row, RowError};
pub use run::{RunConfig, RunFile, RunState, Snapshot};
pub use shard::Layout;
