//! Job JSON → `JobSpec` → validation, as the dispatcher, `fleet validate` and the workers run it.
//! Besides "never panics": a job that validates survives a JSON round trip unchanged (what the
//! dispatcher publishes is what a worker reads back), and the array form is parsed like the API does.

#![no_main]

use libfuzzer_sys::fuzz_target;

fn check(text: &str, limits: &fleet_core::Limits) {
    let Ok(spec) = fleet_core::parse_job(text) else { return };
    let Ok(valid) = spec.validate(limits) else { return };
    let json = serde_json::to_string(valid.spec()).expect("a valid job serialises");
    let back = fleet_core::parse_job(&json).expect("a valid job's own JSON parses");
    assert_eq!(&back, valid.spec(), "round trip changed the job: {json}");
    assert!(back.validate(limits).is_ok(), "round trip made the job invalid: {json}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let limits = fleet_core::Limits { allowed_image_buckets: vec!["controls".into()], ..Default::default() };
    check(text, &limits);
    let _ = fleet_core::parse::parse_jsonl_line(text);
    // `POST /v1/jobs` with an array: each element re-serialised and parsed on its own.
    if let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(text) {
        for item in items.iter().take(64) {
            check(&item.to_string(), &limits);
        }
    }
});
