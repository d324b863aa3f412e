//! `fleet generate --from-image`: an image made again from its own metadata, bit-identical with
//! the same model, LoRA and ControlNet files, in each of the three formats.

use std::path::{Path, PathBuf};

use super::{fleet, run};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fleet-engine/tests/fixtures")
}

fn pixels(path: &Path) -> image::RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}

/// `fleet generate` on the tiny fixture model with a LoRA file and a canny ControlNet.
fn generate(out: &Path, control_image: &Path, extra: &[&str]) {
    let fx = fixtures();
    let lora = format!("{}:0.5", fx.join("extras/lora_kohya.safetensors").display());
    let mut c = fleet();
    c.args(["generate", "--model"]).arg(fx.join("tiny-sdxl"));
    c.args(["--prompt", "a cat", "--negative-prompt", "blur", "--guidance", "1.5", "--width", "64", "--height"]);
    c.args(["48", "--steps", "2", "--seed", "11", "--lora", &lora]);
    c.arg("--controlnet").arg(fx.join("extras/tiny-controlnet")).arg("--control-image").arg(control_image);
    c.args(["--control-scale", "0.7", "--control-end", "0.6", "--control-preprocess", "canny:80:160"]);
    c.args(extra).arg("--out").arg(out);
    let (code, stdout, stderr) = run(&mut c);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

fn from_image(file: &Path, out: &Path) -> (i32, String, String) {
    run(fleet().args(["generate", "--from-image"]).arg(file).arg("--out").arg(out))
}

#[test]
fn an_image_with_a_lora_and_a_controlnet_is_made_again_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let control = fixtures().join("extras/control_a.png");

    // One PNG: the same bytes, metadata included.
    let first = dir.path().join("one.png");
    generate(&first, &control, &[]);
    let again = dir.path().join("again.png");
    let (code, stdout, stderr) = from_image(&first, &again);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&first).unwrap(), "the same file");

    // The second image of a two-image WebP: alone, the same pixels.
    generate(&dir.path().join("two.webp"), &control, &["--num-images", "2"]);
    let second = dir.path().join("two_1.webp");
    let alone = dir.path().join("alone.png");
    let (code, stdout, stderr) = from_image(&second, &alone);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(pixels(&alone), pixels(&second), "image 1 of 2 made again alone");
    assert_ne!(pixels(&alone), pixels(&dir.path().join("two_0.webp")), "its own seed, not the first's");

    // A JPEG's comment holds the parameters too: JPEG again gives the same bytes.
    let jpg = dir.path().join("one.jpg");
    generate(&jpg, &control, &["--quality", "80"]);
    let jpg_again = dir.path().join("again.jpg");
    let (code, stdout, stderr) =
        run(fleet().args(["generate", "--quality", "80", "--from-image"]).arg(&jpg).arg("--out").arg(&jpg_again));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(std::fs::read(&jpg_again).unwrap(), std::fs::read(&jpg).unwrap());
}

/// An image a worker encodes (`fleet generate --jobs` renders and encodes jobs as workers do)
/// records the configured model name; `--from-image` finds it in `[models]`.
#[test]
fn a_jobs_image_is_made_again_through_the_configured_model() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.jsonl");
    let job = r#"{"prompt": "a lighthouse", "negative_prompt": "fog", "guidance": 2.5, "model": "tiny", "width": 64, "height": 72, "steps": 2, "seed": 9, "num_images": 2, "output": {"format": "webp"}}"#;
    std::fs::write(&file, job).unwrap();
    let out = dir.path().join("out");
    let (code, stdout, stderr) = run(fleet().args(["generate", "--jobs"]).arg(&file).arg("--out").arg(&out));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let again = dir.path().join("again.png");
    let (code, stdout, stderr) = from_image(&out.join("1_1.webp"), &again);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(pixels(&again), pixels(&out.join("1_1.webp")), "the job's second image, made again alone");
}

#[test]
fn from_image_names_what_is_missing_or_different() {
    let dir = tempfile::tempdir().unwrap();
    // A file without fleet metadata.
    let plain = dir.path().join("plain.png");
    image::RgbImage::new(8, 8).save(&plain).unwrap();
    let (code, _, stderr) = from_image(&plain, &dir.path().join("x.png"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("plain.png has no fleet metadata"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The control image changed since: its SHA-256 no longer matches.
    let control = dir.path().join("control.png");
    std::fs::copy(fixtures().join("extras/control_a.png"), &control).unwrap();
    let made = dir.path().join("made.png");
    generate(&made, &control, &[]);
    std::fs::copy(fixtures().join("extras/control_b.png"), &control).unwrap();
    let (code, _, stderr) = from_image(&made, &dir.path().join("y.png"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("control.png has SHA-256") && stderr.contains("was made with one whose"), "{stderr}");

    // Generation flags are the image's own: --prompt is refused beside --from-image.
    let (code, _, stderr) =
        run(fleet().args(["generate", "--prompt", "a dog", "--from-image"]).arg(&made).args(["--out", "z.png"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}
