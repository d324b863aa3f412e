//! CSV input: a header naming the columns, cells turned into the JSON the job fields expect.

use std::io::Read;

use serde_json::{Map, Value};

use crate::error::BulkError;
use crate::input::{Row, RowError, RowResult, strip_position};

/// Columns holding whole numbers.
const INTEGER_COLUMNS: [&str; 5] = ["steps", "width", "height", "seed", "num_images"];
/// Columns holding JSON (objects or arrays).
const JSON_COLUMNS: [&str; 3] = ["metadata", "controlnet", "output"];

/// Streams the rows of a CSV file (or any reader).
pub struct CsvRows<R> {
    records: csv::StringRecordsIntoIter<R>,
    header: Vec<String>,
}

impl<R: Read> CsvRows<R> {
    /// Reads the header; an unreadable one fails the whole input.
    pub fn new(reader: R) -> Result<CsvRows<R>, BulkError> {
        let mut csv = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(reader);
        let header = csv
            .headers()
            .map_err(|e| BulkError::Input(format!("CSV header: {e}")))?
            .iter()
            .map(|h| h.trim().to_owned())
            .collect::<Vec<_>>();
        if !header.iter().any(|h| h == "prompt") {
            return Err(BulkError::Input("CSV header has no `prompt` column".into()));
        }
        Ok(CsvRows { records: csv.into_records(), header })
    }
}

impl<R: Read> Iterator for CsvRows<R> {
    type Item = RowResult;

    fn next(&mut self) -> Option<RowResult> {
        let record = self.records.next()?;
        Some(match record {
            Ok(record) => {
                let line = record.position().map_or(0, |p| p.line() as usize);
                convert(&self.header, &record, line)
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                Err(vec![RowError::row(line, format!("bad CSV row: {e}"))])
            }
        })
    }
}

/// One record as a JSON object; empty cells are left out so defaults apply.
fn convert(header: &[String], record: &csv::StringRecord, line: usize) -> RowResult {
    let mut fields = Map::new();
    let mut errors = Vec::new();
    for (name, cell) in header.iter().zip(record.iter()) {
        if cell.is_empty() && name != "prompt" {
            continue;
        }
        match cell_value(name, cell) {
            Ok(value) => {
                fields.insert(name.clone(), value);
            }
            Err(message) => errors.push(RowError { line, field: name.clone(), message }),
        }
    }
    if errors.is_empty() { Ok(Row { line, fields }) } else { Err(errors) }
}

fn cell_value(column: &str, cell: &str) -> Result<Value, String> {
    let cell = if column == "prompt" || column == "negative_prompt" { cell } else { cell.trim() };
    if INTEGER_COLUMNS.contains(&column) {
        return cell.parse::<u64>().map(Value::from).map_err(|_| format!("`{cell}` is not a whole number"));
    }
    if column == "guidance" {
        return cell.parse::<f64>().map(Value::from).map_err(|_| format!("`{cell}` is not a number"));
    }
    if JSON_COLUMNS.contains(&column) || (column == "loras" && cell.starts_with('[')) {
        return serde_json::from_str(cell).map_err(|e| format!("bad JSON: {}", strip_position(&e.to_string())));
    }
    if column == "loras" {
        return loras_cell(cell);
    }
    Ok(Value::from(cell))
}

/// `name[:scale]` items separated by `;` (or a JSON array, handled by the caller).
fn loras_cell(cell: &str) -> Result<Value, String> {
    let mut loras = Vec::new();
    for item in cell.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let mut lora = Map::new();
        let (name, scale) = fleet_core::names::parse_name_scale(item).map_err(|e| format!("LoRA {e}"))?;
        lora.insert("name".into(), Value::from(name));
        if let Some(scale) = scale {
            lora.insert("scale".into(), Value::from(scale));
        }
        loras.push(Value::Object(lora));
    }
    Ok(Value::Array(loras))
}
