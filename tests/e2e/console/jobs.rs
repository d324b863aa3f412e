//! The console's job pages beyond the first prompt: cancelling a running job, and a job with a LoRA
//! from the worker's library.

use std::time::Duration;

use fleet_core::JobState;
use fleet_e2e::fleet::Fleet;
use fleet_e2e::{E2E_KEY, isolated_config};
use serde_json::json;

use super::{DESKTOP, show, sign_in, signed_in};
use crate::browser::Browser;

/// A LoRA for the tiny model in the library as `<dir>/<name>.safetensors`: the engine's kohya
/// fixture (random, UNet and both text encoders; made by `tools/make_reference.py --extras-only`).
fn library_lora(dir: &std::path::Path, name: &str) {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/fleet-engine/tests/fixtures/extras/lora_kohya.safetensors");
    std::fs::copy(&fixture, dir.join(format!("{name}.safetensors"))).expect("the engine's LoRA fixture");
}

const STATE: &str = "return document.getElementById('job-state').textContent";

/// The job id the page shows, once the form has opened it.
async fn opened_job(browser: &Browser) -> uuid::Uuid {
    let hash = browser.wait_until("the job page", "return location.hash.startsWith('#/job/') && location.hash").await;
    hash.as_str().unwrap_or_default().trim_start_matches("#/job/").parse().expect("a job id")
}

/// The stored bytes of a finished job's first image.
async fn first_image(fleet: &Fleet, id: uuid::Uuid) -> Vec<u8> {
    let status = fleet.wait_all(&[id], Duration::from_secs(240)).await.remove(0);
    assert_eq!(status.state, JobState::Succeeded, "{status:?}");
    let store = fleet_storage::ImageStore::from_config(&fleet.config.s3).await.unwrap();
    store.get(&status.result[0].key).await.unwrap().expect("the stored image").body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn console_cancels_a_running_job_and_runs_one_with_a_library_lora() {
    let library = tempfile::tempdir().unwrap();
    library_lora(library.path(), "style");
    let mut config = isolated_config();
    config.library.lora_dir = library.path().to_path_buf();
    let fleet = Fleet::start(config, 1).await;
    let browser = Browser::start(DESKTOP.0, DESKTOP.1).await;
    sign_in(&browser, &fleet.base, E2E_KEY).await;
    signed_in(&browser).await;

    // A long job (16 images of 8 steps), cancelled from its page while it runs.
    browser.fill("#prompt", "a long job, cancelled").await;
    browser.select("#model", "tiny").await;
    browser.select("#steps", "8").await;
    // 512²: at 256² the faster engine ends all 16 images in about a second.
    browser.fill("#width", "512").await;
    browser.fill("#height", "512").await;
    browser.fill("#num_images", "16").await;
    browser.click("#submit-form button[type=submit]").await;
    let id = opened_job(&browser).await;
    browser
        .wait_until_for(
            "a running step",
            "return document.getElementById('job-step').textContent.startsWith('step ')",
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(browser.attr("#job-cancel", "hidden").await, None, "a running job offers Cancel");
    browser.click("#job-cancel").await;
    browser.wait_until("the page to show it cancelled", &format!("{STATE} === 'cancelled'")).await;
    let status = fleet.status(id).await;
    assert_eq!(status.state, JobState::Cancelled, "{status:?}");
    assert!(status.progress.images_done < 16, "it stopped before the end: {:?}", status.progress);
    assert_eq!(browser.attr("#job-cancel", "hidden").await.as_deref(), Some("true"), "nothing left to cancel");
    assert_eq!(browser.text("#job-error").await, "", "a cancellation is not shown as an error");
    let stopped = browser.text("#job-step").await;
    assert!(stopped.starts_with("cancelled ") && stopped.contains(", at step "), "when and where: {stopped}");
    assert!(browser.text("#job-params").await.contains("Cancelled"), "the time it was cancelled");

    // A job with a LoRA from the library: offered by name, generated with it, shown with its scale.
    show(&browser, "#/submit").await;
    browser.wait_until("the submit page", "return !document.getElementById('page-submit').hidden").await;
    let offered = browser.eval("return [...document.querySelectorAll('#lora-names option')].map(o => o.value)").await;
    assert_eq!(offered, json!(["style"]), "the library's LoRAs are offered");
    browser.fill("#prompt", "a lighthouse in style").await;
    browser.select("#steps", "2").await;
    browser.fill("#width", "64").await;
    browser.fill("#height", "64").await;
    browser.fill("#num_images", "1").await;
    browser.fill("#seed", "77").await;
    browser.click("#add-lora").await;
    browser.fill("#loras li .lora-name", "style").await;
    browser.fill("#loras li .lora-scale", "0.75").await;
    browser.click("#submit-form button[type=submit]").await;
    let id = opened_job(&browser).await;
    browser.wait_until_for("succeeded", &format!("{STATE} === 'succeeded'"), Duration::from_secs(240)).await;
    browser
        .wait_until(
            "the image shown",
            "return [...document.querySelectorAll('#job-images img')].some(i => i.complete && i.naturalWidth === 64)",
        )
        .await;
    let params = browser.text("#job-params").await;
    for expected in ["a lighthouse in style", "LoRAs", "style × 0.75", "64×64", "77"] {
        assert!(params.contains(expected), "parameters show {expected}: {params}");
    }
    let command = browser.eval("return document.getElementById('job-command').value").await;
    assert!(command.as_str().unwrap_or_default().ends_with("--seed 77 --num-images 1 --lora style:0.75"), "{command}");

    // The worker really fused it: the same job through the API gives the same pixels, and without
    // the LoRA different ones.
    let console_image = first_image(&fleet, id).await;
    let job = |loras| json!({"prompt": "a lighthouse in style", "model": "tiny", "steps": 2, "width": 64, "height": 64, "seed": 77, "loras": loras});
    let with = fleet.submit(job(json!([{"name": "style", "scale": 0.75}]))).await.id;
    let without = fleet.submit(job(json!([]))).await.id;
    let pixels = |png: &[u8]| image::load_from_memory(png).unwrap().to_rgb8();
    assert!(pixels(&first_image(&fleet, with).await) == pixels(&console_image), "same job, same pixels");
    assert!(pixels(&first_image(&fleet, without).await) != pixels(&console_image), "the LoRA changed the image");

    browser.close().await;
    fleet.stop().await;
}
