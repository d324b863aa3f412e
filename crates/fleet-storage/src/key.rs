//! Object keys: the deterministic layout and the rules every key must follow.

use fleet_core::ImageFormat;
use uuid::Uuid;

use crate::StorageError;

/// Longest key S3 accepts, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// The key of image `index` of job `job_id`: `<prefix>/<tenant>/<job id>/<index>.<ext>`.
///
/// It depends only on its arguments, so a redelivered job writes the same keys again instead of
/// leaving duplicates. Slashes around `prefix` are trimmed and an empty prefix is left out.
pub fn object_key(prefix: &str, tenant: &str, job_id: Uuid, index: u32, format: ImageFormat) -> String {
    let prefix = prefix.trim_matches('/');
    let name = format!("{tenant}/{}/{index}.{}", job_id.hyphenated(), format.extension());
    if prefix.is_empty() { name } else { format!("{prefix}/{name}") }
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
}
