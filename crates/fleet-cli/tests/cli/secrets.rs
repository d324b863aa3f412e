//! Secrets (API keys, the S3 secret, AMQP and Redis passwords) never appear in `fleet config`,
//! in the logs of a dispatcher or worker (at `-vv`, debug for every crate), in the errors of
//! failing connections, or in what the S3 client logs (at trace) while it is refused.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_core::config::{ApiKeyConfig, FleetConfig, ModelConfig};

use super::{fleet, run};

const API_KEY: &str = "api-key-SECRET-4b1d9e";
const CLIENT_KEY: &str = "client-key-SECRET-77c0aa";
const S3_SECRET: &str = "s3-SECRET-0d5e8f2a";
const AMQP_PASSWORD: &str = "amqp-SECRET-91c3";
const REDIS_PASSWORD: &str = "redis-SECRET-e4f7";
const SECRETS: [&str; 5] = [API_KEY, CLIENT_KEY, S3_SECRET, AMQP_PASSWORD, REDIS_PASSWORD];

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows the secret `{secret}`:\n{text}");
    }
}

/// A configuration holding every kind of secret, with names no other test uses. `amqp`/`redis`
/// are the service URLs (with or without the secret passwords).
fn config_with_secrets(amqp: &str, redis: &str) -> FleetConfig {
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let mut cfg = FleetConfig::default();
    cfg.rabbitmq.url = amqp.to_owned();
    cfg.rabbitmq.exchange = format!("sec-{tag}.jobs");
    cfg.rabbitmq.queue_prefix = format!("sec-{tag}");
    cfg.rabbitmq.dead_letter_exchange = format!("sec-{tag}.dlx");
    cfg.rabbitmq.dead_letter_queue = format!("sec-{tag}.dead");
    cfg.redis.url = redis.to_owned();
    cfg.redis.key_prefix = format!("sec-{tag}");
    cfg.redis.allow_volatile = true;
    let port = std::env::var("FLEET_TEST_S3_PORT").unwrap_or_else(|_| "8333".into());
    cfg.s3.endpoint = format!("http://127.0.0.1:{port}");
    cfg.s3.bucket = "fleet-test".into();
    cfg.s3.access_key_id = "fleet-test-access".into();
    cfg.s3.secret_access_key = S3_SECRET.into();
    cfg.models = [("tiny".to_owned(), ModelConfig::default())].into_iter().collect();
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.http.api_keys = vec![ApiKeyConfig { key: API_KEY.into(), tenant: "sec".into(), admin: true }];
    cfg.client.api_key = CLIENT_KEY.into();
    cfg.worker.metrics_listen = String::new();
    cfg
}

fn write_config(dir: &tempfile::TempDir, cfg: &FleetConfig) -> std::path::PathBuf {
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, toml::to_string(cfg).unwrap()).unwrap();
    path
}

fn good_amqp() -> String {
    std::env::var("FLEET_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn fleet_config_masks_every_secret_in_both_formats() {
    let dir = tempfile::tempdir().unwrap();
    let amqp = format!("amqp://fleet:{AMQP_PASSWORD}@127.0.0.1:5672/%2f");
    let path = write_config(&dir, &config_with_secrets(&amqp, &format!("redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0")));
    for format in ["toml", "json"] {
        let (code, stdout, stderr) = run(fleet()
            .args(["--config", path.to_str().unwrap(), "config", "--format", format])
            .env("FLEET_API_KEYS", format!("{API_KEY}x=other")));
        assert_eq!(code, 0, "{stderr}");
        assert_no_secret(&format!("fleet config --format {format}"), &format!("{stdout}{stderr}"));
        assert!(stdout.contains("amqp://fleet:***@127.0.0.1") && stdout.contains("redis://:***@"), "{stdout}");
        assert!(stdout.contains("s3-S***"), "{stdout}");
    }
    // A URL without its scheme, in a configuration error; a password with an unescaped `@`.
    let (code, stdout, stderr) =
        run(fleet().args(["config", "--set", &format!("rabbitmq.url=fleet:{AMQP_PASSWORD}@127.0.0.1:5672")]));
    assert_eq!(code, 2, "{stdout}");
    assert!(stderr.contains("rabbitmq.url `fleet:***@127.0.0.1:5672`"), "{stderr}");
    assert_no_secret("a configuration error", &format!("{stdout}{stderr}"));
    let (code, stdout, stderr) =
        run(fleet().args(["config", "--set", &format!("redis.url=redis://:{REDIS_PASSWORD}@x@127.0.0.1:6379")]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("redis://:***@127.0.0.1:6379"), "{stdout}");
    assert_no_secret("a password with an `@`", &stdout);
}

/// Runs `fleet -vv ARGS` with `cfg` to its end (it must fail: a service refuses it) and returns
/// everything it printed.
fn failing_run(cfg: &FleetConfig, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, cfg);
    let mut cmd = fleet();
    cmd.args(["-vv", "--config", path.to_str().unwrap()]).args(args).env_remove("FLEET_LOG");
    let (code, stdout, stderr) = run(&mut cmd);
    assert_ne!(code, 0, "fleet {args:?} should have failed:\n{stderr}");
    format!("{stdout}{stderr}")
}

#[test]
fn failing_connections_never_show_a_secret() {
    // The test broker with a user and password it does not know.
    let broker = good_amqp().rsplit_once('@').map(|(_, host)| host.to_owned()).unwrap_or_default();
    let amqp_bad = format!("amqp://fleet:{AMQP_PASSWORD}@{broker}");
    let redis_ok = std::env::var("FLEET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());

    // Redis with a password, nobody listening.
    let cfg = config_with_secrets(&good_amqp(), &format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/0", dead_port()));
    let out = failing_run(&cfg, &["dispatcher"]);
    assert!(out.contains("Redis at redis://:***@127.0.0.1"), "{out}");
    assert_no_secret("dispatcher, Redis down", &out);

    // The real Redis, which has no password: it refuses the AUTH the URL asks for.
    let cfg = config_with_secrets(&good_amqp(), &format!("redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0"));
    let out = failing_run(&cfg, &["worker", "--model", "tiny"]);
    assert!(out.contains("Redis"), "{out}");
    assert_no_secret("worker, Redis refusing AUTH", &out);

    // The real RabbitMQ, refusing a user and password it does not know (retried for 5 s).
    let cfg = config_with_secrets(&amqp_bad, &redis_ok);
    let out = failing_run(&cfg, &["dispatcher"]);
    assert!(out.contains(&format!("amqp://fleet:***@{broker}")), "{out}");
    assert!(out.contains("ACCESS_REFUSED"), "the broker answered and refused the login: {out}");
    assert_no_secret("dispatcher, RabbitMQ refusing the login", &out);
}

/// Collects a child's stderr on a thread; `wait_for` blocks until a line contains a text.
struct Output {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Output {
    fn collect(child: &mut Child) -> Output {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Output { lines }
    }

    fn wait_for(&self, text: &str, limit: Duration) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| l.contains(text)) {
                return line.clone();
            }
            assert!(started.elapsed() < limit, "no line with `{text}`:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

#[test]
fn a_running_dispatcher_logs_no_secret_at_debug_level() {
    let redis_ok = std::env::var("FLEET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_with_secrets(&good_amqp(), &redis_ok);
    // The dispatcher checks its store at start and S3 refuses the made-up secret (what S3 logs
    // while refusing it is checked below): images go to a directory here.
    cfg.s3.local_dir = Some(dir.path().join("images"));
    std::fs::create_dir_all(dir.path().join("images")).unwrap();
    let path = write_config(&dir, &cfg);
    let mut child = fleet()
        .args(["-vv", "--config", path.to_str().unwrap(), "dispatcher"])
        .env_remove("FLEET_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = Output::collect(&mut child);
    let line = output.wait_for("listening on http://", Duration::from_secs(60));
    let base = line[line.find("http://").unwrap()..].trim().to_owned();

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let job = serde_json::json!({"prompt": "secretive", "model": "tiny", "width": 64, "height": 64});
        let ok = http.post(format!("{base}/v1/jobs")).bearer_auth(API_KEY).json(&job).send().await.unwrap();
        assert_eq!(ok.status(), 202);
        let listed = http.get(format!("{base}/v1/jobs")).bearer_auth(API_KEY).send().await.unwrap();
        assert_no_secret("the job list", &listed.text().await.unwrap());
        let wrong = format!("{API_KEY}-but-wrong");
        let refused = http.get(format!("{base}/v1/jobs")).bearer_auth(&wrong).send().await.unwrap();
        assert_eq!(refused.status(), 401);
        assert_no_secret("a 401", &refused.text().await.unwrap());
        let library = http.get(format!("{base}/v1/library")).bearer_auth(API_KEY).send().await.unwrap();
        assert_no_secret("the library", &library.text().await.unwrap());
    });
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200)); // the reader thread drains the pipe
    let text = output.text();
    assert!(text.contains("job accepted"), "the log holds the request handling:\n{text}");
    assert_no_secret("a dispatcher's debug log", &text);
}

/// Captures tracing output in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_s3_client_refused_for_a_wrong_secret_logs_no_secret_even_at_trace() {
    let cfg = config_with_secrets(&good_amqp(), "redis://127.0.0.1:6379/0").s3;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(move || writer.clone())
        .finish();
    let message = tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let store = fleet_storage::ImageStore::from_config(&cfg).await.unwrap();
            let key = format!("secrets-test/{}/0.png", uuid::Uuid::now_v7());
            let meta = fleet_storage::ObjectMeta::example(uuid::Uuid::now_v7(), "0a1b2c3d4e5f", 1);
            let err = store.put(&key, vec![1, 2, 3], "image/png", &meta).await.unwrap_err();
            let url = store.presign_get(&key, Duration::from_secs(60)).await.unwrap().unwrap_or_default();
            format!("{err}\n{err:?}\n{store:?}\n{url}")
        })
    });
    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(message.contains("denied") || message.contains("Denied"), "the wrong secret is refused: {message}");
    assert!(log.contains("fleet-test-access"), "the trace log covers the signed request:\n{log}");
    assert_no_secret("the S3 error", &message);
    assert_no_secret("the S3 client's trace log", &log);
}
