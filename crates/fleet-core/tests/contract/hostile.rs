//! Hostile input to parsing and validation: control characters, broken Unicode, names that are
//! paths or URLs, control images that are bombs, truncated or not images. Each is refused with
//! the field it is in; none panics. Inputs the fuzzers (`fuzz/`) found are kept here too.

use base64::Engine as _;
use fleet_core::validate::{ControlImageSource, InlineImageKind, parse_control_image};
use fleet_core::{JobSpec, Limits, parse_job};

/// A file of `tests/fixtures/`: `control-16x16.png` (a valid PNG) and
/// `control-bomb-100000x100000.png` (18 KB whose header declares 100,000 × 100,000 RGB pixels,
/// 30 GB decoded; made with Python's zlib: IHDR, one IDAT of 64 zero rows, IEND).
pub fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn field_errors(json: &str) -> Vec<(String, String)> {
    let spec = parse_job(json).unwrap_or_else(|e| panic!("{json} parses: {e}"));
    match spec.validate(&Limits::default()) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0.into_iter().map(|e| (e.field, e.message)).collect(),
    }
}

#[test]
fn control_characters_in_prompts_are_refused_with_their_field() {
    let errors = field_errors(r#"{"prompt": "a cat\u0000; rm -rf /", "negative_prompt": "\u001b[31mred"}"#);
    let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(fields, ["prompt", "negative_prompt"], "{errors:?}");
    assert!(errors[0].1.contains("control character '\\0' at byte 5"), "{errors:?}");
    assert!(field_errors("{\"prompt\": \"two lines\\nand a\\ttab\\r\\n\"}").is_empty(), "whitespace is fine");
}

#[test]
fn broken_unicode_escapes_are_parse_errors_naming_the_field() {
    for text in [r#"{"prompt": "\ud800"}"#, r#"{"prompt": "\udc00x"}"#, r#"{"prompt": "\u12"}"#] {
        let err = parse_job(text).unwrap_err();
        assert_eq!(err.field, "prompt", "{text}: {err}");
    }
}

#[test]
fn library_names_that_are_paths_or_urls_are_refused() {
    let bad = ["/", "a/b", "..", "../x", "/etc/passwd", "C:\\x", "a\\b", "http://x/y", ".hidden", "~/x", "x\0y", ""];
    for name in bad {
        let mut spec = JobSpec::new("x");
        spec.model = name.to_owned();
        spec.loras = vec![fleet_core::LoraRef::library(name, 1.0)];
        spec.controlnet = Some(fleet_core::ControlNetSpec {
            model: name.to_owned(),
            image: b64(&fixture("control-16x16.png")),
            scale: 0.5,
            start: 0.0,
            end: 1.0,
        });
        let fields: Vec<String> =
            spec.validate(&Limits::default()).unwrap_err().0.into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["model", "loras[0].name", "controlnet.model"], "{name:?}");
    }
}

#[test]
fn control_images_come_only_inline_or_from_allowed_buckets() {
    let limits = Limits { allowed_image_buckets: vec!["controls".into()], ..Limits::default() };
    for reference in [
        "http://169.254.169.254/latest/meta-data/",
        "https://example.com/a.png",
        "file:///etc/passwd",
        "/etc/passwd",
        "s3://elsewhere/a.png",
        "s3:///a.png",
        "data:image/svg+xml;base64,PHN2Zy8+",
    ] {
        assert!(parse_control_image(reference, &limits).is_err(), "{reference} was accepted");
    }
    let ok = parse_control_image(&format!("data:image/png;base64,{}", b64(&fixture("control-16x16.png"))), &limits);
    assert!(matches!(ok, Ok(ControlImageSource::Inline { kind: InlineImageKind::Png, .. })), "{ok:?}");
}

#[test]
fn control_images_that_are_bombs_truncated_or_not_images_are_refused() {
    let limits = Limits::default();
    let bomb = fixture("control-bomb-100000x100000.png");
    let err = parse_control_image(&b64(&bomb), &limits).unwrap_err();
    assert!(err.contains("100000×100000 pixels"), "{err}");

    let good = fixture("control-16x16.png");
    for cut in [good.len() - 20, good.len() / 2, 40, 8] {
        let err = parse_control_image(&b64(&good[..cut]), &limits).unwrap_err();
        assert!(err.contains("not a readable PNG"), "truncated at {cut}: {err}");
    }
    let mut corrupt = good.clone();
    corrupt[60] ^= 0xff;
    assert!(parse_control_image(&b64(&corrupt), &limits).is_err(), "a flipped byte in the image data");

    let fake_png = [b"\x89PNG\r\n\x1a\n".as_slice(), b"not really"].concat();
    assert!(parse_control_image(&b64(&fake_png), &limits).unwrap_err().contains("not a readable PNG"));
    let fake_jpeg = [[0xFF, 0xD8, 0xFF, 0xE0].as_slice(), &[0u8; 64]].concat();
    assert!(parse_control_image(&b64(&fake_jpeg), &limits).unwrap_err().contains("not a readable JPEG"));
    assert!(parse_control_image(&b64(b"GIF89a"), &limits).unwrap_err().contains("neither PNG, JPEG nor WebP"));
    assert!(parse_control_image("not base64 at all!", &limits).unwrap_err().contains("not valid base64"));
}
