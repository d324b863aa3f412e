//! Where the end-to-end tests find the real services, and clients for them.
//!
//! Addresses come from the same variables `scripts/services.sh` uses, with its defaults,
//! so the tests run against whatever that script started (or found running).

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// AMQP URL of the test broker.
pub fn amqp_url() -> String {
    var("FLEET_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// URL of the test Redis.
pub fn redis_url() -> String {
    var("FLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
}

/// Endpoint of the test S3 server.
pub fn s3_endpoint() -> String {
    format!("http://127.0.0.1:{}", var("FLEET_TEST_S3_PORT", "8333"))
}

/// The bucket `scripts/services.sh` creates.
pub fn s3_bucket() -> String {
    var("FLEET_TEST_S3_BUCKET", "fleet-test")
}

/// An S3 client for the test server, path-style, with the test identity.
pub fn s3_client() -> aws_sdk_s3::Client {
    let credentials = Credentials::new(
        var("FLEET_TEST_S3_ACCESS_KEY", "fleet-test-access"),
        var("FLEET_TEST_S3_SECRET_KEY", "fleet-test-secret"),
        None,
        None,
        "fleet-e2e",
    );
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(s3_endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(credentials)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A name no other test run uses, for queues and keys.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}
