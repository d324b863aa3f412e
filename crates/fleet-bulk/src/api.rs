//! The dispatcher calls a bulk run makes: job arrays in (honouring 429 and `Retry-After`),
//! cancellations and deletions out.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_core::backoff::{self, BackoffBuilder as _};
use fleet_core::{ErrorCode, JobSpec, JobStatus};
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::error::BulkError;

/// Longest single wait on a 429/503 before asking again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a submission keeps retrying a dispatcher that answers 429/503 or cannot be reached.
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);
/// The same for a deletion: shorter, since a run waits for its deletions before it writes a shard
/// and a job left undeleted costs only its keeping.
pub const DELETE_GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// What the dispatcher said about one job of an array.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// Accepted (or an existing job with the same idempotency key).
    Accepted(Box<JobStatus>),
    /// Refused on its own (admission, an unknown model, …).
    Refused { code: ErrorCode, message: String, retryable: bool },
}

/// A client of one dispatcher with one API key.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, key: &str) -> Result<ApiClient, BulkError> {
        if key.is_empty() {
            return Err(BulkError::Config(
                "no API key: pass --api-key, set FLEET_API_KEY, or set client.api_key in the configuration".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| BulkError::Api(format!("HTTP client: {e}")))?;
        Ok(ApiClient { base: base.trim_end_matches('/').to_owned(), key: key.to_owned(), http })
    }

    /// Submits `jobs` as one array. Whole-request 429/503 answers and connection failures are
    /// retried after `Retry-After` (or a growing backoff); a 400 that names jobs by index
    /// (`[3].width`) refuses just those, with their messages.
    pub async fn submit(&self, jobs: &[JobSpec]) -> Result<Vec<Submitted>, BulkError> {
        let resp = self.post_retrying("/v1/jobs", jobs, GIVE_UP_AFTER).await?;
        match resp.status() {
            s if s.is_success() => parse_items(resp.json().await.ok(), jobs.len()),
            StatusCode::BAD_REQUEST => {
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                Ok(refuse_by_index(&body, jobs.len()))
            }
            status => {
                let body = resp.text().await.unwrap_or_default();
                Err(BulkError::Api(format!("POST /v1/jobs: HTTP {}: {body}", status.as_u16())))
            }
        }
    }

    /// POSTs `body` as JSON to `path`, sending it again after 429/503 answers (after their
    /// `Retry-After`, else a growing backoff) and connection failures, for up to `give_up_after`.
    /// Returns the first other answer.
    async fn post_retrying<T: serde::Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
        give_up_after: Duration,
    ) -> Result<reqwest::Response, BulkError> {
        let url = format!("{}{path}", self.base);
        let started = std::time::Instant::now();
        let mut backoff = backoff::policy(Duration::from_millis(250), MAX_BACKOFF, None).build();
        loop {
            let mut next_wait = || backoff.next().unwrap_or(MAX_BACKOFF);
            let wait = match self.http.post(&url).bearer_auth(&self.key).json(body).send().await {
                Ok(resp)
                    if matches!(resp.status(), StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) =>
                {
                    retry_after(resp.headers()).unwrap_or_else(next_wait)
                }
                Ok(resp) => return Ok(resp),
                Err(e) if started.elapsed() < give_up_after => {
                    tracing::warn!(error = %e, path, "dispatcher unreachable; retrying");
                    next_wait()
                }
                Err(e) => return Err(BulkError::Api(format!("cannot reach the dispatcher at {}: {e}", self.base))),
            };
            if started.elapsed() > give_up_after {
                return Err(BulkError::Api(format!("POST {path}: the dispatcher kept refusing for {give_up_after:?}")));
            }
            tracing::debug!(?wait, path, "dispatcher busy; waiting");
            tokio::time::sleep(wait.min(MAX_BACKOFF)).await;
        }
    }

    /// Cancels a job, keeping it; a job that is already final (409) or gone (404) is fine.
    pub async fn cancel(&self, id: Uuid) -> Result<(), BulkError> {
        let url = format!("{}/v1/jobs/{id}/cancel", self.base);
        let resp = self
            .http
            .post(&url)
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| BulkError::Api(format!("cannot reach the dispatcher at {}: {e}", self.base)))?;
        match resp.status() {
            s if s.is_success() || s == StatusCode::CONFLICT || s == StatusCode::NOT_FOUND => Ok(()),
            s => Err(BulkError::Api(format!("POST /v1/jobs/{id}/cancel: HTTP {}", s.as_u16()))),
        }
    }

    /// Deletes finished jobs in one request (`POST /v1/jobs/delete`): their records, idempotency
    /// keys and images go now; a job already gone is fine. 429/503 answers and connection
    /// failures are retried for up to [`DELETE_GIVE_UP_AFTER`]. Returns the jobs the dispatcher
    /// could not delete (a service failed for them), for the caller to ask again.
    pub async fn delete(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, BulkError> {
        let resp =
            self.post_retrying("/v1/jobs/delete", &serde_json::json!({ "ids": ids }), DELETE_GIVE_UP_AFTER).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(BulkError::Api(format!("POST /v1/jobs/delete: HTTP {}: {body}", status.as_u16())));
        }
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let items = body["jobs"].as_array().map(Vec::as_slice).unwrap_or_default();
        Ok(items
            .iter()
            .filter(|item| item["error"].is_object())
            .filter_map(|item| item["id"].as_str()?.parse().ok())
            .collect())
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok()?;
    Some(Duration::from_secs(secs.max(1)))
}

/// `{"jobs": [{"status": …} | {"error": …}]}` → one item per job.
fn parse_items(body: Option<Value>, expected: usize) -> Result<Vec<Submitted>, BulkError> {
    let items = body.as_ref().and_then(|b| b["jobs"].as_array()).cloned().unwrap_or_default();
    if items.len() != expected {
        return Err(BulkError::Api(format!("answer lists {} jobs, {expected} were sent", items.len())));
    }
    items
        .into_iter()
        .map(|item| match serde_json::from_value::<JobStatus>(item["status"].clone()) {
            Ok(status) => Ok(Submitted::Accepted(Box::new(status))),
            Err(_) => Ok(refused(&item["error"])),
        })
        .collect()
}

fn refused(error: &Value) -> Submitted {
    let code = error["code"].as_str().and_then(ErrorCode::from_name).unwrap_or(ErrorCode::Internal);
    Submitted::Refused {
        code,
        message: error["message"].as_str().unwrap_or("refused").to_owned(),
        retryable: error["retryable"].as_bool().unwrap_or(code.retryable()),
    }
}

/// A 400 for the whole array: the jobs its field paths name (`[i].field`) are refused with those
/// messages; the others are refused as retryable so they go again without the bad ones.
fn refuse_by_index(body: &Value, count: usize) -> Vec<Submitted> {
    let mut by_index: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for field in body["error"]["fields"].as_array().into_iter().flatten() {
        let path = field["field"].as_str().unwrap_or("");
        let index = path.strip_prefix('[').and_then(|p| p.split_once(']')).and_then(|(i, _)| i.parse().ok());
        if let Some(index) = index {
            let rest = path.split_once("].").map_or(path, |(_, r)| r);
            by_index.entry(index).or_default().push(format!("{rest}: {}", field["message"].as_str().unwrap_or("")));
        }
    }
    let whole = body["error"]["message"].as_str().unwrap_or("refused").to_owned();
    (0..count)
        .map(|i| match by_index.get(&i) {
            Some(messages) => {
                Submitted::Refused { code: ErrorCode::InvalidSpec, message: messages.join("; "), retryable: false }
            }
            // Nothing names a job: the whole array is at fault, every job fails with the message.
            None if by_index.is_empty() => {
                Submitted::Refused { code: ErrorCode::InvalidSpec, message: whole.clone(), retryable: false }
            }
            None => Submitted::Refused { code: ErrorCode::InvalidSpec, message: String::new(), retryable: true },
        })
        .collect()
}
