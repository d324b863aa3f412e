//! Several tenants on one fleet: an API key each, and arrays of identical small jobs submitted
//! under them (`Fleet::wait_all_as` waits for them with a tenant's key). Used by the fair-share
//! test and benchmark.

use fleet_core::config::ApiKeyConfig;
use fleet_core::{FleetConfig, JobStatus};
use serde_json::{Value, json};

use crate::fleet::Fleet;

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
pub async fn submit_as(fleet: &Fleet, tenant: &str, n: usize) -> Vec<JobStatus> {
    let (http, base) = (&fleet.http, &fleet.base);
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
