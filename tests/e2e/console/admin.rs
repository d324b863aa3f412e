//! The console's admin views of things outside one job: bulk runs as `fleet bulk` records them, and
//! the dead-letter queue's messages.

use fleet_bulk::api::ApiClient;
use fleet_bulk::{InputFormat, Layout, RunConfig, RunState, Session};
use fleet_e2e::fleet::Fleet;
use fleet_e2e::{E2E_KEY, unique};
use lapin::options::{BasicGetOptions, BasicNackOptions};
use serde_json::{Value, json};

use super::{DESKTOP, OTHER_KEY, show, sign_in, signed_in, two_tenants};
use crate::browser::Browser;

/// A job the broker dead-letters: submitted with no worker running, then taken and handed back
/// unfinished (a crash loop) until `delivery_limit` (1) is exceeded.
async fn dead_lettered_job(fleet: &Fleet) -> uuid::Uuid {
    let id = fleet
        .submit(json!({"prompt": "a job that kills workers", "model": "tiny", "width": 64, "height": 64}))
        .await
        .id;
    let connection =
        lapin::Connection::connect(&fleet.config.rabbitmq.url, lapin::ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = format!("{}.tiny.interactive@e2e", fleet.config.rabbitmq.queue_prefix);
    let mut deliveries = 0;
    while let Some(msg) = channel.basic_get(&queue, BasicGetOptions { no_ack: false }).await.unwrap() {
        deliveries += 1;
        assert!(deliveries <= 5, "the broker keeps redelivering the job");
        msg.delivery.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await.unwrap();
    }
    connection.close(200, "done").await.unwrap();
    assert_eq!(deliveries, 2, "delivery_limit 1: the second return dead-letters it");
    id
}

/// Follows the first link in table body `TABLE` in one script step (no stale element in between).
const FOLLOW_LINK: &str = "document.querySelector('#TABLE a').click(); return true";

/// A definition list's terms and their values.
async fn terms(browser: &Browser, id: &str) -> std::collections::BTreeMap<String, String> {
    let script = format!(
        "const e = [...document.getElementById('{id}').children].map(c => c.textContent);
         return e.filter((_, i) => i % 2 === 0).map((t, i) => [t, e[2 * i + 1]])"
    );
    serde_json::from_value::<Vec<(String, String)>>(browser.eval(&script).await).unwrap().into_iter().collect()
}

/// 5 prompts, the last with a LoRA no worker has (a failed sample), in shards of 2.
fn bulk_run(name: &str, dir: &std::path::Path) -> RunConfig {
    let input = dir.join("prompts.jsonl");
    let mut rows: Vec<String> = (0..4).map(|i| json!({"prompt": format!("bulk console {i}")}).to_string()).collect();
    rows.push(json!({"prompt": "needs a missing LoRA", "loras": [{"name": "absent"}]}).to_string());
    std::fs::write(&input, rows.join("\n")).unwrap();
    RunConfig {
        name: name.to_owned(),
        input,
        input_format: InputFormat::Jsonl,
        out: dir.join("dataset").display().to_string(),
        layout: Layout::WebDataset,
        shard_size: 2,
        seeds_per_prompt: 1,
        seed: 3,
        defaults: json!({"model": "tiny", "width": 64, "height": 64, "steps": 1}).as_object().unwrap().clone(),
        max_in_flight: 10,
        skip_invalid: false,
        local: false,
        samples: None,
        dedup_hamming: None,
        keep_jobs: false,
    }
}

/// Asserts that `served` holds exactly the fields of `written` (fleet-bulk's JSON), with equal values.
fn same_fields(what: &str, served: &Value, written: &Value) {
    let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
    assert_eq!(keys(served), keys(written), "{what}: the API's fields are fleet-bulk's");
    for key in keys(written) {
        assert_eq!(served[&key], written[&key], "{what}.{key}");
    }
}

/// A run written by fleet-bulk's own code reads back through `GET /v1/bulk/runs` field for field.
async fn check_api_reads_the_run(fleet: &Fleet, name: &str) {
    let (run, snapshot) = fleet_bulk::status(name, None, &fleet.config).await.unwrap();
    let get = |path: String| async move {
        let resp = fleet.http.get(format!("{}{path}", fleet.base)).bearer_auth(E2E_KEY).send().await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json::<Value>().await.unwrap()
    };
    let served = get(format!("/v1/bulk/runs/{name}")).await;
    let written = serde_json::to_value(&run).unwrap();
    same_fields("config", &served["config"], &written["config"]);
    same_fields("input", &served["input"], &written["input"]);
    same_fields("totals", &served["totals"], &written["totals"]);
    for field in ["state", "started_at", "finished_at", "fleet_version"] {
        assert_eq!(served[field], written[field], "{field}");
    }
    let mut progress = served["progress"].clone();
    assert_eq!(progress["waiting"], json!(snapshot.waiting()));
    assert_eq!(progress["failed_by_code"], json!({"unknown_lora": 1}), "the LoRA-less row's code");
    progress.as_object_mut().unwrap().remove("waiting");
    same_fields("progress", &progress, &serde_json::to_value(&snapshot).unwrap());
    assert_eq!(served["unfinished_jobs"], json!(0));
    let list = get("/v1/bulk/runs".into()).await;
    let listed = list["runs"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{list}");
    assert_eq!(listed[0]["name"], json!(name));
    assert_eq!(listed[0]["progress"], served["progress"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn console_shows_admins_bulk_runs_and_dead_letters() {
    let mut config = two_tenants();
    config.rabbitmq.delivery_limit = 1;
    let mut fleet = Fleet::start(config, 0).await;
    let dead = dead_lettered_job(&fleet).await;
    fleet.add_worker().await;

    let dir = tempfile::tempdir().unwrap();
    let name = unique("console-run");
    let session = Session {
        config: fleet.config.clone(),
        api: Some(ApiClient::new(&fleet.base, E2E_KEY).unwrap()),
        on_progress: None,
    };
    let run = fleet_bulk::start(bulk_run(&name, dir.path()), &session).await.unwrap();
    assert_eq!((run.state, run.totals.succeeded, run.totals.failed, run.totals.shards), (RunState::Finished, 4, 1, 3));
    check_api_reads_the_run(&fleet, &name).await;

    // taller than the other tests' window: the fleet page's screenshot reaches its dead letters
    let browser = Browser::start(DESKTOP.0, DESKTOP.1 + 300).await;
    sign_in(&browser, &fleet.base, E2E_KEY).await;
    signed_in(&browser).await;
    assert_eq!(browser.attr("#nav-bulk", "hidden").await, None, "an admin key sees Bulk runs");

    // The fleet page lists the dead-lettered job, with its tenant and why (the broker's delivery limit).
    show(&browser, "#/fleet").await;
    let row = browser
        .wait_until(
            "the dead letter",
            &format!("return document.getElementById('dead-letters').textContent.includes('{dead}') && document.getElementById('dead-letters').textContent"),
        )
        .await;
    let row = row.as_str().unwrap_or_default();
    let job_queue = format!("{}.tiny.interactive@e2e", fleet.config.rabbitmq.queue_prefix);
    for expected in ["e2e", "tiny", "crashed", "delivery limit", job_queue.as_str()] {
        assert!(row.contains(expected), "the dead letter shows {expected}: {row}");
    }
    assert!(browser.text("#dead-summary").await.starts_with("1 message(s)"));
    browser
        .wait_until("the worker row", "return document.getElementById('workers').textContent.includes('tiny')")
        .await;
    browser.screenshot("console-fleet").await;
    // Looking (every refresh) did not take it off the queue; its link opens the job, failed as
    // dead-lettered. (Links are followed from a script: the page re-renders its tables every 5 s.)
    let resp = fleet.http.get(format!("{}/v1/dead-letters", fleet.base)).bearer_auth(E2E_KEY).send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["depth"], json!(1));
    browser.eval(FOLLOW_LINK.replace("TABLE", "dead-letters").as_str()).await;
    browser
        .wait_until("the dead-lettered job", "return document.getElementById('job-state').textContent === 'failed'")
        .await;
    assert!(browser.text("#job-error").await.starts_with("dead_lettered"));

    // The bulk-run list, then the run itself.
    show(&browser, "#/bulk").await;
    let cells = browser
        .wait_until(
            "the run's row",
            "const rows = [...document.querySelectorAll('#bulk-runs tr')]; return rows.length && rows.map(r => [...r.cells].map(c => c.textContent))",
        )
        .await;
    let row: Vec<String> = serde_json::from_value(cells[0].clone()).unwrap();
    let out = dir.path().join("dataset").display().to_string();
    assert_eq!(row, [name.as_str(), "finished", "4 / 5", "1", "0", "3 / 3", "–", out.as_str(), &row[8]], "{cells}");
    browser.screenshot("console-bulk").await;
    browser.eval(FOLLOW_LINK.replace("TABLE", "bulk-runs").as_str()).await;
    browser
        .wait_until(
            "the run's page",
            &format!("return document.getElementById('bulk-run-title').textContent === 'Bulk run {name}'"),
        )
        .await;
    assert_eq!(browser.text("#bulk-run-state").await.to_lowercase(), "finished");
    assert_eq!(browser.eval("return document.getElementById('bulk-run-progress').value").await, json!(1));
    let counts = terms(&browser, "bulk-run-counts").await;
    for (term, value) in
        [("Succeeded", "4 (80.0 %)"), ("Failed", "1 (20.0 %)"), ("Shards", "3 / 3"), ("Unfinished jobs", "0")]
    {
        assert_eq!(counts.get(term).map(String::as_str), Some(value), "{counts:?}");
    }
    assert_eq!(counts["Pending"], "0 (queued 0, running 0, not yet submitted 0)");
    assert_eq!(counts["Failures by code"], "unknown_lora 1", "{counts:?}");
    let params = terms(&browser, "bulk-run-params").await;
    assert_eq!(params["Output"], out);
    assert_eq!(params["Layout"], "WebDataset shards");
    assert_eq!(params["Where"], "through the fleet");
    assert!(params["Input"].ends_with("(jsonl, 5 rows, 0 invalid)"), "{params:?}");
    assert_eq!(params["Samples"], "5 (1 per prompt, 2 per shard)");
    assert_eq!(params["Job defaults"], r#"{"height":64,"model":"tiny","steps":1,"width":64}"#);
    assert_eq!(params["Totals"], "4 succeeded, 1 failed, 3 shards");
    browser.screenshot("console-bulk-run").await;

    // Another tenant's key is not an admin's: no bulk runs, and the API says why.
    browser.click("#sign-out").await;
    sign_in(&browser, &fleet.base, OTHER_KEY).await;
    signed_in(&browser).await;
    assert_eq!(browser.attr("#nav-bulk", "hidden").await.as_deref(), Some("true"));
    let resp = fleet.http.get(format!("{}/v1/bulk/runs", fleet.base)).bearer_auth(OTHER_KEY).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::FORBIDDEN);

    browser.close().await;
    fleet.stop().await;
}
