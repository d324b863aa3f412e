//! A deliverer killed in the middle of its POSTs loses nothing and sends nothing under a new id:
//! its process is SIGKILLed, so RabbitMQ sees its connection drop with the deliveries unacked, and
//! the next deliverer sends every one of them again under the same `webhook-id`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use fleet_core::webhook::{AttemptOutcome, WebhookEvent, WebhookSpec};
use fleet_core::{ErrorCode, FleetConfig, JobError, JobSpec, JobStatus, Limits};
use fleet_status::StatusStore;
use fleet_webhooks::Secret;
use uuid::Uuid;

use super::delivery::{python, verify_in_python};
use super::receiver::{Hit, Receiver};
use super::{SECRET, Service, TENANT, config_tagged, outcomes};

/// The variable that makes [`deliverer_process_for_the_kill_test`] run, holding the tag of the
/// parent test's key and queue prefixes.
const CHILD_TAG: &str = "FLEET_TEST_WEBHOOK_DELIVERER_TAG";
/// The harness's name of that function.
const CHILD_TEST: &str = "kill::deliverer_process_for_the_kill_test";
/// How the jobs end; each also sends one `progress` delivery first.
const ENDS: [WebhookEvent; 4] =
    [WebhookEvent::Succeeded, WebhookEvent::Failed, WebhookEvent::Cancelled, WebhookEvent::Succeeded];

/// The parent's and the child's configuration: an attempt's timeout far longer than the test
/// takes to kill the deliverer, so the POSTs it leaves hanging end only by its death.
fn kill_config(tag: &str) -> FleetConfig {
    let mut cfg = config_tagged(tag);
    cfg.webhooks.timeout_secs = 300;
    cfg
}

/// Not a check of its own: the deliverer process the kill test starts (this test binary running
/// only this function, with [`CHILD_TAG`] set), which delivers until it is killed. Without the
/// variable it returns at once.
#[tokio::test]
async fn deliverer_process_for_the_kill_test() {
    let Ok(tag) = std::env::var(CHILD_TAG) else { return };
    let _service = Service::start(kill_config(&tag)).await;
    std::future::pending::<()>().await;
}

/// The deliverer process; killed when dropped, so a failing test leaves none behind.
struct Deliverer(Child);

impl Deliverer {
    fn spawn(tag: &str) -> Deliverer {
        let exe = std::env::current_exe().expect("the test binary's path");
        let child = Command::new(exe)
            .args(["--exact", CHILD_TEST])
            .env(CHILD_TAG, tag)
            .stdout(Stdio::null())
            .spawn()
            .expect("the deliverer process starts");
        Deliverer(child)
    }
}

impl Drop for Deliverer {
    /// SIGKILL: no AMQP close, no ack, nothing flushed.
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A job of the tenant whose webhook asks for `progress` and `end`, taken through start, one
/// progress step and `end`; the final record.
async fn run_job(store: &StatusStore, url: &str, end: WebhookEvent) -> JobStatus {
    let mut spec = JobSpec::new("a lighthouse");
    spec.webhook = Some(WebhookSpec { url: url.to_owned(), events: vec![WebhookEvent::Progress, end] });
    let job = spec.validate(&Limits::default()).unwrap().assign(TENANT, Uuid::now_v7);
    let status = JobStatus::queued(&job, Utc::now()).unwrap();
    store.create(&status, None).await.unwrap();
    let running = store.update(status.id, |s| s.start("w1", Utc::now())).await.unwrap();
    let mut progress = running.progress.clone();
    progress.step = 1;
    store.set_progress(status.id, progress).await.unwrap();
    store
        .update(status.id, |s| match end {
            WebhookEvent::Succeeded => s.succeed(Vec::new(), Utc::now()),
            WebhookEvent::Failed => s.fail(JobError::new(ErrorCode::Internal, "the engine broke"), Utc::now()),
            _ => s.cancel(Utc::now()),
        })
        .await
        .unwrap()
}

/// The job id and event type a hit's body names.
fn event_of(hit: &Hit) -> (Uuid, String) {
    let body: serde_json::Value = serde_json::from_slice(&hit.body).expect("a JSON body");
    let job = body["data"]["id"].as_str().and_then(|id| id.parse().ok()).expect("the job's id in data.id");
    (job, body["type"].as_str().expect("a type").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_a_killed_deliverer_was_posting_are_sent_again_under_the_same_ids() {
    let tag = Uuid::now_v7().simple().to_string();
    let cfg = kill_config(&tag);
    let receiver = Receiver::hanging_first().await;
    let first = Deliverer::spawn(&tag);
    let store = StatusStore::connect(&cfg.redis).await.expect("Redis for tests must be running");
    let mut jobs = Vec::new();
    for end in ENDS {
        jobs.push(run_job(&store, &receiver.url, end).await);
    }
    let deliveries = 2 * jobs.len();

    // Every delivery is on its way: POSTed and unanswered, relayed and gone from Redis, settled
    // nowhere (an attempt is logged when it ends).
    let held = receiver.wait_for(deliveries, Duration::from_secs(60)).await;
    assert_eq!(held.len(), deliveries, "the first deliverer POSTs every delivery: {held:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.webhook_backlog().await.unwrap() != (0, 0) {
        assert!(tokio::time::Instant::now() < deadline, "the relay did not drain the outbox");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for job in &jobs {
        assert_eq!(store.webhook_attempts(job.id).await.unwrap(), [], "nothing logged while the POSTs hang");
    }

    drop(first);
    let second = Service::start(cfg).await;
    let hits = receiver.wait_for(2 * deliveries, Duration::from_secs(60)).await;
    let mut logs = Vec::new();
    for job in &jobs {
        logs.push(second.log(job.id, 2, Duration::from_secs(30)).await);
    }

    // Every delivery came twice (the attempt cut short, then its redelivery), signed, under one
    // id and with the same bytes; each event of each job has its one id.
    let secret = Secret::parse(SECRET).unwrap();
    let now = Utc::now().timestamp();
    let mut by_id: BTreeMap<&str, Vec<&Hit>> = BTreeMap::new();
    let mut ids_of_event: BTreeMap<(Uuid, String), BTreeSet<&str>> = BTreeMap::new();
    for hit in &hits {
        secret.verify(&hit.id, &hit.timestamp, &hit.signature, &hit.body, now).expect("every attempt verifies");
        by_id.entry(&hit.id).or_default().push(hit);
        ids_of_event.entry(event_of(hit)).or_default().insert(&hit.id);
    }
    assert_eq!(by_id.len(), deliveries, "one webhook-id per delivery: {:?}", by_id.keys());
    for (id, attempts) in &by_id {
        assert_eq!(attempts.len(), 2, "{id}: the attempt the kill cut short and one more");
        assert!(attempts.iter().all(|hit| hit.body == attempts[0].body), "{id}: the same bytes each time");
    }
    assert_eq!(ids_of_event.len(), deliveries, "{ids_of_event:?}");
    for ((job, event), ids) in &ids_of_event {
        assert_eq!(ids.len(), 1, "{event} of {job} came under one id: {ids:?}");
        let id = ids.first().unwrap();
        assert!(id.starts_with(&format!("msg_{}_", job.simple())), "{id} is {job}'s");
    }

    // The delivery log: one line per delivery, delivered by the second deliverer (the attempt its
    // process died in never ended, so it has no line and the retry is attempt 1 again).
    for (job, log) in jobs.iter().zip(&logs) {
        assert_eq!(outcomes(log), [AttemptOutcome::Delivered, AttemptOutcome::Delivered], "{log:?}");
        let events: BTreeSet<String> = log.iter().map(|a| format!("job.{}", a.event.as_str())).collect();
        let expected: BTreeSet<String> =
            ids_of_event.keys().filter(|(id, _)| *id == job.id).map(|(_, e)| e.clone()).collect();
        assert_eq!(events, expected, "{log:?}");
        for attempt in log {
            assert_eq!((attempt.attempt, attempt.status_code), (1, Some(200)), "{attempt:?}");
            let posted = &ids_of_event[&(job.id, format!("job.{}", attempt.event.as_str()))];
            assert!(posted.contains(attempt.webhook_id.as_str()), "{attempt:?} vs {posted:?}");
        }
    }
    assert_eq!(second.queued().await, 0, "nothing waits to be sent again");
    assert_eq!(second.store.webhook_backlog().await.unwrap(), (0, 0));
    assert_eq!(receiver.hits().len(), 2 * deliveries);

    match python() {
        Some(python) => {
            for hit in &hits {
                verify_in_python(&python, hit).expect("standardwebhooks verifies every attempt");
            }
        }
        None => eprintln!("SKIPPED the standardwebhooks check: no Python with the package"),
    }
    receiver.stop();
    second.stop().await;
}
