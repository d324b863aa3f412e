//! fleet-queue against the real RabbitMQ that `scripts/services.sh` starts.

use std::sync::Arc;
use std::time::Duration;

use fleet_core::config::RabbitMqConfig;
use fleet_core::{JobSpec, Limits, Priority, ValidJob};
use fleet_queue::message::{HEADER_TENANT, HEADER_TRACE_ID, decode, header_str};
use fleet_queue::{Broker, Publisher, QueueError, Topology};
use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;

fn amqp_url() -> String {
    std::env::var("FLEET_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A configuration whose names no other test run uses.
fn isolated_config() -> RabbitMqConfig {
    let tag = uuid::Uuid::now_v7().simple().to_string();
    RabbitMqConfig {
        url: amqp_url(),
        exchange: format!("t-{tag}.jobs"),
        queue_prefix: format!("t-{tag}"),
        dead_letter_exchange: format!("t-{tag}.dlx"),
        dead_letter_queue: format!("t-{tag}.dead"),
        delivery_limit: 2,
        // The shared queues, which the topology declares; lanes have their own test.
        tenant_lanes: false,
        ..RabbitMqConfig::default()
    }
}

fn job(model: &str, priority: Priority) -> ValidJob {
    let mut spec = JobSpec::new("a queued cat");
    spec.model = model.to_owned();
    spec.priority = priority;
    spec.validate(&Limits::default()).unwrap().assign("acme", uuid::Uuid::now_v7)
}

async fn cleanup(broker: &Broker) {
    let Ok(channel) = broker.channel().await else { return };
    let topo = broker.topology();
    for q in topo
        .queues
        .iter()
        .map(|q| q.name.as_str())
        .chain([topo.dead_letter_queue.as_str(), topo.dead_letter_watch_queue.as_str()])
    {
        let _ = channel.queue_delete(q, QueueDeleteOptions::default()).await;
    }
    for ex in [&topo.exchange, &topo.dead_letter_exchange] {
        let _ = channel.exchange_delete(ex, ExchangeDeleteOptions::default()).await;
    }
}

async fn next_delivery(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("consumer open")
        .expect("delivery ok")
}

#[tokio::test]
async fn with_lanes_a_tenant_s_job_lands_in_its_declared_lane_and_never_elsewhere() {
    let cfg = RabbitMqConfig { tenant_lanes: true, ..isolated_config() };
    let broker = Arc::new(Broker::connect(&cfg.url, Topology::new(&cfg, ["tiny"])).await.unwrap());
    let publisher = Publisher::new(broker.clone(), Duration::from_secs(5));
    let bulk = job("tiny", Priority::Bulk);
    // Not declared yet: unroutable (`mandatory`), not silently dropped or sent to the shared queue.
    assert!(matches!(publisher.publish(&bulk, "t").await, Err(QueueError::Unroutable { .. })));

    let lane = broker.topology().route("tiny", Priority::Bulk, Some("acme")).unwrap();
    broker.topology().declare_queue(&broker.channel().await.unwrap(), &lane).await.unwrap();
    publisher.publish(&bulk, "t").await.unwrap();
    assert_eq!(broker.depth(&lane.name).await.unwrap().messages, 1, "in {}", lane.name);
    let shared = broker.topology().queue_for("tiny", Priority::Bulk).unwrap().name.clone();
    assert_eq!(broker.depth(&shared).await.unwrap().messages, 0);
    let channel = broker.channel().await.unwrap();
    let _ = channel.queue_delete(&lane.name, lapin::options::QueueDeleteOptions::default()).await;
    cleanup(&broker).await;
}

#[tokio::test]
async fn confirmed_publish_lands_in_the_model_and_priority_queue() {
    let cfg = isolated_config();
    let broker = Arc::new(Broker::connect(&cfg.url, Topology::new(&cfg, ["tiny"])).await.unwrap());
    // declaring twice is harmless: dispatcher and workers both do it at start
    broker.topology().declare(&broker.channel().await.unwrap()).await.unwrap();
    let publisher = Publisher::new(broker.clone(), Duration::from_secs(5));

    let interactive = job("tiny", Priority::Interactive);
    let bulk = job("tiny", Priority::Bulk);
    publisher.publish(&bulk, "trace-bulk").await.unwrap();
    publisher.publish(&interactive, "trace-int").await.unwrap();

    let depths = broker.depths().await.unwrap();
    let count = |suffix: &str| depths.iter().find(|d| d.name.ends_with(suffix)).unwrap().messages;
    assert_eq!((count(".tiny.interactive"), count(".tiny.bulk"), count(".dead")), (1, 1, 0));

    let channel = broker.channel().await.unwrap();
    let queue = &broker.topology().queue_for("tiny", Priority::Interactive).unwrap().name;
    let mut consumer =
        channel.basic_consume(queue, "t", BasicConsumeOptions::default(), FieldTable::default()).await.unwrap();
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(header_str(&delivery.properties, HEADER_TRACE_ID), Some("trace-int"));
    assert_eq!(header_str(&delivery.properties, HEADER_TENANT), Some("acme"));
    assert_eq!(delivery.properties.delivery_mode(), &Some(2), "persistent");
    assert_eq!(&decode(&delivery.data, &delivery.properties).unwrap(), interactive.spec());
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    cleanup(&broker).await;
}

#[tokio::test]
async fn a_model_no_queue_serves_is_refused_not_lost() {
    let cfg = isolated_config();
    let broker = Arc::new(Broker::connect(&cfg.url, Topology::new(&cfg, ["tiny"])).await.unwrap());
    let publisher = Publisher::new(broker.clone(), Duration::from_secs(5));
    let err = publisher.publish(&job("no-such-model", Priority::Interactive), "t").await.unwrap_err();
    assert!(matches!(err, QueueError::Unroutable { .. }), "{err:?}");
    assert_eq!(err.code(), fleet_core::ErrorCode::ModelUnavailable);
    assert!(err.to_string().contains("no queue serves model `no-such-model`"), "{err}");
    // the publisher keeps working after a return
    publisher.publish(&job("tiny", Priority::Interactive), "t").await.unwrap();
    cleanup(&broker).await;
}

#[tokio::test]
async fn a_job_that_keeps_failing_ends_in_the_dead_letter_queue() {
    let cfg = isolated_config();
    let broker = Arc::new(Broker::connect(&cfg.url, Topology::new(&cfg, ["tiny"])).await.unwrap());
    let publisher = Publisher::new(broker.clone(), Duration::from_secs(5));
    let poison = job("tiny", Priority::Interactive);
    publisher.publish(&poison, "t").await.unwrap();

    let channel = broker.channel().await.unwrap();
    let queue = broker.topology().queue_for("tiny", Priority::Interactive).unwrap().name.clone();
    let mut consumer =
        channel.basic_consume(&queue, "crashy", BasicConsumeOptions::default(), FieldTable::default()).await.unwrap();
    // Crash-loop: give back every delivery until the broker stops redelivering.
    let mut deliveries = 0;
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(3), consumer.next()).await {
        deliveries += 1;
        d.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await.unwrap();
        assert!(deliveries <= 10, "the broker keeps redelivering a poison message");
    }
    // quorum queues count returns: with x-delivery-limit = N the (N+1)th return dead-letters it
    assert_eq!(deliveries, cfg.delivery_limit + 1);
    let mut dead = channel
        .basic_consume(&cfg.dead_letter_queue, "dlq", BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let d = next_delivery(&mut dead).await;
    assert_eq!(&decode(&d.data, &d.properties).unwrap(), poison.spec());
    d.ack(BasicAckOptions::default()).await.unwrap();
    cleanup(&broker).await;
}

/// Of several nodes, the broker uses one that answers, whichever it tries first; a group size
/// larger than the cluster is accepted (RabbitMQ places the replicas it can).
#[tokio::test]
async fn a_broker_given_several_nodes_uses_one_that_answers() {
    let cfg = RabbitMqConfig {
        urls: vec!["amqp://guest:secret@127.0.0.1:1/%2f".into(), amqp_url()],
        quorum_initial_group_size: Some(3),
        ..isolated_config()
    };
    let broker = Arc::new(Broker::connect_any(cfg.broker_urls(), Topology::new(&cfg, ["tiny"])).await.unwrap());
    assert_eq!(broker.node().await, Some(fleet_core::config::mask_url(&amqp_url())));
    let publisher = Publisher::new(broker.clone(), Duration::from_secs(5));
    publisher.publish(&job("tiny", Priority::Interactive), "t").await.unwrap();
    let queue = broker.topology().queue_for("tiny", Priority::Interactive).unwrap().name.clone();
    assert_eq!(broker.depth(&queue).await.unwrap().messages, 1);
    cleanup(&broker).await;
}

#[tokio::test]
async fn no_node_answering_is_a_clear_error() {
    let urls = vec!["amqp://guest:secret@127.0.0.1:1/%2f".to_owned(), "amqp://guest:secret@127.0.0.1:2/%2f".to_owned()];
    let cfg = RabbitMqConfig { urls, ..isolated_config() };
    let err = Broker::connect_any(cfg.broker_urls(), Topology::new(&cfg, ["tiny"])).await.unwrap_err();
    assert_eq!(err.code(), fleet_core::ErrorCode::QueueUnavailable);
    let text = err.to_string();
    assert!(text.contains("is unavailable") && text.contains("127.0.0.1:"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}

#[tokio::test]
async fn a_dead_broker_is_a_clear_error_not_a_hang() {
    let cfg = RabbitMqConfig { url: "amqp://guest:secret@127.0.0.1:1/%2f".into(), ..isolated_config() };
    let started = std::time::Instant::now();
    let err = Broker::connect(&cfg.url, Topology::new(&cfg, ["tiny"])).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(err.code(), fleet_core::ErrorCode::QueueUnavailable);
    let text = err.to_string();
    assert!(text.contains("RabbitMQ at amqp://guest:***@127.0.0.1:1/%2f is unavailable"), "{text}");
    assert!(!text.contains("secret"));
}
