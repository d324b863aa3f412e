//! Reading the prompt file as a stream of rows, each with its 1-based line number.
//!
//! Four formats: JSONL (one object per line), CSV with a header, plain text (one prompt per
//! line) and templates (one prompt program per line, `#` lines are comments). Rows are read one at a time, so memory does not grow with the file.

use std::fs::File;
use std::io::{BufRead, BufReader, Lines};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::csv_row::CsvRows;
use crate::error::BulkError;

pub use fleet_status::bulk_runs::InputFormat;

/// One input row: its fields as a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based line of the row in the input file.
    pub line: usize,
    /// `prompt`, overrides, `key`, `metadata`.
    pub fields: Map<String, Value>,
}

/// One problem with one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowError {
    /// 1-based line of the row.
    pub line: usize,
    /// The field at fault (`.` for the row itself).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.field, self.message)
    }
}

impl RowError {
    /// A problem with the row as a whole.
    pub fn row(line: usize, message: impl Into<String>) -> RowError {
        RowError { line, field: ".".to_owned(), message: message.into() }
    }
}

/// What reading one row gives: the row, or every problem found in it.
pub type RowResult = Result<Row, Vec<RowError>>;

/// Rows, one at a time.
pub type Rows = Box<dyn Iterator<Item = RowResult> + Send>;

/// Opens `path` and streams its rows.
pub fn read_rows(path: &Path, format: InputFormat) -> Result<Rows, BulkError> {
    let file = File::open(path).map_err(|e| BulkError::io(path, e))?;
    rows_from(BufReader::with_capacity(1 << 16, file), format)
}

/// Streams the rows of any reader: a file, or bytes in memory (tests, the fuzz target).
pub fn rows_from<R: BufRead + Send + 'static>(reader: R, format: InputFormat) -> Result<Rows, BulkError> {
    Ok(match format {
        InputFormat::Jsonl => Box::new(LineRows { lines: reader.lines(), line: 0, parse: jsonl_row }),
        InputFormat::Text => Box::new(LineRows { lines: reader.lines(), line: 0, parse: text_row }),
        InputFormat::Csv => Box::new(CsvRows::new(reader)?),
        InputFormat::Template => Box::new(LineRows { lines: reader.lines(), line: 0, parse: template_row }),
    })
}

/// Rows of a line-oriented format (JSONL, text).
struct LineRows<R> {
    lines: Lines<R>,
    line: usize,
    /// `None` for lines that hold no row (blank lines, JSONL comments).
    parse: fn(&str, usize) -> Option<RowResult>,
}

impl<R: BufRead> Iterator for LineRows<R> {
    type Item = RowResult;

    fn next(&mut self) -> Option<RowResult> {
        loop {
            self.line += 1;
            let text = match self.lines.next()? {
                Ok(text) => text,
                Err(e) => return Some(Err(vec![RowError::row(self.line, format!("unreadable line: {e}"))])),
            };
            if let Some(row) = (self.parse)(&text, self.line) {
                return Some(row);
            }
        }
    }
}

fn jsonl_row(text: &str, line: usize) -> Option<RowResult> {
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    Some(match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Object(fields)) => Ok(Row { line, fields }),
        Ok(_) => Err(vec![RowError::row(line, "expected a JSON object")]),
        Err(e) => Err(vec![RowError::row(line, format!("bad JSON: {}", strip_position(&e.to_string())))]),
    })
}

fn text_row(text: &str, line: usize) -> Option<RowResult> {
    let prompt = text.trim();
    if prompt.is_empty() {
        return None;
    }
    let mut fields = Map::new();
    fields.insert("prompt".to_owned(), Value::from(prompt));
    Some(Ok(Row { line, fields }))
}

fn template_row(text: &str, line: usize) -> Option<RowResult> {
    let template = text.trim();
    if template.is_empty() || template.starts_with('#') {
        return None;
    }
    let mut fields = Map::new();
    fields.insert("template".to_owned(), Value::from(template));
    Some(Ok(Row { line, fields }))
}

/// serde_json appends " at line L column C"; the row's own line is what the user needs.
pub(crate) fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}
