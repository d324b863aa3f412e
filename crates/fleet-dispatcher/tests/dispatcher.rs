//! The dispatcher over HTTP, against the real RabbitMQ and Redis that `scripts/services.sh` starts.
//! Modules: `bad_input` (each bad request is a clear 4xx that changes nothing), `envelope` (every
//! refusal, the router's and the extractors' too, is the JSON error envelope), `idempotency` (a
//! key or a client's id stands for one request), `lifecycle` (retention, the sweeper, `DELETE`,
//! presigned URLs in the status), `security` (keys on every route, tenant isolation on every job
//! endpoint), `usage` (quotas at admission, the usage report), `webhooks` (refused where they
//! cannot be signed, tenant defaults, delivery and its log).

#[path = "dispatcher/bad_input.rs"]
mod bad_input;
#[path = "dispatcher/envelope.rs"]
mod envelope;
#[path = "dispatcher/idempotency.rs"]
mod idempotency;
#[path = "dispatcher/lifecycle.rs"]
mod lifecycle;
#[path = "dispatcher/security.rs"]
mod security;
#[path = "dispatcher/usage.rs"]
mod usage;
#[path = "dispatcher/webhooks.rs"]
mod webhooks;

use std::time::Duration;

use fleet_core::config::{ApiKeyConfig, FleetConfig, ModelConfig};
use fleet_core::{JobState, JobStatus, Progress};
use fleet_dispatcher::App;
use futures::StreamExt as _;
use lapin::options::BasicGetOptions;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const ALICE: &str = "alice-key-0001";
const BOB: &str = "bob-key-0002";
const ADMIN: &str = "admin-key-0003";

/// A configuration whose queue and key names no other test uses.
fn isolated_config() -> FleetConfig {
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let mut cfg = FleetConfig::default();
    if let Ok(url) = std::env::var("FLEET_TEST_AMQP_URL") {
        cfg.rabbitmq.url = url;
    }
    if let Ok(url) = std::env::var("FLEET_TEST_REDIS_URL") {
        cfg.redis.url = url;
    }
    cfg.rabbitmq.exchange = format!("t-{tag}.jobs");
    cfg.rabbitmq.queue_prefix = format!("t-{tag}");
    cfg.rabbitmq.dead_letter_exchange = format!("t-{tag}.dlx");
    cfg.rabbitmq.dead_letter_queue = format!("t-{tag}.dead");
    cfg.redis.key_prefix = format!("t-{tag}");
    // The machine's Redis may keep nothing across a restart; the tests never restart it.
    cfg.redis.allow_volatile = true;
    cfg.models = [("tiny".to_owned(), ModelConfig::default())].into_iter().collect();
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.http.api_keys = vec![
        ApiKeyConfig { key: ALICE.into(), tenant: "alice".into(), admin: false },
        ApiKeyConfig { key: BOB.into(), tenant: "bob".into(), admin: false },
        ApiKeyConfig { key: ADMIN.into(), tenant: "ops".into(), admin: true },
    ];
    cfg
}

struct Server {
    base: String,
    app: App,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    http: reqwest::Client,
}

impl Server {
    async fn start(cfg: FleetConfig) -> Server {
        let app = App::connect(cfg).await.expect("dispatcher connects to Redis and RabbitMQ");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let task = tokio::spawn(fleet_dispatcher::serve(app.clone(), listener, stop.clone()).map(|r| r.unwrap()));
        Server { base, app, stop, task, http: reqwest::Client::new() }
    }

    /// Stops the server and deletes its queues and exchanges: hundreds of quorum queues left by
    /// test runs slow a broker on a small machine down to refusing handshakes.
    async fn stop(self) {
        let broker = self.app.broker.clone();
        let config = self.app.config.clone();
        self.stop_keeping_queues().await;
        let Ok(channel) = broker.channel().await else { return };
        let topology = broker.topology();
        let queues = topology.queues.iter().map(|q| q.name.as_str());
        for queue in queues.chain([topology.dead_letter_queue.as_str(), topology.dead_letter_watch_queue.as_str()]) {
            let _ = channel.queue_delete(queue, lapin::options::QueueDeleteOptions::default()).await;
        }
        // The webhook queues, declared only where webhooks are on (their own channel: a delete
        // that fails closes it).
        if config.webhooks.enabled
            && let Ok(connection) = broker.open_connection(Duration::from_secs(10)).await
        {
            if let Ok(webhooks) = connection.create_channel().await {
                let _ = fleet_webhooks::WebhookTopology::new(&config.rabbitmq.queue_prefix).delete(&webhooks).await;
            }
            let _ = connection.close(200, "done").await;
        }
        for exchange in [&topology.exchange, &topology.dead_letter_exchange] {
            let _ = channel.exchange_delete(exchange, lapin::options::ExchangeDeleteOptions::default()).await;
        }
    }

    /// Stops the server only (a restart test starts another on the same queues).
    async fn stop_keeping_queues(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn submit(&self, key: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, "/v1/jobs", Some(key), Some(body)).await
    }

    /// Takes one message from a shared job queue or any configured tenant's lane of it, as a
    /// worker would, and acks it. A connection of its own: a lane that does not exist closes the
    /// channel that asks for it, and the server's own must stay open.
    async fn take(&self, queue_suffix: &str) -> Option<fleet_core::JobSpec> {
        self.take_message(queue_suffix).await.map(|(spec, _)| spec)
    }

    /// [`Self::take`] with the message's properties.
    async fn take_message(&self, queue_suffix: &str) -> Option<(fleet_core::JobSpec, lapin::BasicProperties)> {
        let url = &self.app.config.rabbitmq.url;
        let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await.unwrap();
        let topology = self.app.broker.topology();
        let shared = topology.queues.iter().find(|q| q.name.ends_with(queue_suffix)).unwrap();
        let lanes =
            self.app.config.http.api_keys.iter().map(|key| {
                topology.lane_queue(&fleet_queue::Lane::new(&shared.model, shared.priority, &key.tenant)).name
            });
        let mut taken = None;
        for queue in std::iter::once(shared.name.clone()).chain(lanes) {
            let channel = connection.create_channel().await.unwrap();
            if let Ok(Some(msg)) = channel.basic_get(&queue, BasicGetOptions { no_ack: true }).await {
                let spec = fleet_queue::message::decode(&msg.delivery.data, &msg.delivery.properties).unwrap();
                taken = Some((spec, msg.delivery.properties.clone()));
                break;
            }
        }
        let _ = connection.close(200, "taken").await;
        taken
    }
}

use futures::FutureExt as _;

#[tokio::test]
async fn a_submitted_job_is_recorded_then_confirmed_onto_its_queue() {
    let server = Server::start(isolated_config()).await;
    let (code, body) = server
        .submit(ALICE, json!({"prompt": "a cat", "model": "tiny", "width": 64, "height": 64, "priority": "bulk", "tenant": "mallory"}))
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let status: JobStatus = serde_json::from_value(body).unwrap();
    assert_eq!((status.state, status.tenant.as_str()), (JobState::Queued, "alice"));

    let (code, body) = server.call(reqwest::Method::GET, &format!("/v1/jobs/{}", status.id), Some(ALICE), None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["state"], "queued");

    let queued = server.take(".tiny.bulk").await.expect("the job is on the bulk queue");
    assert_eq!(queued.id, Some(status.id));
    assert_eq!(queued.tenant.as_deref(), Some("alice"), "tenant comes from the key, not the body");
    assert!(queued.seed.is_some(), "the dispatcher draws and records a seed");
    assert!(server.take(".tiny.interactive").await.is_none());
    let lanes = server.app.status.lanes().await.unwrap();
    assert_eq!(lanes, ["tiny.bulk@alice"], "the tenant's lane is declared and registered for workers");
    server.stop().await;
}

/// With `rabbitmq.tenant_lanes` off every job goes to the shared queue, and no lane is made.
#[tokio::test]
async fn without_lanes_jobs_go_to_the_shared_queue() {
    let mut cfg = isolated_config();
    cfg.rabbitmq.tenant_lanes = false;
    let server = Server::start(cfg).await;
    let (code, body) = server.submit(ALICE, json!({"prompt": "a cat", "model": "tiny", "priority": "bulk"})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let channel = server.app.broker.channel().await.unwrap();
    let shared = server.app.broker.topology().queue_for("tiny", fleet_core::Priority::Bulk).unwrap().name.clone();
    let msg = channel.basic_get(&shared, BasicGetOptions { no_ack: true }).await.unwrap();
    assert!(msg.is_some(), "the job waits in {shared}");
    assert!(server.app.status.lanes().await.unwrap().is_empty());
    server.stop().await;
}

/// The 202 of a created job says where it lives (`Location`), and so does the 200 of an
/// idempotent repeat; an array's 202 has none (each item carries its job's id).
#[tokio::test]
async fn a_created_job_answers_with_its_location() {
    let server = Server::start(isolated_config()).await;
    let post = |body: Value| server.http.post(format!("{}/v1/jobs", server.base)).bearer_auth(ALICE).json(&body).send();
    let job = json!({"prompt": "located", "model": "tiny", "idempotency_key": "loc-1"});
    for expected in [StatusCode::ACCEPTED, StatusCode::OK] {
        let resp = post(job.clone()).await.unwrap();
        assert_eq!(resp.status(), expected);
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(location, format!("/v1/jobs/{}", body["id"].as_str().unwrap()));
        let (code, fetched) = server.call(reqwest::Method::GET, &location, Some(ALICE), None).await;
        assert_eq!((code, &fetched["id"]), (StatusCode::OK, &body["id"]));
    }
    let resp = post(json!([{"prompt": "one", "model": "tiny"}, {"prompt": "two", "model": "tiny"}])).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(resp.headers().get("location").is_none());
    server.stop().await;
}

#[tokio::test]
async fn invalid_jobs_get_every_field_error_and_nothing_is_queued() {
    let server = Server::start(isolated_config()).await;
    let (code, body) = server.submit(ALICE, json!({"prompt": "", "steps": 3, "model": "tiny", "width": 65})).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_spec");
    let fields: Vec<&str> =
        body["error"]["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["prompt", "steps", "width"]);

    let (code, body) = server
        .submit(ALICE, json!([{"prompt": "ok", "model": "tiny"}, {"prompt": "x", "model": "tiny", "stepz": 4}]))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["fields"][0]["field"], "[1].stepz");
    assert!(server.take(".tiny.interactive").await.is_none(), "a rejected batch queues nothing");

    let (code, body) = server.submit(ALICE, json!({"prompt": "x", "model": "no-such-model"})).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["fields"][0]["field"], "model", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("this fleet serves: tiny"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn a_batch_is_accepted_job_by_job() {
    let server = Server::start(isolated_config()).await;
    let jobs: Vec<Value> = (0..3).map(|i| json!({"prompt": format!("cat {i}"), "model": "tiny"})).collect();
    let (code, body) = server.submit(ALICE, Value::Array(jobs)).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["jobs"].as_array().unwrap().len(), 3);
    for _ in 0..3 {
        assert!(server.take(".tiny.interactive").await.is_some());
    }
    server.stop().await;
}

#[tokio::test]
async fn the_same_idempotency_key_gives_the_same_job() {
    let server = Server::start(isolated_config()).await;
    let job = json!({"prompt": "once", "model": "tiny", "idempotency_key": "row-17"});
    let (c1, first) = server.submit(ALICE, job.clone()).await;
    let (c2, second) = server.submit(ALICE, job.clone()).await;
    assert_eq!((c1, c2), (StatusCode::ACCEPTED, StatusCode::OK));
    assert_eq!(first["id"], second["id"]);
    assert!(server.take(".tiny.interactive").await.is_some());
    assert!(server.take(".tiny.interactive").await.is_none(), "published once");
    let (_, other_tenant) = server.submit(BOB, job).await;
    assert_ne!(other_tenant["id"], first["id"], "keys are per tenant");
    server.stop().await;
}

#[tokio::test]
async fn keys_and_tenants_are_enforced_on_every_endpoint() {
    let server = Server::start(isolated_config()).await;
    let (_, job) = server.submit(ALICE, json!({"prompt": "mine", "model": "tiny"})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    use reqwest::Method as M;
    let job_paths = [
        (M::GET, format!("/v1/jobs/{id}")),
        (M::DELETE, format!("/v1/jobs/{id}")),
        (M::GET, format!("/v1/jobs/{id}/events")),
        (M::GET, format!("/v1/jobs/{id}/images/0")),
        (M::GET, format!("/v1/jobs/{id}/images/0/url")),
    ];
    let others =
        [(M::GET, "/v1/jobs".to_owned()), (M::POST, "/v1/jobs".to_owned()), (M::GET, "/v1/library".to_owned())];
    for (method, path) in job_paths.iter().cloned().chain(others) {
        let (code, body) = server.call(method.clone(), &path, None, None).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{method} {path} without key: {body}");
        let (code, _) = server.call(method.clone(), &path, Some("wrong-key-123"), None).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{method} {path} with a wrong key");
    }
    for (method, path) in job_paths {
        let (code, body) = server.call(method.clone(), &path, Some(BOB), None).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{method} {path} as another tenant: {body}");
    }
    let (_, listed) = server.call(M::GET, "/v1/jobs", Some(BOB), None).await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 0);
    let (_, listed) = server.call(M::GET, "/v1/jobs", Some(ALICE), None).await;
    assert_eq!(listed["jobs"][0]["id"], id.as_str());
    for path in ["/v1/queues", "/v1/workers"] {
        let (code, _) = server.call(M::GET, path, Some(ALICE), None).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{path} needs admin");
        let (code, body) = server.call(M::GET, path, Some(ADMIN), None).await;
        assert_eq!(code, StatusCode::OK, "{path}: {body}");
    }
    let (code, _) = server.call(M::GET, &format!("/v1/jobs/{id}"), Some(ADMIN), None).await;
    assert_eq!(code, StatusCode::OK, "admins see every tenant's jobs");
    server.stop().await;
}

/// The library names the caller and what it may ask for: models with limits, LoRAs, ControlNets.
#[tokio::test]
async fn the_library_describes_the_caller_and_its_choices() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ink.safetensors"), b"").unwrap();
    std::fs::create_dir(dir.path().join("canny")).unwrap();
    let mut cfg = isolated_config();
    cfg.library.lora_dir = dir.path().to_owned();
    cfg.library.controlnet_dir = dir.path().to_owned();
    let server = Server::start(cfg).await;
    let (code, library) = server.call(reqwest::Method::GET, "/v1/library", Some(ALICE), None).await;
    assert_eq!(code, StatusCode::OK, "{library}");
    assert_eq!(
        library,
        json!({"tenant": "alice", "admin": false, "models": [{"name": "tiny", "max_side": 2048, "max_pixels": 4_200_000}],
               "loras": ["ink"], "controlnets": ["canny"]})
    );
    let (_, library) = server.call(reqwest::Method::GET, "/v1/library", Some(ADMIN), None).await;
    assert_eq!(library["admin"], true);
    server.stop().await;
}

/// The console's files are in the binary and served under `/ui` with their types and a strict
/// policy; every file a page or module names is there (a file added to the console but not to
/// the table of served files fails here).
#[tokio::test]
async fn the_console_is_served_from_the_binary() {
    let server = Server::start(isolated_config()).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let get = |path: &str| http.get(format!("{}{path}", server.base)).send();
    let root = get("/ui").await.unwrap();
    assert_eq!((root.status(), root.headers()["location"].to_str().unwrap()), (StatusCode::PERMANENT_REDIRECT, "/ui/"));
    let mut pending = vec![("/ui/".to_owned(), "text/html")];
    let mut seen = std::collections::BTreeSet::new();
    while let Some((path, kind)) = pending.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let resp = get(&path).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let headers = resp.headers().clone();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind), "{path}: {headers:?}");
        assert!(headers["content-security-policy"].to_str().unwrap().contains("default-src 'self'"));
        let text = resp.text().await.unwrap();
        // what the file refers to: src="x.js", href="x.css", from "./x.js"
        for part in text.split(['"', '\'']).filter(|p| p.ends_with(".js") || p.ends_with(".css")) {
            let name = part.trim_start_matches("./");
            if !name.contains('/') && !name.contains(' ') {
                let kind = if name.ends_with(".js") { "text/javascript" } else { "text/css" };
                pending.push((format!("/ui/{name}"), kind));
            }
        }
    }
    assert!(seen.len() >= 8, "the page and its modules: {seen:?}");
    assert_eq!(get("/ui/missing.js").await.unwrap().status(), StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test]
async fn cancel_before_run_and_twice() {
    let server = Server::start(isolated_config()).await;
    let (_, job) = server.submit(ALICE, json!({"prompt": "never", "model": "tiny"})).await;
    let id = job["id"].as_str().unwrap();
    let cancel = format!("/v1/jobs/{id}/cancel");
    let (code, body) = server.call(reqwest::Method::POST, &cancel, Some(ALICE), None).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["state"], "cancelled");
    assert!(server.app.status.is_cancel_requested(id.parse().unwrap()).await.unwrap(), "workers see the flag");
    let (code, body) = server.call(reqwest::Method::POST, &cancel, Some(ALICE), None).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    server.stop().await;
}

#[tokio::test]
async fn events_stream_follows_the_job_to_its_end_in_order() {
    let server = Server::start(isolated_config()).await;
    let (_, job) = server.submit(ALICE, json!({"prompt": "watched", "model": "tiny", "steps": 2})).await;
    let id: uuid::Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let resp = server.http.get(format!("{}/v1/jobs/{id}/events", server.base)).bearer_auth(ALICE).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");

    let status = server.app.status.clone();
    let worker = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        status.update(id, |s| s.start("worker-1", chrono::Utc::now())).await.unwrap();
        for step in 1..=2 {
            status.set_progress(id, Progress { step, steps: 2, images_done: 0, images_total: 1 }).await.unwrap();
        }
        status.update(id, |s| s.succeed(vec![], chrono::Utc::now())).await.unwrap();
    });
    let mut body = String::new();
    let mut stream = resp.bytes_stream();
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(chunk) = stream.next().await {
            body.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    });
    read.await.expect("the stream ends after the final state");
    worker.await.unwrap();
    let kinds: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(kinds, ["queued", "running", "running", "running", "succeeded"], "{body}");
    let ids: Vec<u64> = body.lines().filter_map(|l| l.strip_prefix("id: ")).map(|id| id.parse().unwrap()).collect();
    assert_eq!(ids.len(), kinds.len(), "every event has an id: {body}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids (revisions) increase: {body}");
    let steps: Vec<u64> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str::<Value>(d).unwrap()["progress"]["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [0, 0, 1, 2, 2]);
    server.stop().await;
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let mut cfg = isolated_config();
    cfg.rabbitmq.max_queue_depth = 2;
    let server = Server::start(cfg).await;
    for i in 0..2 {
        let (code, body) = server.submit(ALICE, json!({"prompt": format!("fill {i}"), "model": "tiny"})).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the depth cache
    let resp = server
        .http
        .post(format!("{}/v1/jobs", server.base))
        .bearer_auth(ALICE)
        .json(&json!({"prompt": "one too many", "model": "tiny"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["retryable"], true);
    server.stop().await;
}

#[tokio::test]
async fn jobs_in_flight_survive_a_dispatcher_restart() {
    let cfg = isolated_config();
    let server = Server::start(cfg.clone()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (_, job) = server.submit(ALICE, json!({"prompt": format!("survivor {i}"), "model": "tiny"})).await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    server.stop_keeping_queues().await;
    let server = Server::start(cfg).await;
    for id in &ids {
        let (code, body) = server.call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), Some(ALICE), None).await;
        assert_eq!((code, body["state"].as_str()), (StatusCode::OK, Some("queued")));
    }
    let mut on_queue = Vec::new();
    while let Some(job) = server.take(".tiny.interactive").await {
        on_queue.push(job.id.unwrap().to_string());
    }
    assert_eq!(on_queue, ids, "every accepted job is still queued, in order");
    server.stop().await;
}

#[tokio::test]
async fn readiness_and_metrics() {
    let server = Server::start(isolated_config()).await;
    let (code, body) = server.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!((&body["redis"], &body["rabbitmq"], &body["s3"]), (&json!("ok"), &json!("ok"), &json!("ok")), "{body}");
    server.submit(ALICE, json!({"prompt": "counted", "model": "tiny"})).await;
    let text = server.http.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("fleet_jobs_accepted_total{model=\"tiny\",priority=\"interactive\"} 1"), "{text}");
    assert!(text.contains(".tiny.interactive@alice\"} 1"), "the tenant's lane is scraped: {text}");
    assert!(text.contains(".tiny.interactive\"} 0"), "the shared queue too: {text}");
    server.stop().await;
}

/// HTTP metrics per route template (never the raw path), method and status: 401s of the key layer,
/// 429s of the rate limit and the router's own 404s among them.
#[tokio::test]
async fn http_metrics_count_routes_by_template_and_status() {
    let mut cfg = isolated_config();
    cfg.http.max_requests_per_sec_per_tenant = 1;
    let server = Server::start(cfg).await;
    let id = uuid::Uuid::now_v7();
    let (code, _) = server.call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None, None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    // Three requests within a few milliseconds span at most two one-second windows of one each.
    let calls = (0..3).map(|_| server.call(reqwest::Method::GET, "/v1/jobs", Some(BOB), None));
    let codes: Vec<StatusCode> = futures::future::join_all(calls).await.into_iter().map(|(c, _)| c).collect();
    let limited = codes.iter().filter(|c| **c == StatusCode::TOO_MANY_REQUESTS).count();
    assert!(limited >= 1, "{codes:?}");
    let (code, _) = server.call(reqwest::Method::GET, "/no/such/route", None, None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    let text = server.http.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    let sample = |name: &str, route: &str, status: u16| {
        let prefix = format!(r#"{name}{{method="GET",route="{route}",status="{status}"}} "#);
        text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.parse::<f64>().unwrap())
    };
    assert_eq!(sample("fleet_http_requests_total", "/v1/jobs/{id}", 401), Some(1.0), "{text}");
    assert_eq!(sample("fleet_http_requests_total", "/v1/jobs", 429), Some(limited as f64), "{text}");
    assert_eq!(sample("fleet_http_requests_total", "/v1/jobs", 200), Some((3 - limited) as f64), "{text}");
    assert_eq!(sample("fleet_http_requests_total", "unmatched", 404), Some(1.0), "{text}");
    assert_eq!(sample("fleet_http_request_duration_seconds_count", "/v1/jobs/{id}", 401), Some(1.0), "{text}");
    let inf = r#"fleet_http_request_duration_seconds_bucket{method="GET",route="/v1/jobs",status="429",le="+Inf"} "#;
    assert!(text.lines().any(|l| l.starts_with(inf)), "{text}");
    assert!(!text.contains(&id.to_string()) && !text.contains("/no/such"), "raw paths are no labels: {text}");
    server.stop().await;
}

/// A private Redis we can kill: the dispatcher must answer 503 and publish nothing without its status record.
#[tokio::test]
async fn redis_down_means_503_and_nothing_published() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut redis = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    let mut cfg = isolated_config();
    cfg.redis.url = format!("redis://127.0.0.1:{port}/0");
    let mut server = None;
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            server = Some(Server::start(cfg.clone()).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let server = server.expect("private redis started");
    let (code, _) = server.submit(ALICE, json!({"prompt": "before", "model": "tiny"})).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    assert!(server.take(".tiny.interactive").await.is_some());

    redis.kill().unwrap();
    redis.wait().unwrap();
    let (code, body) = server.submit(ALICE, json!({"prompt": "after", "model": "tiny"})).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "status_unavailable");
    assert!(body["error"]["message"].as_str().unwrap().contains("Redis"), "{body}");
    assert!(server.take(".tiny.interactive").await.is_none(), "no job without its status record");
    let (code, _) = server.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    server.stop().await;
}

/// The committed document is what the code generates; regenerate with `FLEET_UPDATE_SCHEMA=1`.
#[test]
fn committed_openapi_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let generated = fleet_dispatcher::openapi::document_text();
    if std::env::var_os("FLEET_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(committed == generated, "docs/openapi.json is out of date; regenerate with FLEET_UPDATE_SCHEMA=1");
}

/// Every operation in the document is routed (no operation falls through to the 404 fallback).
#[tokio::test]
async fn every_documented_operation_is_served() {
    let server = Server::start(isolated_config()).await;
    let (code, doc) = server.call(reqwest::Method::GET, "/openapi.json", None, None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(doc, fleet_dispatcher::openapi::document());
    for (method, path) in fleet_dispatcher::openapi::operations() {
        if path.ends_with("/events") {
            continue; // a stream; covered by its own test
        }
        let path = path.replace("{id}", &uuid::Uuid::now_v7().to_string()).replace("{n}", "0");
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (code, body) =
            server.call(method.clone(), &path, Some(ADMIN), Some(json!({"prompt": "doc", "model": "tiny"}))).await;
        let fell_through = code == StatusCode::NOT_FOUND && body["error"]["message"] == "no such endpoint";
        assert!(!fell_through, "{method} {path} is documented but not routed");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_tenant_over_its_request_rate_gets_429_and_others_do_not() {
    let mut cfg = isolated_config();
    cfg.http.max_requests_per_sec_per_tenant = 5;
    let server = Server::start(cfg).await;
    let calls = (0..12).map(|_| server.http.get(format!("{}/v1/jobs", server.base)).bearer_auth(ALICE).send());
    let responses = futures::future::join_all(calls).await;
    let mut limited = 0;
    for resp in responses {
        let resp = resp.unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(resp.headers()["retry-after"], "1");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
            assert!(body["error"]["message"].as_str().unwrap().contains("alice"), "{body}");
            limited += 1;
        } else {
            assert_eq!(resp.status(), StatusCode::OK);
        }
    }
    // 12 requests span at most two one-second windows of 5 each.
    assert!(limited >= 2, "only {limited} of 12 requests were limited");
    let (code, _) = server.call(reqwest::Method::GET, "/v1/jobs", Some(BOB), None).await;
    assert_eq!(code, StatusCode::OK, "another tenant is not limited by alice's traffic");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, _) = server.call(reqwest::Method::GET, "/v1/jobs", Some(ALICE), None).await;
    assert_eq!(code, StatusCode::OK, "the next window admits alice again");
    server.stop().await;
}

/// Submits a job as `key`, then plays a crash loop (every "worker" takes it and gives it back
/// unfinished; when `started`, the first one recorded its start) until the broker dead-letters
/// it; returns its id. Needs `delivery_limit` 1.
async fn poison(server: &Server, key: &str, prompt: &str, started: bool) -> String {
    let (code, body) = server.submit(key, json!({"prompt": prompt, "model": "tiny"})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    if started {
        let id = body["id"].as_str().unwrap().parse().unwrap();
        server.app.status.update(id, |s| s.start("crashing-worker", chrono::Utc::now())).await.unwrap();
    }
    let channel = server.app.broker.channel().await.unwrap();
    let tenant = body["tenant"].as_str().unwrap();
    let queue =
        server.app.broker.topology().route("tiny", fleet_core::Priority::Interactive, Some(tenant)).unwrap().name;
    let mut deliveries = 0;
    while let Some(msg) = channel.basic_get(&queue, BasicGetOptions { no_ack: false }).await.unwrap() {
        deliveries += 1;
        assert!(deliveries <= 5, "the broker keeps redelivering the job");
        // A reject counts on every RabbitMQ version (from 4.3 a nack does not).
        msg.delivery.reject(lapin::options::BasicRejectOptions { requeue: true }).await.unwrap();
    }
    assert_eq!(deliveries, 2, "delivery_limit 1: the second return dead-letters it");
    body["id"].as_str().unwrap().to_owned()
}

/// Waits until job `id` is failed (the dead-letter watcher marks it) and returns its status.
async fn failed(server: &Server, key: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (code, body) = server.call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), Some(key), None).await;
        assert_eq!(code, StatusCode::OK);
        if body["state"] == "failed" {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "the job was never marked failed: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_job_that_keeps_crashing_workers_ends_failed_as_dead_lettered() {
    let mut cfg = isolated_config();
    cfg.rabbitmq.delivery_limit = 1;
    let server = Server::start(cfg).await;
    let id = poison(&server, ALICE, "poison", true).await;
    let body = failed(&server, ALICE, &id).await;
    assert_eq!(body["error"]["code"], "dead_lettered", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("delivery limit") && message.contains("started 1 time(s)"), "{body}");
    // Operators still find the job in the dead-letter queue.
    let dlq = server.app.broker.depth(&server.app.broker.topology().dead_letter_queue).await.unwrap();
    assert_eq!(dlq.messages, 1);
    server.stop().await;
}

/// The admin list of dead letters names each job, its tenant and why it died, and looking at it
/// (however often) leaves every message in the queue, in order, with its body intact.
#[tokio::test]
async fn dead_letters_are_listed_for_admins_and_stay_in_the_queue() {
    let mut cfg = isolated_config();
    cfg.rabbitmq.delivery_limit = 1;
    let server = Server::start(cfg).await;
    let first = poison(&server, ALICE, "poison one", false).await;
    let second = poison(&server, BOB, "poison two", false).await;
    let body = failed(&server, BOB, &second).await;
    // No worker started it: it was only ever returned while it waited, and the record says so.
    assert!(body["error"]["message"].as_str().unwrap().contains("never started"), "{body}");
    let dlq = server.app.broker.topology().dead_letter_queue.clone();
    // Each tenant's job died in its own lane.
    let job_queue = |tenant: &str| {
        server.app.broker.topology().route("tiny", fleet_core::Priority::Interactive, Some(tenant)).unwrap().name
    };

    let (code, body) = server.call(reqwest::Method::GET, "/v1/dead-letters", Some(ALICE), None).await;
    assert_eq!((code, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{body}");

    let mut pages = Vec::new();
    for _ in 0..3 {
        let (code, body) = server.call(reqwest::Method::GET, "/v1/dead-letters", Some(ADMIN), None).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        pages.push(body);
    }
    let page = &pages[0];
    assert_eq!((page["queue"].as_str(), page["depth"].as_u64()), (Some(dlq.as_str()), Some(2)), "{page}");
    let messages = page["messages"].as_array().unwrap();
    let ids: Vec<&str> = messages.iter().map(|m| m["job_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [first.as_str(), second.as_str()], "oldest first");
    let tenants: Vec<&str> = messages.iter().map(|m| m["tenant"].as_str().unwrap()).collect();
    assert_eq!(tenants, ["alice", "bob"]);
    for m in messages {
        assert_eq!(m["reason"], "crashed", "the broker's delivery limit: {m}");
        assert!(m["detail"].as_str().unwrap().contains("delivery limit"), "{m}");
        let queue = job_queue(m["tenant"].as_str().unwrap());
        assert_eq!((m["queue"].as_str(), m["count"].as_i64()), (Some(queue.as_str()), Some(1)), "{m}");
        assert_eq!((m["model"].as_str(), m["priority"].as_str()), (Some("tiny"), Some("interactive")), "{m}");
        let time: chrono::DateTime<chrono::Utc> = m["time"].as_str().unwrap().parse().unwrap();
        assert!((chrono::Utc::now() - time).num_seconds().abs() < 120, "{m}");
        assert!(m["body_preview"].is_null(), "{m}");
    }
    assert!(pages[1] == pages[0] && pages[2] == pages[0], "looking again shows the same: {pages:?}");
    let (_, one) = server.call(reqwest::Method::GET, "/v1/dead-letters?limit=1", Some(ADMIN), None).await;
    assert_eq!(one["messages"].as_array().unwrap().len(), 1, "{one}");

    // Still there, in order, whole: an operator can take them off the queue afterwards.
    let channel = server.app.broker.channel().await.unwrap();
    for id in [&first, &second] {
        let msg = channel.basic_get(&dlq, BasicGetOptions { no_ack: true }).await.unwrap().expect("still queued");
        let job = fleet_queue::message::decode(&msg.delivery.data, &msg.delivery.properties).unwrap();
        assert_eq!(job.id.map(|u| u.to_string()).as_deref(), Some(id.as_str()));
    }
    let (_, empty) = server.call(reqwest::Method::GET, "/v1/dead-letters", Some(ADMIN), None).await;
    assert_eq!((empty["depth"].as_u64(), empty["messages"].as_array().map(Vec::len)), (Some(0), Some(0)), "{empty}");
    server.stop().await;
}

/// Bulk runs are admin-only; a name that is not a run name, or no run, is 404.
#[tokio::test]
async fn bulk_runs_are_admin_only_and_unknown_runs_are_not_found() {
    let server = Server::start(isolated_config()).await;
    for path in ["/v1/bulk/runs", "/v1/bulk/runs/cats"] {
        let (code, body) = server.call(reqwest::Method::GET, path, Some(ALICE), None).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{path}: {body}");
    }
    let (code, body) = server.call(reqwest::Method::GET, "/v1/bulk/runs", Some(ADMIN), None).await;
    assert_eq!((code, body), (StatusCode::OK, json!({"runs": []})));
    for name in ["cats", "cats:jobs"] {
        let (code, body) = server.call(reqwest::Method::GET, &format!("/v1/bulk/runs/{name}"), Some(ADMIN), None).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{name}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(name), "{body}");
    }
    server.stop().await;
}
