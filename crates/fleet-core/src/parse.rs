//! Turning job JSON into a [`JobSpec`], with the failing field's path in every error.

use crate::job::JobSpec;

/// Why a job's JSON could not be read as a [`JobSpec`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ParseError {
    /// Path of the offending field (`loras[0].scale`), or `.` for the document itself.
    pub field: String,
    /// What is wrong, as serde reports it.
    pub message: String,
    /// 1-based line within the parsed text.
    pub line: usize,
    /// 1-based column within that line.
    pub column: usize,
}

/// Parses one job from JSON text.
///
/// A valid job is read in one plain pass (`serde_json::from_str`); only a failed one is read again
/// with path tracking, to name the field. Every job crosses this twice (the dispatcher's accept,
/// the worker's delivery), and the tracked pass plus the separate scan for trailing content cost
/// two full reads of each valid job (docs/PERFORMANCE.md).
pub fn parse_job(json: &str) -> Result<JobSpec, ParseError> {
    match serde_json::from_str(json) {
        Ok(spec) => Ok(spec),
        Err(_) => explain_failure(json),
    }
}

/// The slow read of a job `serde_json` refused: the same grammar, with the failing field's path.
fn explain_failure(json: &str) -> Result<JobSpec, ParseError> {
    let de = &mut serde_json::Deserializer::from_str(json);
    let spec: JobSpec = serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        ParseError {
            field: if path.is_empty() { ".".to_owned() } else { path },
            message: strip_position(&inner.to_string()),
            line: inner.line(),
            column: inner.column(),
        }
    })?;
    // `serde_json::from_str` semantics: nothing but whitespace may follow the object.
    if let Some((line, column)) = trailing_content(json) {
        return Err(ParseError {
            field: ".".to_owned(),
            message: "trailing characters after the job object".to_owned(),
            line,
            column,
        });
    }
    Ok(spec)
}

/// One line of a JSONL file: blank lines and `#` comments yield `None`.
pub fn parse_jsonl_line(line: &str) -> Option<Result<JobSpec, ParseError>> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    Some(parse_job(trimmed))
}

/// serde_json appends " at line L column C"; we report those separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// Position of the first non-whitespace character after the first complete JSON value, if any.
fn trailing_content(json: &str) -> Option<(usize, usize)> {
    let mut stream = serde_json::Deserializer::from_str(json).into_iter::<serde::de::IgnoredAny>();
    stream.next()?.ok()?;
    let offset = stream.byte_offset();
    let rest = &json[offset..];
    let skip = rest.len() - rest.trim_start().len();
    if rest.trim_start().is_empty() {
        return None;
    }
    let at = offset + skip;
    let line = json[..at].matches('\n').count() + 1;
    let column = at - json[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
    Some((line, column))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_job_gets_defaults() {
        let spec = parse_job(r#"{"prompt": "a cat"}"#).unwrap();
        assert_eq!(spec.prompt, "a cat");
        assert_eq!(spec.steps, 4);
        assert_eq!((spec.width, spec.height), (1024, 1024));
        assert_eq!(spec.model, "sdxl-lightning-4step");
        assert_eq!(spec.v, 1);
    }

    #[test]
    fn unknown_field_names_its_path() {
        let err = parse_job(r#"{"prompt": "x", "loras": [{"name": "a", "scael": 1}]}"#).unwrap_err();
        assert_eq!(err.field, "loras[0].scael");
        assert!(err.message.contains("unknown field `scael`"), "{}", err.message);
    }

    #[test]
    fn wrong_type_names_its_path_and_position() {
        let err = parse_job("{\n  \"prompt\": \"x\",\n  \"steps\": \"four\"\n}").unwrap_err();
        assert_eq!(err.field, "steps");
        assert_eq!(err.line, 3);
        assert!(err.message.contains("invalid type"), "{}", err.message);
    }

    #[test]
    fn missing_prompt_is_reported() {
        let err = parse_job(r#"{"steps": 4}"#).unwrap_err();
        assert!(err.message.contains("missing field `prompt`"), "{}", err.message);
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        let err = parse_job(r#"{"prompt": "x"} {"prompt": "y"}"#).unwrap_err();
        assert!(err.message.contains("trailing"));
        assert_eq!(err.column, 17);
    }

    #[test]
    fn both_reads_agree_on_valid_and_invalid_jobs() {
        let cases = [
            r#"{"prompt": "a cat", "steps": 2, "loras": [{"name": "a", "scale": 0.5}]}"#,
            r#"{"prompt": "x"}   "#,
            r#"{"prompt": "x", "seed": -1}"#,
            r#"{"prompt": "x"} x"#,
            r#"{"prompt": "x", "loras": [{"name": "a", "scael": 1}]}"#,
            "",
        ];
        for json in cases {
            assert_eq!(parse_job(json).ok(), explain_failure(json).ok(), "{json}");
        }
    }

    #[test]
    fn jsonl_skips_blank_and_comment_lines() {
        assert!(parse_jsonl_line("   ").is_none());
        assert!(parse_jsonl_line("# a comment").is_none());
        assert!(parse_jsonl_line(r#"{"prompt":"x"}"#).unwrap().is_ok());
    }
}
