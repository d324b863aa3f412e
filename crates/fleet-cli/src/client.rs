//! A small client of the dispatcher's HTTP API, for the CLI's `submit`, `status`, `wait`, ….

use anyhow::{Context as _, bail};
use eventsource_stream::Eventsource as _;
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

    /// Follows `/v1/jobs/{id}/events`, calling `on_event` with each event's name and JSON until
    /// the stream ends with the job's final state. A stream that drops before then is reopened
    /// (after the server's `retry:` or [`RECONNECT_DELAY`]) with `Last-Event-ID` set to the last
    /// event id seen; [`RECONNECT_TRIES`] reopenings in a row without an event give up.
    pub async fn follow(&self, id: &str, mut on_event: impl FnMut(&str, &Value)) -> anyhow::Result<()> {
        let url = format!("{}/v1/jobs/{id}/events", self.base);
        let mut last_event_id = String::new();
        let mut delay = RECONNECT_DELAY;
        let mut tries = 0;
        let mut connected = false;
        loop {
            let mut request = self.http.get(&url).bearer_auth(&self.key).header("accept", "text/event-stream");
            if !last_event_id.is_empty() {
                request = request.header("last-event-id", &last_event_id);
            }
            let dropped = match request.send().await {
                Ok(resp) if resp.status().is_success() => {
                    connected = true;
                    let mut events = resp.bytes_stream().eventsource();
                    loop {
                        match events.next().await {
                            Some(Ok(event)) => {
                                tries = 0;
                                if let Some(retry) = event.retry {
                                    delay = retry;
                                }
                                if !event.id.is_empty() {
                                    last_event_id = event.id;
                                }
                                let value: Value =
                                    serde_json::from_str(&event.data).unwrap_or(Value::String(event.data));
                                on_event(&event.event, &value);
                                if is_final(&event.event) {
                                    return Ok(());
                                }
                            }
                            Some(Err(e)) => break anyhow::Error::new(e).context("events stream broke off"),
                            None => break anyhow::anyhow!("events stream ended before the job did"),
                        }
                    }
                }
                Ok(resp) => {
                    let status = resp.status();
                    let value: Value = resp.json().await.unwrap_or(Value::Null);
                    bail!("events of job {id}: HTTP {}: {}", status.as_u16(), describe_error(&value));
                }
                Err(e) if !connected => {
                    return Err(e).with_context(|| format!("cannot reach {url}"));
                }
                Err(e) => anyhow::Error::new(e).context(format!("cannot reach {url}")),
            };
            tries += 1;
            if tries > RECONNECT_TRIES {
                return Err(
                    dropped.context(format!("events of job {id}: gave up after {RECONNECT_TRIES} reconnections"))
                );
            }
            tracing::debug!(error = %dropped, "reconnecting to the events of job {id}");
            tokio::time::sleep(delay).await;
        }
    }
}

/// Wait before reopening a dropped events stream, unless the server sent `retry:`.
pub const RECONNECT_DELAY: std::time::Duration = std::time::Duration::from_secs(1);
/// Reopenings of an events stream in a row, none of which brought an event, before giving up.
pub const RECONNECT_TRIES: u32 = 5;

/// Whether an event (or a status's `state`) names a state the job cannot leave (the server
/// closes the stream after it).
pub fn is_final(event: &str) -> bool {
    serde_json::from_value::<fleet_core::JobState>(Value::String(event.to_owned())).is_ok_and(|s| s.is_terminal())
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
