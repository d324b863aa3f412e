//! Where the end-to-end tests find the real services, and clients for them.
//!
//! Addresses come from the same variables `scripts/services.sh` uses, with its defaults,
//! so the tests run against whatever that script started (or found running).

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

pub mod chaos;
pub mod fleet;
pub mod link;
pub mod load;
pub mod process;
pub mod rabbit_cluster;
pub mod rabbit_server;
pub mod redis_server;
pub mod tenants;

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

/// A fleet configuration pointing at the test services, with queue and key names no other test uses
/// and the tiny model only. Images go to the test bucket under a unique prefix.
pub fn isolated_config() -> fleet_core::FleetConfig {
    use fleet_core::config::{ApiKeyConfig, ModelConfig};
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let mut cfg = fleet_core::FleetConfig::default();
    cfg.rabbitmq.url = amqp_url();
    cfg.redis.url = redis_url();
    cfg.rabbitmq.exchange = format!("e2e-{tag}.jobs");
    cfg.rabbitmq.queue_prefix = format!("e2e-{tag}");
    cfg.rabbitmq.dead_letter_exchange = format!("e2e-{tag}.dlx");
    cfg.rabbitmq.dead_letter_queue = format!("e2e-{tag}.dead");
    cfg.redis.key_prefix = format!("e2e-{tag}");
    // The machine's Redis may keep nothing across a restart; the tests never restart it.
    cfg.redis.allow_volatile = true;
    cfg.s3.endpoint = s3_endpoint();
    cfg.s3.bucket = s3_bucket();
    cfg.s3.prefix = format!("e2e-{tag}");
    cfg.s3.access_key_id = var("FLEET_TEST_S3_ACCESS_KEY", "fleet-test-access");
    cfg.s3.secret_access_key = var("FLEET_TEST_S3_SECRET_KEY", "fleet-test-secret");
    cfg.models = [("tiny".to_owned(), ModelConfig::default())].into_iter().collect();
    cfg.http.api_keys = vec![ApiKeyConfig { key: E2E_KEY.into(), tenant: "e2e".into(), admin: true }];
    // The tests poll job status in tight loops from one tenant; the rate limit has its own test.
    cfg.http.max_requests_per_sec_per_tenant = 0;
    cfg.worker.batch_deadline_ms = 20;
    // Several workers run on one machine; each takes a free port for its metrics.
    cfg.worker.metrics_listen = "127.0.0.1:0".into();
    cfg.worker.heartbeat_interval_secs = 1;
    cfg.redis.heartbeat_ttl_secs = 5;
    cfg
}

/// The API key of [`isolated_config`].
pub const E2E_KEY: &str = "e2e-test-key-0001";

/// The `fleet` binary of this build (cargo builds it for `cargo test --workspace`).
/// `FLEET_TEST_BINARY` names another one (e.g. a copy kept while other builds share the target directory).
pub fn fleet_binary() -> std::path::PathBuf {
    if let Some(bin) = std::env::var_os("FLEET_TEST_BINARY") {
        return bin.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/e2e-<hash> → target/debug/fleet
    let dir = exe.parent().and_then(|deps| deps.parent()).map(std::path::Path::to_path_buf).unwrap_or_default();
    dir.join("fleet")
}
