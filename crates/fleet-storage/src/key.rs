//! Object keys: the deterministic layout and the rules every key must follow.

use fleet_core::ImageFormat;
use uuid::Uuid;

use crate::StorageError;

/// Longest key S3 accepts, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// The key of image `index` of one execution of job `job_id`:
/// `<prefix>/<tenant>/<job id>/<execution>/<index>.<ext>`.
///
/// Every execution of a job (a first run, a redelivery, a duplicate message) writes under its own
/// `execution` id, so no execution can overwrite the objects another one recorded as the job's
/// result; the job's status record names the one set that counts. Slashes around `prefix` are
/// trimmed and an empty prefix is left out.
pub fn object_key(
    prefix: &str,
    tenant: &str,
    job_id: Uuid,
    execution: &str,
    index: u32,
    format: ImageFormat,
) -> String {
    format!("{}{execution}/{index}.{}", job_prefix(prefix, tenant, job_id), format.extension())
}

/// The prefix every object of job `job_id` starts with, whatever the execution:
/// `<prefix>/<tenant>/<job id>/` (for listing a job's objects).
pub fn job_prefix(prefix: &str, tenant: &str, job_id: Uuid) -> String {
    let prefix = prefix.trim_matches('/');
    let name = format!("{tenant}/{}/", job_id.hyphenated());
    if prefix.is_empty() { name } else { format!("{prefix}/{name}") }
}

/// A fresh execution id: 12 lower-case hex characters (48 random bits), drawn when a worker
/// starts a job.
pub fn new_execution_id() -> String {
    let [a, b, c, d, e, f, ..] = Uuid::new_v4().into_bytes();
    format!("{a:02x}{b:02x}{c:02x}{d:02x}{e:02x}{f:02x}")
}

/// Checks the rules both stores apply to keys: 1–1024 bytes, `/`-separated non-empty segments,
/// no `.` or `..` segment, no backslash or control character.
///
/// The local store maps keys onto paths, so these rules are what keep a key inside its directory;
/// the S3 store applies them too so both stores accept the same keys.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let bad = |reason| Err(StorageError::InvalidKey { key: key.escape_debug().to_string(), reason });
    if key.is_empty() {
        return bad("must not be empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return bad("longer than 1024 bytes");
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return bad("contains a control character or backslash");
    }
    for segment in key.split('/') {
        match segment {
            "" => return bad("has an empty path segment (leading, trailing or double `/`)"),
            "." | ".." => return bad("has a `.` or `..` segment"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(validate_key("images/t/0.png").is_ok());
        for bad in ["", "/a", "a/", "a//b", "a/../b", "./a", "a\\b", "a\nb"] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        assert!(validate_key(&"a".repeat(1025)).is_err());
    }

    #[test]
    fn executions_get_keys_of_their_own_under_the_job() {
        let job = Uuid::parse_str("0190f1c2-3b4d-7e8f-9a0b-1c2d3e4f5a6b").unwrap();
        let (a, b) = (new_execution_id(), new_execution_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 12);
        assert!(validate_key(&a).is_ok());
        let key = object_key("/images/", "acme", job, &a, 2, ImageFormat::Png);
        assert_eq!(key, format!("images/acme/0190f1c2-3b4d-7e8f-9a0b-1c2d3e4f5a6b/{a}/2.png"));
        assert!(key.starts_with(&job_prefix("images", "acme", job)));
        assert_ne!(key, object_key("images", "acme", job, &b, 2, ImageFormat::Png));
        assert_eq!(job_prefix("", "acme", job), "acme/0190f1c2-3b4d-7e8f-9a0b-1c2d3e4f5a6b/");
    }
}
