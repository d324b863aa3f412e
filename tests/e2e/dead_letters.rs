//! Every dead letter says why: a message a worker refuses is recorded (`failed` / `invalid_spec`
//! with every validation error, when it names a job) and dead-lettered with a reason header that
//! `GET /v1/dead-letters` shows; a clean hand-back publishes a message afresh, so the broker's
//! delivery count does not grow.

use std::time::{Duration, Instant};

use fleet_core::{ErrorCode, JobState};
use fleet_e2e::fleet::Fleet;
use fleet_e2e::{E2E_KEY, isolated_config};
use lapin::options::{BasicGetOptions, BasicPublishOptions, BasicRejectOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use serde_json::Value;

async fn channel(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, fleet_queue::connection_properties()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    (connection, channel)
}

/// Publishes `body` as a foreign producer would (tenant header, no id in the properties).
async fn publish(channel: &Channel, exchange: &str, body: &[u8]) {
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("x-fleet-tenant"), AMQPValue::LongString(LongString::from("e2e")));
    let props = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
    let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    let confirm = channel.basic_publish(exchange, "tiny.interactive", options, body, props).await.unwrap();
    assert!(confirm.await.unwrap().is_ack());
}

/// `GET /v1/dead-letters` once it lists `n` messages.
async fn dead_letters(fleet: &Fleet, n: usize) -> Value {
    let started = Instant::now();
    loop {
        let resp = fleet.http.get(format!("{}/v1/dead-letters", fleet.base)).bearer_auth(E2E_KEY).send().await.unwrap();
        let body: Value = resp.json().await.unwrap();
        if body["messages"].as_array().map(Vec::len) == Some(n) {
            return body;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "waited for {n} dead letters: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_message_is_recorded_and_dead_lettered_with_its_reason() {
    let fleet = Fleet::start(isolated_config(), 1).await;
    let (connection, channel) = channel(&fleet.config.rabbitmq.url).await;
    let id = uuid::Uuid::now_v7();
    let invalid = format!(r#"{{"v":1,"id":"{id}","prompt":"","model":"tiny","steps":3}}"#);
    publish(&channel, &fleet.config.rabbitmq.exchange, invalid.as_bytes()).await;
    publish(&channel, &fleet.config.rabbitmq.exchange, b"not a job").await;

    // The producer finds out why through the job's record: every validation error, not retryable.
    let record = fleet.wait_all(&[id], Duration::from_secs(30)).await.remove(0);
    assert_eq!(record.state, JobState::Failed, "{record:?}");
    let error = record.error.expect("a failed job has an error");
    assert_eq!((error.code, error.retryable), (ErrorCode::InvalidSpec, false), "{error:?}");
    assert!(error.message.contains("prompt") && error.message.contains("steps"), "every error: {error:?}");
    assert_eq!((record.tenant.as_str(), record.model.as_str()), ("e2e", "tiny"));

    // The operator finds out why in the dead-letter queue.
    let page = dead_letters(&fleet, 2).await;
    let queue = format!("{}.tiny.interactive", fleet.config.rabbitmq.queue_prefix);
    let messages = page["messages"].as_array().unwrap();
    let job = messages.iter().find(|m| m["job_id"] == id.to_string()).expect("the job's dead letter");
    assert_eq!((job["reason"].as_str(), job["queue"].as_str()), (Some("invalid_spec"), Some(queue.as_str())), "{job}");
    let detail = job["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("prompt") && detail.contains("steps"), "{job}");
    assert!(job["time"].is_string(), "{job}");
    // Unreadable, it still names a job: the id derived from its bytes (README, wire format).
    let garbage = messages.iter().find(|m| m["body_preview"] == "not a job").expect("the unreadable message");
    assert!(garbage["job_id"].is_string(), "{garbage}");
    assert_eq!(
        (garbage["reason"].as_str(), garbage["body_preview"].as_str()),
        (Some("invalid_spec"), Some("not a job"))
    );
    assert!(garbage["detail"].as_str().unwrap_or_default().contains("unreadable"), "{garbage}");

    // The dead-letter watcher leaves the record's reason as the worker wrote it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = fleet.status(id).await;
    assert_eq!(again.error.map(|e| e.code), Some(ErrorCode::InvalidSpec));
    let _ = connection.close(200, "done").await;
    fleet.stop().await;
}

/// A hand-back publishes the message again with its hand-back count and without the broker's
/// delivery count, then the original is acked: the new copy starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_hand_back_starts_the_delivery_count_afresh() {
    let config = isolated_config();
    let topology = fleet_queue::Topology::new(&config.rabbitmq, ["tiny"]);
    let queue = topology.queue_for("tiny", fleet_core::Priority::Interactive).unwrap().name.clone();
    let broker = fleet_queue::Broker::connect(&config.rabbitmq.url, topology).await.unwrap();
    let channel = broker.channel().await.unwrap();
    publish(&channel, &config.rabbitmq.exchange, br#"{"v":1,"prompt":"handed back","model":"tiny"}"#).await;

    // Two returns the broker counts (as crashes would), then a clean hand-back.
    for _ in 0..2 {
        let got = channel.basic_get(&queue, BasicGetOptions::default()).await.unwrap().expect("the job");
        got.delivery.reject(BasicRejectOptions { requeue: true }).await.unwrap();
    }
    let got = channel.basic_get(&queue, BasicGetOptions::default()).await.unwrap().expect("the job");
    assert_eq!(delivery_count(&got.delivery.properties), 2, "the broker counted both returns");
    let original = fleet_worker::republish::Original::of(&got.delivery);
    fleet_worker::republish::republish(&channel, &original).await.unwrap();
    got.delivery.ack(lapin::options::BasicAckOptions::default()).await.unwrap();

    let fresh = channel.basic_get(&queue, BasicGetOptions::default()).await.unwrap().expect("the republished job");
    assert_eq!(delivery_count(&fresh.delivery.properties), 0, "the new copy starts afresh");
    assert_eq!(fleet_worker::republish::handbacks(&fresh.delivery.properties), 1);
    assert_eq!(fresh.delivery.data, original.body, "the same body");
    assert_eq!(fleet_queue::message::header_str(&fresh.delivery.properties, "x-fleet-tenant"), Some("e2e"));
    fresh.delivery.ack(lapin::options::BasicAckOptions::default()).await.unwrap();
    broker.close().await;
}

/// A message the broker returned while no worker started the job (lost connections while it sat
/// in a prefetch) is handed back afresh by the next worker rather than run from a copy whose
/// count such returns pushed toward the limit; the job then runs once. Once is enough to qualify.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_returned_once_without_a_start_is_handed_back_afresh() {
    let (done, mark) = run_after_returns(1, false).await;
    assert_eq!((done.attempts, done.deliveries, done.handbacks), (1, 0, 1), "run once, from a fresh copy: {done:?}");
    // The hand-back made a second message for a moment: removing the job keeps its cancel flag
    // for the status TTL, not the short one for a job with a single message.
    assert_eq!(mark.as_deref(), Some("again"), "the hand-back is noted on the record");
}

/// As above, up to the delivery limit: one more return would have dead-lettered it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_worn_by_returns_without_a_start_is_handed_back_afresh() {
    let (done, mark) = run_after_returns(isolated_config().rabbitmq.delivery_limit, false).await;
    assert_eq!((done.attempts, done.deliveries, done.handbacks), (1, 0, 1), "run once, from a fresh copy: {done:?}");
    assert_eq!(mark.as_deref(), Some("again"));
}

/// A return that follows a start from the same copy (the worker died mid-job) is the job's doing:
/// it counts, and the job runs again from that copy, so a job that keeps crashing its workers
/// still reaches the delivery limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_return_after_a_start_counts_and_the_job_runs_from_that_copy() {
    let (done, mark) = run_after_returns(1, true).await;
    assert_eq!(
        (done.attempts, done.deliveries, done.handbacks),
        (2, 1, 0),
        "started again from the counted copy: {done:?}"
    );
    // Submitted without an idempotency key, the job has no dispatcher's mark; no hand-back added one.
    assert_eq!(mark, None, "one message all along");
}

/// Submits a job with no worker running, lets the broker return its message `returns` times (as
/// lost connections or crashes do), the first after a worker's start of the job when
/// `started_first`, then starts a worker. The job's final record and its `published` mark.
async fn run_after_returns(returns: u32, started_first: bool) -> (fleet_core::JobStatus, Option<String>) {
    let config = isolated_config();
    let mut fleet = Fleet::start(config.clone(), 0).await;
    let job = fleet.submit(crate::fleet::tiny_job(1)).await;
    let topology = fleet_queue::Topology::new(&config.rabbitmq, ["tiny"]);
    // The dispatcher put it in its tenant's lane.
    let queue = topology.route("tiny", fleet_core::Priority::Interactive, Some(&job.tenant)).unwrap().name;
    let (connection, channel) = channel(&config.rabbitmq.url).await;
    if started_first {
        // What a worker writes when it starts the job from the fresh message, before it dies.
        let status = fleet_status::StatusStore::connect(&config.redis).await.unwrap();
        status
            .update(job.id, |s| {
                s.start("died-mid-job", chrono::Utc::now())?;
                s.note_delivery(0, 0);
                Ok(())
            })
            .await
            .unwrap();
    }
    for _ in 0..returns {
        let got = channel.basic_get(&queue, BasicGetOptions::default()).await.unwrap().expect("the job");
        got.delivery.reject(BasicRejectOptions { requeue: true }).await.unwrap();
    }
    let _ = connection.close(200, "done").await;

    fleet.add_worker().await;
    let done = fleet.wait_all(&[job.id], Duration::from_secs(120)).await.remove(0);
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let client = redis::Client::open(config.redis.url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}:job:{}", config.redis.key_prefix, job.id);
    let mark: Option<String> = redis::cmd("HGET").arg(&key).arg("published").query_async(&mut con).await.unwrap();
    fleet.stop().await;
    (done, mark)
}

fn delivery_count(props: &BasicProperties) -> i64 {
    match props.headers().as_ref().and_then(|h| h.inner().get("x-delivery-count")) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        _ => 0,
    }
}
