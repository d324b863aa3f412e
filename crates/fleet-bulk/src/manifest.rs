//! The Parquet manifest of a shard, `NNNNN_manifest.parquet`: one row per sample (failed ones
//! too), the fields of `KEY.json` as typed columns, so pandas, pyarrow, DuckDB or Spark read a
//! dataset's metadata without opening a tar.
//!
//! Written with the parquet crate's column writers (no Arrow): each column's values with their
//! definition levels (and repetition levels for the LoRA list), one row group per shard,
//! uncompressed (a manifest is small next to its shard's images).

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, FloatType, Int64Type};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader as _, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::{Field, Row};
use serde_json::{Map, Value};

use crate::error::BulkError;
use crate::record::SampleRecord;

/// The manifest's schema, in the order the columns are written. Integers are 64-bit (`seed` as
/// unsigned), timestamps microseconds in UTC, `metadata` the row's JSON object as text.
const SCHEMA: &str = "
message sample {
  required binary key (STRING);
  required int64 shard;
  required int64 line;
  required binary status (STRING);
  required binary prompt (STRING);
  optional binary negative_prompt (STRING);
  optional int64 seed (INTEGER(64,false));
  required binary model (STRING);
  required group loras (LIST) {
    repeated group list {
      required group element {
        required binary name (STRING);
        required float scale;
      }
    }
  }
  optional group controlnet {
    required binary model (STRING);
    required float scale;
    required float start;
    required float end;
  }
  required int64 steps;
  required float guidance;
  required int64 width;
  required int64 height;
  required binary format (STRING);
  optional binary sha256 (STRING);
  optional int64 bytes;
  optional binary phash (STRING);
  optional binary duplicate_of (STRING);
  optional int64 duplicate_distance;
  optional binary job_id (STRING);
  optional binary worker (STRING);
  required group timings {
    optional int64 submitted_at (TIMESTAMP(MICROS,true));
    optional int64 started_at (TIMESTAMP(MICROS,true));
    optional int64 finished_at (TIMESTAMP(MICROS,true));
    optional double queue_seconds;
    optional double run_seconds;
  }
  optional group error {
    required binary code (STRING);
    required binary message (STRING);
  }
  optional binary metadata (JSON);
}
";

/// One leaf column's values and levels.
enum Values {
    Str(Vec<ByteArray>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

struct Column {
    values: Values,
    /// Definition levels (absent for required columns).
    def: Option<Vec<i16>>,
    /// Repetition levels (the LoRA list only).
    rep: Option<Vec<i16>>,
}

/// A column with one value per record: `None` is null (the column, or its group, is optional).
fn column<T>(
    records: &[SampleRecord],
    optional: bool,
    get: impl Fn(&SampleRecord) -> Option<T>,
    wrap: fn(Vec<T>) -> Values,
) -> Column {
    let mut values = Vec::with_capacity(records.len());
    let mut def = Vec::with_capacity(records.len());
    for record in records {
        match get(record) {
            Some(value) => {
                values.push(value);
                def.push(1);
            }
            None => def.push(0),
        }
    }
    Column { values: wrap(values), def: optional.then_some(def), rep: None }
}

fn text(value: &str) -> ByteArray {
    ByteArray::from(value.as_bytes().to_vec())
}

fn micros(at: Option<DateTime<Utc>>) -> Option<i64> {
    at.map(|at| at.timestamp_micros())
}

/// The LoRA list's two leaf columns: an empty list is one null entry, the entries of a list
/// after its first repeat at level 1.
fn lora_columns(records: &[SampleRecord]) -> [Column; 2] {
    let (mut names, mut scales, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for record in records {
        if record.loras.is_empty() {
            def.push(0);
            rep.push(0);
        }
        for (i, lora) in record.loras.iter().enumerate() {
            names.push(text(lora.label()));
            scales.push(lora.scale);
            def.push(1);
            rep.push(i16::from(i > 0));
        }
    }
    [
        Column { values: Values::Str(names), def: Some(def.clone()), rep: Some(rep.clone()) },
        Column { values: Values::F32(scales), def: Some(def), rep: Some(rep) },
    ]
}

/// Every leaf column of [`SCHEMA`], in its order.
fn columns(records: &[SampleRecord]) -> Vec<Column> {
    use Values::{F32, F64, I64, Str};
    let metadata =
        |r: &SampleRecord| (!r.metadata.is_empty()).then(|| text(&Value::Object(r.metadata.clone()).to_string()));
    let [lora_names, lora_scales] = lora_columns(records);
    vec![
        column(records, false, |r| Some(text(&r.key)), Str),
        column(records, false, |r| Some(r.shard as i64), I64),
        column(records, false, |r| Some(r.line as i64), I64),
        column(records, false, |r| Some(text(r.status.as_str())), Str),
        column(records, false, |r| Some(text(&r.prompt)), Str),
        column(records, true, |r| r.negative_prompt.as_deref().map(text), Str),
        // The u64 seed's bits, which the column's unsigned annotation reads back as u64.
        column(records, true, |r| r.seed.map(|s| s as i64), I64),
        column(records, false, |r| Some(text(&r.model)), Str),
        lora_names,
        lora_scales,
        column(records, true, |r| r.controlnet.as_ref().map(|c| text(&c.model)), Str),
        column(records, true, |r| r.controlnet.as_ref().map(|c| c.scale), F32),
        column(records, true, |r| r.controlnet.as_ref().map(|c| c.start), F32),
        column(records, true, |r| r.controlnet.as_ref().map(|c| c.end), F32),
        column(records, false, |r| Some(i64::from(r.steps)), I64),
        column(records, false, |r| Some(r.guidance), F32),
        column(records, false, |r| Some(i64::from(r.width)), I64),
        column(records, false, |r| Some(i64::from(r.height)), I64),
        column(records, false, |r| Some(text(&r.format)), Str),
        column(records, true, |r| r.sha256.as_deref().map(text), Str),
        column(records, true, |r| r.bytes.map(|b| b as i64), I64),
        column(records, true, |r| r.phash.as_deref().map(text), Str),
        column(records, true, |r| r.duplicate_of.as_deref().map(text), Str),
        column(records, true, |r| r.duplicate_distance.map(i64::from), I64),
        column(records, true, |r| r.job_id.map(|id| text(&id.to_string())), Str),
        column(records, true, |r| r.worker.as_deref().map(text), Str),
        column(records, true, |r| micros(r.timings.submitted_at), I64),
        column(records, true, |r| micros(r.timings.started_at), I64),
        column(records, true, |r| micros(r.timings.finished_at), I64),
        column(records, true, |r| r.timings.queue_seconds, F64),
        column(records, true, |r| r.timings.run_seconds, F64),
        column(records, true, |r| r.error.as_ref().map(|e| text(e.code.name())), Str),
        column(records, true, |r| r.error.as_ref().map(|e| text(&e.message)), Str),
        column(records, true, metadata, Str),
    ]
}

fn parquet_error(source: ParquetError) -> BulkError {
    BulkError::Parquet { what: "manifest".into(), source }
}

/// The manifest of `records` as a Parquet file's bytes.
pub fn write_manifest(records: &[SampleRecord]) -> Result<Vec<u8>, BulkError> {
    let schema = Arc::new(parquet::schema::parser::parse_message_type(SCHEMA).map_err(parquet_error)?);
    let properties = Arc::new(
        WriterProperties::builder().set_created_by(format!("fleet-bulk {}", env!("CARGO_PKG_VERSION"))).build(),
    );
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, properties).map_err(parquet_error)?;
    let mut group = writer.next_row_group().map_err(parquet_error)?;
    for column in columns(records) {
        let mut leaf = group
            .next_column()
            .map_err(parquet_error)?
            .ok_or_else(|| BulkError::Config("manifest: more columns than the schema has".into()))?;
        let (def, rep) = (column.def.as_deref(), column.rep.as_deref());
        match &column.values {
            Values::Str(v) => leaf.typed::<ByteArrayType>().write_batch(v, def, rep),
            Values::I64(v) => leaf.typed::<Int64Type>().write_batch(v, def, rep),
            Values::F32(v) => leaf.typed::<FloatType>().write_batch(v, def, rep),
            Values::F64(v) => leaf.typed::<DoubleType>().write_batch(v, def, rep),
        }
        .map_err(parquet_error)?;
        leaf.close().map_err(parquet_error)?;
    }
    if group.next_column().map_err(parquet_error)?.is_some() {
        return Err(BulkError::Config("manifest: fewer columns than the schema has".into()));
    }
    group.close().map_err(parquet_error)?;
    writer.into_inner().map_err(parquet_error)
}

/// The records of a Parquet manifest file, in row order: for checks and small tools.
pub fn read_manifest(path: &Path) -> Result<Vec<SampleRecord>, BulkError> {
    let what = path.display().to_string();
    let error = |source| BulkError::Parquet { what: what.clone(), source };
    let file = std::fs::File::open(path).map_err(|e| BulkError::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(error)?;
    let mut records = Vec::new();
    for row in reader.get_row_iter(None).map_err(error)? {
        let mut object = row_to_json(&row.map_err(error)?);
        // `metadata` is the row's object as JSON text.
        if let Some(Value::String(text)) = object.remove("metadata") {
            let metadata: Map<String, Value> =
                serde_json::from_str(&text).map_err(|e| BulkError::json(format!("{what}: metadata"), e))?;
            object.insert("metadata".into(), Value::Object(metadata));
        }
        records.push(serde_json::from_value(Value::Object(object)).map_err(|e| BulkError::json(&what, e))?);
    }
    Ok(records)
}

/// A row as the JSON object `KEY.json` holds (nulls left out, as the record's serializer does).
fn row_to_json(row: &Row) -> Map<String, Value> {
    row.get_column_iter().filter_map(|(name, field)| field_to_json(field).map(|value| (name.clone(), value))).collect()
}

fn field_to_json(field: &Field) -> Option<Value> {
    Some(match field {
        Field::Null => return None,
        Field::Str(s) => Value::String(s.clone()),
        Field::Long(n) => Value::from(*n),
        Field::ULong(n) => Value::from(*n),
        Field::Float(f) => Value::from(f64::from(*f)),
        Field::Double(f) => Value::from(*f),
        Field::TimestampMicros(us) => {
            Value::String(DateTime::<Utc>::from_timestamp_micros(*us)?.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        }
        Field::Group(row) => Value::Object(row_to_json(row)),
        Field::ListInternal(list) => Value::Array(list.elements().iter().filter_map(field_to_json).collect()),
        other => Value::String(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use fleet_core::{ErrorCode, LoraRef};
    use serde_json::json;

    use super::*;
    use crate::record::{ControlNetRecord, SampleError, SampleState, SampleTimings};

    fn record(key: &str, loras: &[(&str, f32)]) -> SampleRecord {
        SampleRecord {
            key: key.into(),
            shard: 3,
            line: 7,
            status: SampleState::Succeeded,
            prompt: format!("a prompt for {key}, with \"quotes\" and ünïcode"),
            negative_prompt: None,
            seed: Some(u64::MAX - 5),
            model: "tiny".into(),
            loras: loras.iter().map(|(name, scale)| LoraRef::library(*name, *scale)).collect(),
            controlnet: None,
            steps: 4,
            guidance: 1.25,
            width: 64,
            height: 48,
            format: "png".into(),
            sha256: Some("ab".repeat(32)),
            bytes: Some(1234),
            phash: Some("00ff00ff00ff00ff".into()),
            duplicate_of: None,
            duplicate_distance: None,
            job_id: Some(uuid::Uuid::now_v7()),
            worker: Some("w-1".into()),
            timings: SampleTimings::default(),
            error: None,
            metadata: Map::new(),
        }
    }

    #[test]
    fn a_manifest_reads_back_as_the_records_it_was_written_from() {
        let now = Utc::now();
        let mut full = record("full", &[("ink", 0.5), ("style", -1.75)]);
        full.negative_prompt = Some("blurry".into());
        full.controlnet = Some(ControlNetRecord { model: "canny".into(), scale: 0.8, start: 0.0, end: 0.5 });
        full.timings = SampleTimings {
            submitted_at: Some(now),
            started_at: Some(now + chrono::Duration::milliseconds(1500)),
            finished_at: Some(now + chrono::Duration::milliseconds(2750)),
            queue_seconds: Some(1.5),
            run_seconds: Some(1.25),
        };
        full.timings.truncate_to_micros();
        full.metadata = json!({"source": "test", "n": [1, 2.5, null]}).as_object().unwrap().clone();
        let mut failed = record("failed", &[]);
        (failed.status, failed.seed, failed.sha256, failed.bytes, failed.worker) =
            (SampleState::Failed, None, None, None, None);
        failed.error = Some(SampleError { code: ErrorCode::UnknownLora, message: "no LoRA `ink`".into() });
        let mut duplicate = record("dup", &[]);
        duplicate.mark_duplicate("full", 3);
        let records = vec![full, failed, record("one-lora", &[("ink", 1.0)]), duplicate];

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.parquet");
        std::fs::write(&path, write_manifest(&records).unwrap()).unwrap();
        assert_eq!(read_manifest(&path).unwrap(), records);
        std::fs::write(&path, write_manifest(&[]).unwrap()).unwrap();
        assert!(read_manifest(&path).unwrap().is_empty());
    }

    #[test]
    fn a_file_that_is_not_parquet_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00001_manifest.parquet");
        std::fs::write(&path, b"{\"key\": \"x\"}\n").unwrap();
        let error = read_manifest(&path).unwrap_err().to_string();
        assert!(error.contains("00001_manifest.parquet"), "{error}");
    }
}
