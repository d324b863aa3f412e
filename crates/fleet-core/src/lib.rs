//! The lightning-fleet job contract, shared by every crate and by producers in other languages.
//!
//! - [`job`]: the wire format of a generation job ([`JobSpec`]);
//! - [`parse`]: JSON → [`JobSpec`] with field paths in errors;
//! - [`validate`]: [`JobSpec`] → [`ValidJob`], reporting every problem at once;
//! - [`status`]: the job status model and its checked transitions;
//! - [`identity`]: a message's job id, the seed a job id implies, a request's digest;
//! - [`request_record`]: what a status record keeps of the job's request;
//! - [`error_code`]: the table of stable error codes (HTTP status, retryability);
//! - [`backoff`]: the one retry policy every retry loop waits by;
//! - [`names`]: the naming rules shared by every crate (bulk-run names, which become parts of Redis keys);
//! - [`config`]: configuration types, defaults and layered loading;
//! - [`control_image`]: inline control images decode within size and memory bounds;
//! - [`prediction`]: what a model's UNet predicts, the one list of prediction types;
//! - [`schema`]: the JSON Schema published in `docs/job.schema.json`;
//! - [`usage`]: what a job counts toward its tenant's usage and quotas, and the usage report's rows;
//! - [`webhook`]: a job's webhook, the deliveries its state changes queue and their log.

pub mod backoff;
pub mod config;
pub mod control_image;
pub mod error_code;
pub mod identity;
pub mod job;
pub mod names;
pub mod parse;
pub mod prediction;
pub mod request_record;
pub mod schema;
pub mod status;
pub mod usage;
pub mod validate;
pub mod webhook;

pub use config::FleetConfig;
pub use error_code::ErrorCode;
pub use job::{ControlNetSpec, ImageFormat, JobSpec, LoraRef, LoraSource, OutputSpec, Priority};
pub use parse::{ParseError, parse_job};
pub use prediction::PredictionType;
pub use request_record::{ControlNetRecord, ImageRecord, RequestRecord};
pub use status::{ImageResult, JobError, JobState, JobStatus, Progress};
pub use validate::{FieldError, Limits, ValidJob, ValidationErrors};
