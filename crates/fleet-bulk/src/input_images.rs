//! Input images named by file in bulk rows: `controlnet.image`, `init_image` and `mask_image` may
//! be a path (relative to the input file's folder, or absolute); the file goes into the job
//! inline (base64), as `fleet submit --control-image FILE` sends it, so fleet and `--local` runs
//! read the same bytes. `s3://` URIs and inline images stay as they are.

use std::path::Path;

use serde_json::{Map, Value};

use crate::input::RowError;

/// Longest value taken for a path; anything longer is an inline image.
const MAX_PATH_LEN: usize = 1024;

/// Replaces each image field that names a file with the file's bytes in base64. A value that
/// looks like a path but names no file is left for the job's validation to judge (it may be
/// inline base64); a file that exists but cannot be read is the row's error.
pub fn inline_files(fields: &mut Map<String, Value>, dir: &Path, line: usize, errors: &mut Vec<RowError>) {
    for field in ["init_image", "mask_image"] {
        if let Some(value) = fields.get_mut(field) {
            inline_one(value, field, dir, line, errors);
        }
    }
    if let Some(Value::Object(controlnet)) = fields.get_mut("controlnet")
        && let Some(value) = controlnet.get_mut("image")
    {
        inline_one(value, "controlnet.image", dir, line, errors);
    }
}

fn inline_one(value: &mut Value, field: &str, dir: &Path, line: usize, errors: &mut Vec<RowError>) {
    let Value::String(text) = value else { return };
    if text.len() > MAX_PATH_LEN || text.starts_with("s3://") || text.starts_with("data:") {
        return;
    }
    let path = dir.join(text.as_str());
    if !path.is_file() {
        return;
    }
    match std::fs::read(&path) {
        Ok(bytes) => *value = Value::String(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)),
        Err(e) => errors.push(RowError { line, field: field.into(), message: format!("{}: {e}", path.display()) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_goes_inline_and_other_values_stay() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("edge.png"), b"\x89PNG\r\n\x1a\nrest").unwrap();
        let mut fields: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "controlnet": {"model": "canny", "image": "edge.png"},
            "init_image": "s3://inputs/start.png",
            "mask_image": "bm90IGEgZmlsZQ==",
        }))
        .unwrap();
        let mut errors = Vec::new();
        inline_files(&mut fields, dir.path(), 3, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(fields["controlnet"]["image"], "iVBORw0KGgpyZXN0");
        assert_eq!(fields["init_image"], "s3://inputs/start.png");
        assert_eq!(fields["mask_image"], "bm90IGEgZmlsZQ==");
    }
}
