//! Bad input through the command line: a non-zero exit naming the line and field, and nothing
//! submitted.

use base64::Engine as _;

use super::{client, fleet, run, start_dispatcher};

/// fleet-core's fixtures: a valid 16×16 PNG, and a PNG bomb declaring 100,000 × 100,000 pixels.
const GOOD_PNG: &[u8] = include_bytes!("../../../fleet-core/tests/fixtures/control-16x16.png");
const BOMB_PNG: &[u8] = include_bytes!("../../../fleet-core/tests/fixtures/control-bomb-100000x100000.png");

#[test]
fn validate_names_each_hostile_line_and_exits_1() {
    let good = GOOD_PNG;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let control = |image: String| {
        serde_json::json!({"prompt": "x", "controlnet": {"model": "canny", "image": image}}).to_string()
    };
    let lines = [
        r#"{"prompt": "fine"}"#.to_owned(),
        r#"{"prompt": "nul\u0000byte"}"#.to_owned(),
        r#"{"prompt": "x", "loras": [{"name": "../../etc/passwd"}]}"#.to_owned(),
        r#"{"prompt": "x", "loras": [{"name": "/abs/path"}]}"#.to_owned(),
        r#"{"prompt": "x", "width": 100000, "num_images": 99}"#.to_owned(),
        control(b64(BOMB_PNG)),
        control(b64(&good[..good.len() / 2])),
        control(b64(b"not an image")),
        r#"{"prompt": "\ud800"}"#.to_owned(),
        r#"{"prompt": "x""#.to_owned(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let (code, stdout, stderr) = run(fleet().args(["validate", path.to_str().unwrap()]));
    let out = format!("{stdout}{stderr}");
    assert_eq!(code, 1, "{out}");
    for expected in [
        ":2: prompt: contains the control character",
        ":3: loras[0].name: must be a library name",
        ":4: loras[0].name: must be a library name",
        ":5: width:",
        ":5: num_images:",
        ":6: controlnet.image: inline image is 100000×100000 pixels",
        ":7: controlnet.image: inline image is not a readable PNG",
        ":8: controlnet.image: inline image is neither PNG, JPEG nor WebP",
        ":9: prompt:",
        ":10: ?: EOF while parsing an object",
    ] {
        assert!(out.contains(expected), "no `{expected}` in:\n{out}");
    }
    assert!(!out.contains(":1:"), "line 1 is valid:\n{out}");

    // Bytes that are not UTF-8: an error naming the file, not a panic.
    let path = dir.path().join("latin1.jsonl");
    std::fs::write(&path, b"{\"prompt\": \"caf\xe9\"}\n").unwrap();
    let (code, stdout, stderr) = run(fleet().args(["validate", path.to_str().unwrap()]));
    assert!(code == 1 || code == 2, "{stdout}{stderr}");
    assert!(format!("{stdout}{stderr}").contains("latin1.jsonl"), "{stdout}{stderr}");
}

#[test]
fn submit_of_a_bad_job_exits_non_zero_and_queues_nothing() {
    let (base, _runtime) = start_dispatcher();
    let client = |args: &[&str]| client(&base, args);
    for args in [
        &["submit", "--prompt", "x", "--model", "no-such-model"][..],
        &["submit", "--prompt", "x", "--model", "tiny", "--lora", "../etc/passwd"],
        &["submit", "--prompt", "x", "--model", "tiny", "--num-images", "17"],
        &["submit", "--prompt", "x", "--model", "tiny", "--width", "4096"],
        &["submit", "--prompt", "bell\u{7}", "--model", "tiny"],
    ] {
        let (code, stdout, stderr) = client(args);
        assert_ne!(code, 0, "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains("invalid_spec") || stderr.contains("error"), "{args:?}: {stderr}");
    }
    let (code, stdout, _) = client(&["jobs", "--json"]);
    assert_eq!(code, 0);
    let page: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(page["jobs"], serde_json::json!([]), "nothing was accepted");
}
