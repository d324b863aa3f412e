//! JSON Schemas generated from the Rust types, so producers in other languages follow the same contract.

use crate::job::JobSpec;
use crate::status::JobStatus;

/// The job contract as a pretty-printed JSON Schema (the content of `docs/job.schema.json`).
pub fn job_schema_json() -> String {
    let schema = schemars::schema_for!(JobSpec);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// The status record served by the API (the content of `docs/status.schema.json`).
pub fn status_schema_json() -> String {
    let schema = schemars::schema_for!(JobStatus);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
