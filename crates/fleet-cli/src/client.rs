//! A small client of the dispatcher's HTTP API, for the CLI's `submit`, `status`, `wait`, ….

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use reqwest::Method;
use serde_json::Value;

/// Talks to one dispatcher with one API key.
pub struct ApiClient {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str, key: &str) -> anyhow::Result<ApiClient> {
        if key.is_empty() {
            bail!("no API key: pass --api-key, set FLEET_API_KEY, or set client.api_key in the configuration");
        }
        Ok(ApiClient { base: base.trim_end_matches('/').to_owned(), key: key.to_owned(), http: reqwest::Client::new() })
    }

    /// Sends a request; a non-2xx answer becomes an error showing the API's code, message and field errors.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url).bearer_auth(&self.key);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the dispatcher at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.with_context(|| format!("reading the answer to {method} {path}"))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(value);
        }
        bail!("{method} {path}: HTTP {}: {}", status.as_u16(), describe_error(&value))
    }

    /// The bytes behind an API path (following the redirect to storage).
    pub async fn bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let url = format!("{}{path}", self.base);
        let resp =
            self.http.get(&url).bearer_auth(&self.key).send().await.with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status();
        if !status.is_success() {
            let value: Value = resp.json().await.unwrap_or(Value::Null);
            bail!("GET {path}: HTTP {}: {}", status.as_u16(), describe_error(&value));
        }
        Ok(resp.bytes().await.with_context(|| format!("reading {path}"))?.to_vec())
    }

    /// Follows `/v1/jobs/{id}/events`, calling `on_event` with each event's JSON until the stream ends.
    pub async fn follow(&self, id: &str, mut on_event: impl FnMut(&str, &Value)) -> anyhow::Result<()> {
        let url = format!("{}/v1/jobs/{id}/events", self.base);
        let resp =
            self.http.get(&url).bearer_auth(&self.key).send().await.with_context(|| format!("cannot reach {url}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let value: Value = resp.json().await.unwrap_or(Value::Null);
            bail!("events of job {id}: HTTP {}: {}", status.as_u16(), describe_error(&value));
        }
        let mut stream = resp.bytes_stream();
        let mut buffer = String::new();
        let mut event = String::new();
        while let Some(chunk) = stream.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.context("events stream broke off")?));
            while let Some(end) = buffer.find('\n') {
                let line: String = buffer.drain(..=end).collect();
                let line = line.trim_end();
                if let Some(name) = line.strip_prefix("event: ") {
                    event = name.to_owned();
                } else if let Some(data) = line.strip_prefix("data: ") {
                    let value: Value = serde_json::from_str(data).unwrap_or(Value::String(data.to_owned()));
                    on_event(&event, &value);
                }
            }
        }
        Ok(())
    }
}

/// `code: message` plus each field error on its own line.
pub fn describe_error(body: &Value) -> String {
    let err = &body["error"];
    let Some(code) = err["code"].as_str() else { return body.to_string() };
    let mut text = format!("{code}: {}", err["message"].as_str().unwrap_or(""));
    if let Some(fields) = err["fields"].as_array() {
        for f in fields {
            text.push_str(&format!(
                "\n  {}: {}",
                f["field"].as_str().unwrap_or("?"),
                f["message"].as_str().unwrap_or("")
            ));
        }
    }
    text
}
