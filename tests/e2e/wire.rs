//! Producers that publish straight onto RabbitMQ, as one in another language would (raw AMQP, no
//! dispatcher, no fleet crate): which job a message is, and which seed it runs with.

use std::time::Duration;

use fleet_core::identity::{MESSAGE_ID_NAMESPACE, seed_for};
use fleet_core::{JobState, JobStatus};
use fleet_e2e::fleet::Fleet;
use fleet_e2e::{E2E_KEY, isolated_config};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use uuid::Uuid;

/// The tenant the messages name in their `x-fleet-tenant` header (the test key's tenant).
const TENANT: &str = "e2e";

/// A tiny job without `id` or `seed`, as a foreign producer writes it.
fn body(prompt: &str) -> Vec<u8> {
    format!(r#"{{"v":1,"prompt":"{prompt}","model":"tiny","width":64,"height":64,"steps":1}}"#).into_bytes()
}

fn properties(message_id: Option<Uuid>) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("x-fleet-tenant"), AMQPValue::LongString(LongString::from(TENANT)));
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_headers(headers);
    match message_id {
        Some(id) => props.with_message_id(ShortString::from(id.to_string())),
        None => props,
    }
}

/// Publishes with `mandatory` and a publisher confirm, as the README's wire-format section asks.
async fn publish(channel: &Channel, exchange: &str, body: &[u8], message_id: Option<Uuid>) {
    let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    let confirm = channel.basic_publish(exchange, "tiny.interactive", options, body, properties(message_id)).await;
    let confirmation = confirm.expect("publish").await.expect("confirm");
    assert!(confirmation.is_ack() && confirmation.take_message().is_none(), "the broker took the message");
}

/// Every job of the tenant, as the API lists them.
async fn all_jobs(fleet: &Fleet) -> Vec<JobStatus> {
    let url = format!("{}/v1/jobs?limit=100", fleet.base);
    let page: serde_json::Value = fleet.http.get(url).bearer_auth(E2E_KEY).send().await.unwrap().json().await.unwrap();
    serde_json::from_value(page["jobs"].clone()).unwrap()
}

/// A job with only a `message_id` is recorded under it; the same message (no id at all) published
/// twice is one job with one record and one result set; a job without a seed runs with the seed
/// its id implies, the one every redelivery would draw.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wire_messages_name_their_job_by_id_then_message_id_then_content_and_derive_their_seed() {
    let config = isolated_config();
    let fleet = Fleet::start(config.clone(), 1).await;
    let conn = Connection::connect(&config.rabbitmq.url, ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let exchange = &config.rabbitmq.exchange;

    let message_id = Uuid::new_v4();
    publish(&channel, exchange, &body("named by its message_id"), Some(message_id)).await;
    let twice = body("published twice, named by nothing");
    publish(&channel, exchange, &twice, None).await;
    publish(&channel, exchange, &twice, None).await;
    // Last on the queue: once it is done, the worker has taken the second copy too.
    let last = Uuid::new_v4();
    let last_body =
        format!(r#"{{"v":1,"id":"{last}","prompt":"last","model":"tiny","width":64,"height":64,"steps":1}}"#);
    publish(&channel, exchange, last_body.as_bytes(), None).await;

    // The README's recipe: UUIDv5 over the tenant header, a NUL byte and the body.
    let derived = Uuid::new_v5(&MESSAGE_ID_NAMESPACE, &[TENANT.as_bytes(), b"\0", &twice].concat());
    let done = fleet.wait_all(&[message_id, derived, last], Duration::from_secs(120)).await;
    for status in &done {
        assert_eq!(status.state, JobState::Succeeded, "{status:?}");
        assert_eq!(status.tenant, TENANT);
    }
    for status in &done[..2] {
        let seed = seed_for(status.id);
        assert_eq!(status.request.as_ref().map(|r| r.seed), Some(seed), "the recorded seed is the id's: {status:?}");
        assert_eq!(status.result.iter().map(|r| r.seed).collect::<Vec<_>>(), [seed], "{status:?}");
    }

    let jobs = all_jobs(&fleet).await;
    let mut ids: Vec<Uuid> = jobs.iter().map(|s| s.id).collect();
    ids.sort();
    let mut expected = vec![message_id, derived, last];
    expected.sort();
    assert_eq!(ids, expected, "one record per job, none for the second copy: {jobs:?}");
    let store = fleet_storage::ImageStore::from_config(&config.s3).await.unwrap();
    let objects = store.list(&format!("{}/{TENANT}/{derived}/", config.s3.prefix)).await.unwrap();
    assert_eq!(objects, [done[1].result[0].key.clone()], "one result set for the message published twice");
    eprintln!("the job published twice was started {} time(s)", done[1].attempts);
    let _ = conn.close(200, "done").await;
    fleet.stop().await;
}
