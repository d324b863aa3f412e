//! One real round trip per service, so later tests can rely on the plumbing.

use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use redis::AsyncCommands as _;

#[tokio::test]
async fn s3_put_then_get_returns_the_same_bytes() {
    let s3 = fleet_e2e::s3_client();
    let bucket = fleet_e2e::s3_bucket();
    let key = format!("connectivity/{}.bin", fleet_e2e::unique("obj"));
    let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();

    s3.put_object()
        .bucket(&bucket)
        .key(&key)
        .content_type("application/octet-stream")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("PUT to S3 (is scripts/services.sh running SeaweedFS?)");
    let got = s3.get_object().bucket(&bucket).key(&key).send().await.expect("GET from S3");
    assert_eq!(got.content_type(), Some("application/octet-stream"));
    let bytes = got.body.collect().await.expect("read S3 body").into_bytes();
    assert_eq!(bytes.as_ref(), body.as_slice());

    s3.delete_object().bucket(&bucket).key(&key).send().await.expect("DELETE from S3");
    let gone = s3.get_object().bucket(&bucket).key(&key).send().await;
    assert!(gone.is_err(), "object still readable after delete");
}

#[tokio::test]
async fn rabbitmq_publish_with_confirm_then_consume() {
    let conn = Connection::connect(&fleet_e2e::amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let channel = conn.create_channel().await.expect("open channel");
    channel.confirm_select(ConfirmSelectOptions::default()).await.expect("enable publisher confirms");

    let queue = fleet_e2e::unique("fleet-connectivity");
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    channel
        .queue_declare(&queue, QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await
        .expect("declare quorum queue");

    let payload = br#"{"v":1,"prompt":"connectivity"}"#;
    let confirm = channel
        .basic_publish(
            "",
            &queue,
            BasicPublishOptions { mandatory: true, ..Default::default() },
            payload,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "broker did not ack the publish: {confirm:?}");

    let mut consumer = channel
        .basic_consume(&queue, "connectivity", BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    let delivery = tokio::time::timeout(std::time::Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("consumer stream open")
        .expect("delivery ok");
    assert_eq!(delivery.data, payload);
    delivery.ack(BasicAckOptions::default()).await.expect("ack");

    channel.queue_delete(&queue, QueueDeleteOptions::default()).await.expect("delete queue");
    conn.close(200, "done").await.expect("close");
}

#[tokio::test]
async fn redis_set_then_get() {
    let client = redis::Client::open(fleet_e2e::redis_url()).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect to Redis");
    let key = fleet_e2e::unique("fleet:connectivity");
    let _: () = conn.set_ex(&key, "hello", 60).await.expect("SET");
    let value: Option<String> = conn.get(&key).await.expect("GET");
    assert_eq!(value.as_deref(), Some("hello"));
    let ttl: i64 = conn.ttl(&key).await.expect("TTL");
    assert!((1..=60).contains(&ttl), "ttl {ttl}");
    let _: () = conn.del(&key).await.expect("DEL");
    let gone: Option<String> = conn.get(&key).await.expect("GET after DEL");
    assert_eq!(gone, None);
}
