//! The `fleet bulk` readers (JSONL, CSV, text, templates; the first byte picks one) and the step
//! from row to sample: overrides merged, prompt programs parsed and expanded (or drawn), keys and
//! seeds derived, every job validated.
//!
//! The reader, sample and plan sources of fleet-bulk are compiled here as they are (`#[path]`),
//! with a stand-in for the crate's error type: depending on fleet-bulk would build the whole
//! fleet (S3, RabbitMQ, Redis clients, the engine) with coverage instrumentation.

#![no_main]
#![allow(dead_code)]

#[path = "../../crates/fleet-bulk/src/csv_row.rs"]
mod csv_row;
#[path = "../../crates/fleet-bulk/src/input.rs"]
mod input;
#[path = "../../crates/fleet-bulk/src/plan.rs"]
mod plan;
#[path = "../../crates/fleet-bulk/src/sample.rs"]
mod sample;
#[path = "../../crates/fleet-bulk/src/template.rs"]
mod template;

/// The variants of `fleet_bulk::error::BulkError` that the reader sources use.
mod error {
    #[derive(Debug)]
    pub enum BulkError {
        Config(String),
        Input(String),
        Io { path: String, source: std::io::Error },
    }

    impl BulkError {
        pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> BulkError {
            BulkError::Io { path: path.as_ref().display().to_string(), source }
        }
    }
}

use input::{InputFormat, rows_from};
use libfuzzer_sys::fuzz_target;
use plan::ShardPlan;
use sample::{SampleFactory, SampleSettings};

const FORMATS: [InputFormat; 4] = [InputFormat::Jsonl, InputFormat::Csv, InputFormat::Text, InputFormat::Template];

/// Samples looked at per input: a program may expand to 2^40 prompts.
const MAX_SAMPLES: usize = 10_000;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else { return };
    let format = FORMATS[usize::from(selector % 4)];
    let Ok(rows) = rows_from(std::io::Cursor::new(input.to_vec()), format) else { return };
    let settings = SampleSettings {
        run: "fuzz".into(),
        seed: u64::from(selector),
        seeds_per_prompt: u32::from(selector / 3 % 3) + 1,
        defaults: serde_json::Map::new(),
        plan: ShardPlan { shard_size: 7 },
        models: None,
        // Both ways of expanding programs; `{__name__}` lists are never found.
        samples: (selector & 0x80 != 0).then_some(5),
        list_dir: "/nonexistent-fleet-fuzz".into(),
    };
    let mut factory = SampleFactory::new(settings, fleet_core::FleetConfig::default());
    let mut last_line = 0;
    let mut seen = 0;
    for row in rows.take(10_000) {
        factory.push_row(row);
        while let Some(sample) = factory.next_sample() {
            seen += 1;
            if seen > MAX_SAMPLES {
                return;
            }
            // Line numbers never go backwards; a sample's job, when it has one, is valid.
            assert!(sample.line >= last_line || sample.line == 0, "line {} after {last_line}", sample.line);
            last_line = last_line.max(sample.line);
            if let Ok(job) = &sample.job {
                let limits = fleet_core::FleetConfig::default().limits_for(&job.model);
                assert!(job.clone().validate(&limits).is_ok(), "sample job does not validate: {job:?}");
            }
        }
    }
});
