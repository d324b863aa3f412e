//! Several tenants on one fleet: an API key each, and arrays of identical small jobs submitted
//! under them. Used by the fair-share test and benchmark.

use fleet_core::config::ApiKeyConfig;
use fleet_core::{FleetConfig, JobStatus};
use serde_json::{Value, json};

/// The API key of tenant `name` (at least 8 characters, as configuration requires).
pub fn key_of(name: &str) -> String {
    format!("key-of-{name}")
}

/// Adds an API key for each of `names` (not admin).
pub fn add_tenants(config: &mut FleetConfig, names: &[&str]) {
    for name in names {
        config.http.api_keys.push(ApiKeyConfig { key: key_of(name), tenant: (*name).to_owned(), admin: false });
    }
}

/// A small bulk job of the tiny model.
pub fn bulk_job(prompt: &str) -> Value {
    json!({"prompt": prompt, "model": "tiny", "width": 64, "height": 64, "steps": 1, "priority": "bulk"})
}

/// Submits `n` bulk jobs as `tenant` in arrays of at most 500; the accepted statuses in order.
pub async fn submit_as(http: &reqwest::Client, base: &str, tenant: &str, n: usize) -> Vec<JobStatus> {
    let mut accepted = Vec::with_capacity(n);
    let jobs: Vec<Value> = (0..n).map(|i| bulk_job(&format!("{tenant} {i}"))).collect();
    for chunk in jobs.chunks(500) {
        let resp = http
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(key_of(tenant))
            .json(&chunk)
            .send()
            .await
            .expect("POST /v1/jobs");
        let code = resp.status();
        let body: Value = resp.json().await.expect("JSON answer");
        assert!(code.is_success(), "submitting as {tenant}: {code} {body}");
        for item in body["jobs"].as_array().expect("an array's answer") {
            let status = serde_json::from_value(item["status"].clone())
                .unwrap_or_else(|e| panic!("a job of {tenant} was not accepted ({e}): {item}"));
            accepted.push(status);
        }
    }
    accepted
}

/// Every job's status as `tenant` sees it, once all are final (panics after `limit`).
pub async fn wait_final(
    http: &reqwest::Client,
    base: &str,
    tenant: &str,
    ids: &[uuid::Uuid],
    limit: std::time::Duration,
) -> Vec<JobStatus> {
    let started = std::time::Instant::now();
    let mut finished: Vec<Option<JobStatus>> = vec![None; ids.len()];
    loop {
        for (slot, id) in finished.iter_mut().zip(ids) {
            if slot.is_some() {
                continue;
            }
            let resp = http.get(format!("{base}/v1/jobs/{id}")).bearer_auth(key_of(tenant)).send().await.unwrap();
            let status: JobStatus = resp.json().await.expect("a status");
            if status.state.is_terminal() {
                *slot = Some(status);
            }
        }
        if finished.iter().all(Option::is_some) {
            return finished.into_iter().flatten().collect();
        }
        let left = finished.iter().filter(|s| s.is_none()).count();
        assert!(started.elapsed() < limit, "{left} jobs of {tenant} not final after {limit:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
