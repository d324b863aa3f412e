//! Jobs to images on this machine. The worker, `fleet bulk --local` and `fleet generate` all
//! render through this crate, so one job gives the same pixels and the same file on each path.
//!
//! - [`models`]: the pipelines a process serves (base models, fused LoRA sets, ControlNets) and
//!   why one cannot be had ([`ModelError`], with its job error code);
//! - [`request`]: the one mapping from a job ([`fleet_core::JobSpec`]) to an engine request,
//!   ControlNet input included;
//! - [`batching`]: which jobs share a forward pass, a pure function (the worker's and
//!   `fleet generate --jobs`'s);
//! - [`fair_share`]: the order of the jobs waiting in a worker, giving tenants turns by weight;
//! - [`encoding`]: how a job's images are encoded (format, quality, PNG effort, metadata).
//!
//! Dependencies point down: binaries and services → this crate → fleet-engine → fleet-core.

pub mod batching;
pub mod encoding;
pub mod fair_share;
pub mod models;
pub mod request;

pub use encoding::{encode_job_image, encode_options};
pub use models::{CacheOutcome, ModelError, Models};
pub use request::{InputImage, JobImages, attach_control, attach_init, input_image, job_request, prepare};
