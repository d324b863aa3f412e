//! The web console (`/ui`) in headless Chromium against a real dispatcher and tiny-model worker:
//! what a person does with it, checked through the page as they would see it.

use std::time::Duration;

use fantoccini::key::Key;
use fleet_core::FleetConfig;
use fleet_core::config::ApiKeyConfig;
use fleet_e2e::{E2E_KEY, isolated_config};
use serde_json::json;

use crate::browser::Browser;
use fleet_e2e::fleet::Fleet;

mod admin;
mod jobs;

/// A second, non-admin tenant.
const OTHER_KEY: &str = "e2e-other-tenant-key-0002";
const DESKTOP: (u32, u32) = (1280, 900);

fn two_tenants() -> FleetConfig {
    let mut config = isolated_config();
    config.http.api_keys.push(ApiKeyConfig { key: OTHER_KEY.into(), tenant: "other".into(), admin: false });
    config
}

/// Opens the console and signs in from the keyboard (Enter in the key field).
async fn sign_in(browser: &Browser, base: &str, key: &str) {
    browser.goto(&format!("{base}/ui/")).await;
    browser.wait_until("the sign-in form", "return !document.getElementById('page-login').hidden").await;
    browser.fill("#api-key", &format!("{key}{}", char::from(Key::Enter))).await;
}

async fn signed_in(browser: &Browser) {
    browser
        .wait_until(
            "the submit page after signing in",
            "return !document.getElementById('page-submit').hidden && document.getElementById('model').options.length > 0",
        )
        .await;
}

async fn show(browser: &Browser, hash: &str) {
    browser.eval(&format!("location.hash = '{hash}'; return true")).await;
}

const CARDS: &str = "return document.querySelectorAll('#jobs-list li').length";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn console_submits_a_prompt_follows_it_live_and_shows_and_opens_the_image() {
    let mut fleet = Fleet::start(two_tenants(), 0).await;
    let browser = Browser::start(DESKTOP.0, DESKTOP.1).await;
    sign_in(&browser, &fleet.base, E2E_KEY).await;
    signed_in(&browser).await;
    assert!(browser.text("#tenant").await.contains("e2e"));
    assert_eq!(browser.attr("#nav-fleet", "hidden").await, None, "an admin key sees the Fleet page");

    let prompt = "a tiny lighthouse at dusk";
    browser.fill("#prompt", prompt).await;
    browser.select("#model", "tiny").await;
    browser.select("#steps", "8").await;
    browser.fill("#width", "128").await;
    browser.fill("#height", "96").await;
    browser.fill("#seed", "4242").await;
    browser.fill("#num_images", "2").await;
    browser.screenshot("console-submit").await;
    // Record every state and step text the page shows, to see it change live.
    browser
        .eval(
            "window.seen = []; const note = () => window.seen.push(document.getElementById('job-state').textContent + ' ' + document.getElementById('job-step').textContent);
             new MutationObserver(note).observe(document.getElementById('page-job'), {subtree: true, childList: true, characterData: true}); return true",
        )
        .await;
    browser.click("#submit-form button[type=submit]").await;
    let hash = browser.wait_until("the job page", "return location.hash.startsWith('#/job/') && location.hash").await;
    let id: uuid::Uuid = hash.as_str().unwrap_or_default().trim_start_matches("#/job/").parse().expect("a job id");
    // No worker yet: the job waits in the queue, and the page says so.
    browser.wait_until("queued", "return document.getElementById('job-state').textContent === 'queued'").await;
    browser
        .wait_until(
            "the waiting_for hint",
            "return document.getElementById('job-step').textContent === 'waiting: no worker serves model tiny; none has been seen'",
        )
        .await;
    fleet.add_worker().await;
    browser
        .wait_until_for(
            "succeeded",
            "return document.getElementById('job-state').textContent === 'succeeded'",
            Duration::from_secs(240),
        )
        .await;
    browser
        .wait_until(
            "both images shown",
            "return [...document.querySelectorAll('#job-images img')].filter(i => i.complete && i.naturalWidth === 128 && i.naturalHeight === 96).length === 2",
        )
        .await;
    let seen: Vec<String> = serde_json::from_value(browser.eval("return window.seen").await).unwrap();
    let states: Vec<&str> = seen.iter().filter_map(|s| s.split(' ').next()).filter(|s| !s.is_empty()).collect();
    assert_eq!(states.first(), Some(&"queued"), "{seen:?}");
    assert!(seen.iter().any(|s| s.starts_with("running step")), "live steps were shown: {seen:?}");
    assert_eq!(browser.eval("return document.getElementById('job-progress').value").await, json!(1));
    assert_eq!(browser.text("#job-step").await, "2/2 images");
    browser.screenshot("console-job").await;

    let params = browser.text("#job-params").await;
    for expected in [prompt, "tiny", "128×96", "4242, 4243", "Tenant"] {
        assert!(params.contains(expected), "parameters show {expected}: {params}");
    }
    let command = browser.eval("return document.getElementById('job-command').value").await;
    assert_eq!(
        command.as_str().unwrap_or_default(),
        format!(
            "fleet submit --prompt '{prompt}' --model tiny --steps 8 --width 128 --height 96 --seed 4242 --num-images 2"
        )
    );

    // The image link is the presigned URL (no API key in it) and serves the stored bytes.
    let status = fleet.status(id).await;
    let href = browser.attr("#job-images a", "href").await.expect("an image link");
    assert!(href.starts_with(&fleet_e2e::s3_endpoint()) && !href.contains(E2E_KEY), "{href}");
    let store = fleet_storage::ImageStore::from_config(&fleet.config.s3).await.unwrap();
    let stored = store.get(&status.result[0].key).await.unwrap().expect("stored image").body;
    let served = fleet.http.get(&href).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(served.as_ref(), stored.as_slice());
    // Opening it (a new tab) shows the picture.
    let console_tab = browser.client.window().await.unwrap();
    browser.click("#job-images a").await;
    let mut image_tab = None;
    for _ in 0..100 {
        image_tab = browser.client.windows().await.unwrap().into_iter().find(|w| *w != console_tab);
        if image_tab.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let image_tab = image_tab.expect("the image opened in a new tab");
    browser.client.switch_to_window(image_tab).await.unwrap();
    browser
        .wait_until("the opened image", "return document.contentType === 'image/png' && document.images[0] && document.images[0].naturalWidth === 128")
        .await;
    browser.client.close_window().await.unwrap();
    browser.client.switch_to_window(console_tab).await.unwrap();

    // The gallery lists it with its prompt and picture, and filters by status.
    show(&browser, "#/jobs").await;
    browser.wait_until("the job in the gallery", CARDS).await;
    assert!(browser.text("#jobs-list").await.contains(prompt));
    browser
        .wait_until(
            "its thumbnail",
            "return [...document.querySelectorAll('#jobs-list img')].some(i => i.complete && i.naturalWidth > 0)",
        )
        .await;
    browser.screenshot("console-jobs").await;
    browser.select("#jobs-state", "failed").await;
    browser.wait_until("no failed jobs", "return !document.getElementById('jobs-empty').hidden").await;
    browser.select("#jobs-state", "succeeded").await;
    browser.wait_until("the succeeded job", CARDS).await;

    // The admin page: the model's queues, the dead-letter queue, and the live worker.
    show(&browser, "#/fleet").await;
    browser
        .wait_until("the worker row", "return document.getElementById('workers').textContent.includes('tiny')")
        .await;
    let queues = browser.text("#queues").await;
    assert!(queues.contains(".tiny.interactive") && queues.contains("(dead letters)"), "{queues}");
    assert_eq!(browser.text("#dead-summary").await, format!("{} is empty.", fleet.config.rabbitmq.dead_letter_queue));

    browser.close().await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn console_refuses_a_wrong_key_pages_jobs_and_keeps_tenants_apart() {
    let fleet = Fleet::start(two_tenants(), 0).await;
    let mut ids = Vec::new();
    for i in 0..13 {
        // Submitted through the API, not the console: the page shows the request the status keeps.
        let job = json!({"prompt": format!("queued job {i}"), "model": "tiny", "width": 64, "height": 64, "steps": 1});
        ids.push(fleet.submit(job).await.id);
    }
    let browser = Browser::start(DESKTOP.0, DESKTOP.1).await;

    sign_in(&browser, &fleet.base, "not-a-key").await;
    let alert = browser
        .wait_until(
            "the refusal",
            "return !document.getElementById('alert').hidden && document.getElementById('alert').textContent",
        )
        .await;
    assert!(alert.as_str().unwrap_or_default().contains("API key is not accepted"), "{alert}");
    assert_eq!(browser.attr("#page-login", "hidden").await, None, "still on the sign-in page");
    assert_eq!(browser.eval("return sessionStorage.length").await, json!(0), "a refused key is not kept");
    browser.screenshot("console-wrong-key").await;

    // Paging: 13 jobs are a full page of 12 and one more, newest first.
    sign_in(&browser, &fleet.base, E2E_KEY).await;
    signed_in(&browser).await;
    show(&browser, "#/jobs").await;
    browser.wait_until("a full first page", &format!("{CARDS} === 12")).await;
    assert!(browser.text("#jobs-list").await.contains("queued job 12"));
    browser.click("#jobs-next").await;
    browser.wait_until("the second page", &format!("{CARDS} === 1")).await;
    assert!(browser.text("#jobs-list").await.contains("queued job 0"));
    assert_eq!(browser.text("#jobs-page").await, "Page 2");
    browser.click("#jobs-prev").await;
    browser.wait_until("the first page again", &format!("{CARDS} === 12")).await;
    browser.select("#jobs-state", "running").await;
    browser.wait_until("no running jobs", "return !document.getElementById('jobs-empty').hidden").await;

    // Signing out forgets the key; another tenant sees none of these jobs and no admin page.
    browser.click("#sign-out").await;
    browser.wait_until("the sign-in form", "return !document.getElementById('page-login').hidden").await;
    assert_eq!(browser.eval("return sessionStorage.length").await, json!(0));
    sign_in(&browser, &fleet.base, OTHER_KEY).await;
    signed_in(&browser).await;
    assert!(browser.text("#tenant").await.contains("other"));
    assert_eq!(browser.attr("#nav-fleet", "hidden").await.as_deref(), Some("true"));
    show(&browser, "#/jobs").await;
    browser.wait_until("an empty gallery", "return !document.getElementById('jobs-empty').hidden").await;
    assert_eq!(browser.eval(CARDS).await, json!(0));
    show(&browser, &format!("#/job/{}", ids[0])).await;
    let alert = browser
        .wait_until(
            "not found",
            "return !document.getElementById('alert').hidden && document.getElementById('alert').textContent",
        )
        .await;
    assert!(alert.as_str().unwrap_or_default().contains("not_found"), "{alert}");
    assert_eq!(browser.attr("#page-job", "hidden").await.as_deref(), Some("true"), "only the error, no job panel");
    assert!(!browser.text("main").await.contains("queued job"), "nothing of the other tenant's job is shown");
    let url = browser.client.current_url().await.unwrap();
    assert!(!url.as_str().contains(OTHER_KEY) && !url.as_str().contains(E2E_KEY), "no key in the URL: {url}");

    browser.close().await;
    fleet.stop().await;
}

/// Every form control has a label; keyboard focus lands where the work is; a phone-width window
/// needs no sideways scrolling; field errors from the API appear next to their field.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn console_is_labelled_keyboard_friendly_and_fits_a_phone() {
    let fleet = Fleet::start(isolated_config(), 0).await;
    let browser = Browser::start(390, 844).await;
    sign_in(&browser, &fleet.base, E2E_KEY).await;
    signed_in(&browser).await;
    assert_eq!(browser.eval("return document.activeElement.id").await, json!("submit-title"));
    browser.click("#add-lora").await;
    assert_eq!(browser.eval("return document.activeElement.className").await, json!("lora-name"));
    let unlabelled = browser
        .eval("return [...document.querySelectorAll('input, select, textarea')].filter(e => e.labels.length === 0).map(e => e.id || e.outerHTML)")
        .await;
    assert_eq!(unlabelled, json!([]), "form controls without a label");
    let overflow = "return document.documentElement.scrollWidth <= window.innerWidth";
    assert_eq!(browser.eval(overflow).await, json!(true), "the submit page fits a phone");
    browser.screenshot("console-phone").await;

    // An empty prompt is caught in the page; a width the API refuses is shown at the width field.
    browser.click("#loras li .remove").await;
    browser.click("#submit-form button[type=submit]").await;
    assert_eq!(browser.eval("return document.activeElement.id").await, json!("prompt"));
    assert_ne!(browser.text("#prompt-error").await, "");
    browser.fill("#prompt", "a lighthouse").await;
    browser.fill("#width", "100").await;
    browser.click("#submit-form button[type=submit]").await;
    let error =
        browser.wait_until("the width error", "return document.getElementById('width-error').textContent").await;
    assert!(error.as_str().unwrap_or_default().contains("multiple of 8"), "{error}");
    assert_eq!(browser.eval("return document.activeElement.id").await, json!("width"));
    assert_eq!(browser.attr("#width", "aria-invalid").await.as_deref(), Some("true"));

    show(&browser, "#/jobs").await;
    browser.wait_until("the jobs page", "return document.activeElement.id === 'jobs-title'").await;
    assert_eq!(browser.eval(overflow).await, json!(true), "the jobs page fits a phone");

    browser.close().await;
    fleet.stop().await;
}
