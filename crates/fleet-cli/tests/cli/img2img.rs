//! Image-to-image and inpainting from the command line: `fleet generate --init-image --strength
//! --mask-image [--latents]` gives the engine's pixels, records its inputs so `--from-image`
//! makes the image again (or says which file it needs), and refuses a strength that keeps no step
//! before loading anything; `fleet submit` sends the same flags as a job.

use std::path::{Path, PathBuf};

use fleet_engine::candle_core::{DType, Device, Tensor};
use fleet_engine::init_image::{init_image_tensor, mask_tensor};
use fleet_engine::{InitInput, ModelSource, Pipeline};

use super::{client, fleet, run, start_dispatcher};

fn inputs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fleet-engine/tests/fixtures/img2img")
}

/// `fleet generate` on the built-in tiny model, 64×64, 4 steps, seed 3, with `extra` flags.
fn generate(out: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut c = fleet();
    c.args(["generate", "--model", "tiny", "--prompt", "a harbour at noon", "--width", "64", "--height", "64"]);
    c.args(["--steps", "4", "--seed", "3"]).args(extra).arg("--out").arg(out);
    run(&mut c)
}

fn from_image(file: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    run(fleet().args(["generate", "--from-image"]).arg(file).args(extra).arg("--out").arg(out))
}

fn pixels(path: &Path) -> image::RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}

/// The tiny model's image for the same job, run directly on the engine.
fn engine_image(init: &Path, strength: f64, mask: Option<&Path>, latents: Option<Tensor>) -> image::RgbImage {
    let spec: fleet_core::JobSpec = serde_json::from_value(serde_json::json!({
        "prompt": "a harbour at noon", "model": "tiny", "width": 64, "height": 64, "steps": 4, "seed": 3
    }))
    .unwrap();
    let mut request = fleet_render::job_request(&spec);
    let mut input = InitInput::new(init_image_tensor(&std::fs::read(init).unwrap(), 64, 64).unwrap(), strength);
    input.mask = mask.map(|m| mask_tensor(&std::fs::read(m).unwrap(), 64, 64).unwrap());
    request.init = Some(input);
    request.latents = latents;
    let pipe = Pipeline::load(&ModelSource::Tiny, &Device::Cpu, DType::F32).unwrap();
    pipe.generate(&request, &mut |_| {}).unwrap().images.remove(0)
}

#[test]
fn generate_image_to_image_and_inpainting_give_the_engines_pixels_and_are_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let start = dir.path().join("start.png");
    let mask = dir.path().join("mask.png");
    std::fs::copy(inputs().join("init_a.png"), &start).unwrap();
    std::fs::copy(inputs().join("mask_irregular.png"), &mask).unwrap();
    let (start_flag, mask_flag) = (start.display().to_string(), mask.display().to_string());

    let img2img = dir.path().join("img2img.png");
    let (code, stdout, stderr) = generate(&img2img, &["--init-image", &start_flag, "--strength", "0.5"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(pixels(&img2img) == engine_image(&start, 0.5, None, None), "fleet generate = the engine");
    let text = String::from_utf8_lossy(&std::fs::read(&img2img).unwrap()).into_owned();
    assert!(text.contains("Denoising strength: 0.5, Init image: \""), "the A1111 text says so");

    let inpainted = dir.path().join("inpainted.webp");
    let flags = ["--init-image", &start_flag, "--strength", "1", "--mask-image", &mask_flag];
    let (code, stdout, stderr) = generate(&inpainted, &flags);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(pixels(&inpainted) == engine_image(&start, 1.0, Some(&mask), None), "fleet generate = the engine");
    assert!(pixels(&inpainted) != pixels(&img2img));

    // The recorded init image, strength and mask make each image again, byte for byte.
    for (made, name) in [(&img2img, "again.png"), (&inpainted, "again.webp")] {
        let again = dir.path().join(name);
        let (code, stdout, stderr) = from_image(made, &again, &[]);
        assert_eq!(code, 0, "{stdout}{stderr}");
        assert!(std::fs::read(&again).unwrap() == std::fs::read(made).unwrap(), "{}", made.display());
    }

    // A moved init image is named, and found again with --init-image; a changed one is refused.
    let moved = dir.path().join("moved.png");
    std::fs::rename(&start, &moved).unwrap();
    let (code, _, stderr) = from_image(&inpainted, &dir.path().join("x.png"), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot read the init image") && stderr.contains("--init-image FILE"), "{stderr}");
    let again = dir.path().join("moved-again.webp");
    let (code, stdout, stderr) = from_image(&inpainted, &again, &["--init-image", &moved.display().to_string()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // The same pixels; the new file records where its init image is now.
    assert!(pixels(&again) == pixels(&inpainted), "made again from the moved init image");
    assert!(String::from_utf8_lossy(&std::fs::read(&again).unwrap()).contains("moved.png"));
    std::fs::copy(inputs().join("mask_rect.png"), &mask).unwrap();
    let (code, _, stderr) =
        from_image(&inpainted, &dir.path().join("y.png"), &["--init-image", &moved.display().to_string()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("the mask image") && stderr.contains("has SHA-256"), "{stderr}");

    // The strength is the image's own; an image made without an init image takes none.
    let (code, _, stderr) = from_image(&img2img, &dir.path().join("z.png"), &["--strength", "0.9"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    let plain = dir.path().join("plain.png");
    let (code, stdout, stderr) = generate(&plain, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, _, stderr) = from_image(&plain, &dir.path().join("w.png"), &["--mask-image", &mask_flag]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("was made without an init image"), "{stderr}");
}

#[test]
fn generate_image_to_image_takes_its_unit_noise_from_a_latents_file() {
    let dir = tempfile::tempdir().unwrap();
    let start = inputs().join("init_a.png");
    let noise = Tensor::randn(0f32, 1.0, (1, 4, 8, 8), &Device::Cpu).unwrap();
    let latents = dir.path().join("noise.safetensors");
    fleet_engine::candle_core::safetensors::save(
        &std::collections::HashMap::from([("latents", noise.clone())]),
        &latents,
    )
    .unwrap();
    let out = dir.path().join("out.png");
    let flags = ["--init-image", start.to_str().unwrap(), "--strength", "0.75", "--latents", latents.to_str().unwrap()];
    let (code, stdout, stderr) = generate(&out, &flags);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(pixels(&out) == engine_image(&start, 0.75, None, Some(noise)), "the file's noise, not the seed's");
    assert!(pixels(&out) != engine_image(&start, 0.75, None, None));
}

#[test]
fn a_strength_that_keeps_no_step_is_refused_naming_the_minimum_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let start = inputs().join("init_a.png");
    // The model folder does not exist: the strength is refused before it would be loaded.
    let (code, _, stderr) = run(fleet()
        .args(["generate", "--model", "/no/such/model", "--prompt", "x", "--steps", "4", "--strength", "0.2"])
        .arg("--init-image")
        .arg(&start)
        .arg("--out")
        .arg(dir.path().join("x.png")));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("keeps no step of 4") && stderr.contains("strength >= 0.25 for 4 steps"), "{stderr}");
    let (code, _, stderr) = run(fleet()
        .args(["generate", "--model", "tiny", "--prompt", "x", "--mask-image"])
        .arg(inputs().join("mask_rect.png"))
        .arg("--out")
        .arg(dir.path().join("y.png")));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--mask-image needs --init-image"), "{stderr}");
}

#[test]
fn submit_sends_the_init_image_strength_and_mask() {
    let (base, _runtime) = start_dispatcher();
    let client = |args: &[&str]| client(&base, args);
    let start = inputs().join("init_a.png");
    let mask = inputs().join("mask_rect.png");
    let (start, mask) = (start.to_str().unwrap(), mask.to_str().unwrap());
    let job = ["submit", "--prompt", "a harbour", "--model", "tiny", "--width", "64", "--height", "64", "--steps", "4"];
    let flags = ["--init-image", start, "--strength", "0.5", "--mask-image", mask];
    let (code, stdout, stderr) = client(&[&job[..], &flags[..]].concat());
    assert_eq!(code, 0, "{stdout}{stderr}");
    let id = stdout.split_whitespace().next().unwrap().to_owned();
    let (code, stdout, _) = client(&["status", &id, "--json"]);
    assert_eq!(code, 0, "{stdout}");
    let record: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let request = &record["request"];
    let sha = |path: &str| fleet_core::request_record::sha256_hex(&std::fs::read(path).unwrap());
    assert_eq!(request["init_image"]["image"], "inline", "{request}");
    assert_eq!(request["init_image"]["image_sha256"], sha(start).as_str());
    assert_eq!(request["mask_image"]["image_sha256"], sha(mask).as_str());
    assert_eq!(request["strength"], 0.5);
    let (_, stdout, _) = client(&["status", &id]);
    assert!(stdout.contains(&format!("  init image: inline (sha256 {}), strength 0.5", sha(start))), "{stdout}");
    assert!(stdout.contains(&format!("  mask image: inline (sha256 {})", sha(mask))), "{stdout}");
    client(&["cancel", &id]);

    // Too small a strength for the step count: `invalid_spec` naming the minimum.
    let (code, _, stderr) = client(&[&job[..], &["--init-image", start, "--strength", "0.2"][..]].concat());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("invalid_spec") && stderr.contains("must be at least 0.25 for 4 steps"), "{stderr}");
    // --strength and --mask-image need --init-image.
    let (code, _, stderr) = client(&[&job[..], &["--strength", "0.5"][..]].concat());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--init-image"), "{stderr}");
}
