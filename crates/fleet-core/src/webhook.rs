//! Webhooks in the job contract: what a job asks to be called back with ([`WebhookSpec`]), the
//! delivery a state change queues ([`WebhookDelivery`]) and one line of a job's delivery log
//! ([`WebhookAttempt`]).
//!
//! A delivery's `body` is the exact text that is signed and sent, fixed when the state change is
//! written, so every retry sends (and signs) the same bytes under the same `webhook_id`.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::status::{JobState, JobStatus};

/// Longest webhook URL, in bytes.
pub const MAX_WEBHOOK_URL_LEN: usize = 2048;
/// Least time between two `progress` deliveries of one job, in milliseconds (a progress change
/// within it queues nothing).
pub const PROGRESS_INTERVAL_MS: u64 = 5000;

/// A job's callback: where to POST its status and on which events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// Where the fleet POSTs: an `https://` URL (plain `http://` and non-public addresses only where
    /// the deployment allows them), at most 2048 characters.
    pub url: String,
    /// Events delivered (default: the three final ones, `succeeded`, `failed`, `cancelled`);
    /// `progress` comes at most once every 5 s while the job runs.
    #[serde(default = "default_events")]
    pub events: Vec<WebhookEvent>,
}

/// Something that happened to a job and can be delivered to its webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookEvent {
    /// The job finished with its images.
    Succeeded,
    /// The job failed.
    Failed,
    /// The job was cancelled.
    Cancelled,
    /// A running job's progress moved (at most once every 5 s).
    Progress,
}

impl WebhookEvent {
    /// Wire name, also the payload's `type` after `job.`.
    pub const fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Succeeded => "succeeded",
            WebhookEvent::Failed => "failed",
            WebhookEvent::Cancelled => "cancelled",
            WebhookEvent::Progress => "progress",
        }
    }

    /// The event of a change from `current` to `next`: a final state reached, or progress of a
    /// running job; `None` for anything else (the start of a job, a retry's requeue).
    pub fn of_change(current: &JobStatus, next: &JobStatus) -> Option<WebhookEvent> {
        if !current.state.is_terminal() {
            match next.state {
                JobState::Succeeded => return Some(WebhookEvent::Succeeded),
                JobState::Failed => return Some(WebhookEvent::Failed),
                JobState::Cancelled => return Some(WebhookEvent::Cancelled),
                _ => {}
            }
        }
        (current.state == JobState::Running && next.state == JobState::Running && current.progress != next.progress)
            .then_some(WebhookEvent::Progress)
    }
}

fn default_events() -> Vec<WebhookEvent> {
    vec![WebhookEvent::Succeeded, WebhookEvent::Failed, WebhookEvent::Cancelled]
}

impl WebhookSpec {
    /// A webhook for the three final events.
    pub fn new(url: impl Into<String>) -> Self {
        WebhookSpec { url: url.into(), events: default_events() }
    }

    /// Why the URL and events are not acceptable, by field under `webhook`: the URL's form only
    /// (scheme, host, length); which hosts and addresses may be reached is the deployment's
    /// policy, checked when delivering.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if let Err(e) = check_url(&self.url) {
            problems.push(("url", e));
        }
        if self.events.is_empty() {
            problems.push(("events", "must name at least one event".to_owned()));
        }
        for (i, event) in self.events.iter().enumerate() {
            if self.events[..i].contains(event) {
                problems.push(("events", format!("`{}` is listed twice", event.as_str())));
            }
        }
        problems
    }
}

/// `http(s)://host…`, printable, at most [`MAX_WEBHOOK_URL_LEN`] bytes.
fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_WEBHOOK_URL_LEN {
        return Err(format!("must be at most {MAX_WEBHOOK_URL_LEN} characters"));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not contain spaces or control characters".to_owned());
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return Err("must be an https:// URL".to_owned());
    };
    if rest.is_empty() || rest.starts_with(['/', '?', '#']) {
        return Err("a URL needs a host: https://host/path".to_owned());
    }
    Ok(())
}

/// One delivery waiting to be sent (the outbox entry and the queued message): the signed body and
/// everything needed to send it and to log its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// `msg_<job id, 32 hex digits>_<record revision>`: the `webhook-id` of every attempt.
    pub webhook_id: String,
    pub job_id: Uuid,
    /// Whose secret signs it.
    pub tenant: String,
    pub url: String,
    pub event: WebhookEvent,
    /// The JSON text sent: `{"type":"job.<event>","timestamp":…,"data":<status record>}`.
    pub body: String,
    pub created_at: DateTime<Utc>,
}

/// The payload's envelope (Standard Webhooks' recommended `type`, `timestamp`, `data`).
#[derive(Serialize)]
struct Payload<'a> {
    r#type: String,
    timestamp: DateTime<Utc>,
    data: &'a JobStatus,
}

impl WebhookDelivery {
    /// The delivery a change from `current` to `next` (written as revision `rev`) queues, if the
    /// job has a webhook that asks for the change's event.
    pub fn of_change(
        current: &JobStatus,
        next: &JobStatus,
        rev: u64,
        now: DateTime<Utc>,
    ) -> Result<Option<WebhookDelivery>, serde_json::Error> {
        let Some(webhook) = next.request.as_ref().and_then(|r| r.webhook.as_ref()) else { return Ok(None) };
        let Some(event) = WebhookEvent::of_change(current, next) else { return Ok(None) };
        if !webhook.events.contains(&event) {
            return Ok(None);
        }
        let body =
            serde_json::to_string(&Payload { r#type: format!("job.{}", event.as_str()), timestamp: now, data: next })?;
        Ok(Some(WebhookDelivery {
            webhook_id: format!("msg_{}_{rev}", next.id.simple()),
            job_id: next.id,
            tenant: next.tenant.clone(),
            url: webhook.url.clone(),
            event,
            body,
            created_at: now,
        }))
    }
}

/// What came of one attempt to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// Failed; tried again at `next_try`.
    Retrying,
    /// Failed for good: a final answer (4xx other than 408/429, 410 Gone included), a URL the
    /// deployment's policy refuses, or `webhooks.retry_for_secs` spent.
    GaveUp,
}

/// One attempt of one delivery, as the job's delivery log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WebhookAttempt {
    pub webhook_id: String,
    pub event: WebhookEvent,
    /// 1 for the first try of this delivery.
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Why no answer came (or why the URL was refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
    pub outcome: AttemptOutcome,
    /// When the next try is due (with `retrying`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_try: Option<DateTime<Utc>>,
}

/// `GET /v1/jobs/{id}/webhooks`: a job's delivery attempts, oldest first (the newest 100).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WebhookLog {
    pub job_id: Uuid,
    /// The job's webhook URL, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub attempts: Vec<WebhookAttempt>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobSpec;

    #[test]
    fn url_and_events_checked() {
        assert!(WebhookSpec::new("https://hooks.example.com/x").problems().is_empty());
        assert!(WebhookSpec::new("http://127.0.0.1:9/x").problems().is_empty());
        for url in ["ftp://x/y", "https://", "https:///path", "https://a b", "hooks.example.com"] {
            assert_eq!(WebhookSpec::new(url).problems()[0].0, "url", "{url}");
        }
        let long = format!("https://x/{}", "a".repeat(MAX_WEBHOOK_URL_LEN));
        assert_eq!(WebhookSpec::new(long).problems()[0].0, "url");
        let empty = WebhookSpec { url: "https://x/".into(), events: vec![] };
        assert_eq!(empty.problems()[0].0, "events");
        let twice = WebhookSpec { url: "https://x/".into(), events: vec![WebhookEvent::Failed; 2] };
        assert_eq!(twice.problems()[0].0, "events");
        let parsed: WebhookSpec = serde_json::from_str(r#"{"url":"https://x/"}"#).unwrap();
        assert_eq!(parsed.events, default_events());
    }

    fn running(webhook: Option<WebhookSpec>) -> JobStatus {
        let mut spec = JobSpec::new("a cat");
        spec.webhook = webhook;
        let job = spec.validate(&crate::Limits::default()).unwrap().assign("acme", Uuid::now_v7);
        let mut status = JobStatus::queued(&job, Utc::now()).unwrap();
        status.state = JobState::Running;
        status
    }

    #[test]
    fn deliveries_follow_the_events_asked_for() {
        let now = Utc::now();
        let current = running(Some(WebhookSpec::new("https://x/hook")));
        let mut done = current.clone();
        done.state = JobState::Succeeded;
        let delivery = WebhookDelivery::of_change(&current, &done, 7, now).unwrap().unwrap();
        assert_eq!(delivery.webhook_id, format!("msg_{}_7", current.id.simple()));
        assert_eq!(delivery.event, WebhookEvent::Succeeded);
        let body: serde_json::Value = serde_json::from_str(&delivery.body).unwrap();
        assert_eq!(body["type"], "job.succeeded");
        assert_eq!(body["data"]["state"], "succeeded");

        let mut moved = current.clone();
        moved.progress.step = 2;
        assert_eq!(WebhookDelivery::of_change(&current, &moved, 3, now).unwrap(), None, "progress not asked for");
        let mut with_progress = current.clone();
        if let Some(w) = with_progress.request.as_mut().and_then(|r| r.webhook.as_mut()) {
            w.events.push(WebhookEvent::Progress);
        }
        let mut moved = with_progress.clone();
        moved.progress.step = 2;
        let delivery = WebhookDelivery::of_change(&with_progress, &moved, 3, now).unwrap().unwrap();
        assert_eq!(delivery.event, WebhookEvent::Progress);

        let bare = running(None);
        let mut bare_done = bare.clone();
        bare_done.state = JobState::Succeeded;
        assert_eq!(WebhookDelivery::of_change(&bare, &bare_done, 7, now).unwrap(), None, "no webhook");
        assert_eq!(WebhookDelivery::of_change(&done, &done, 8, now).unwrap(), None, "already final");
    }
}
