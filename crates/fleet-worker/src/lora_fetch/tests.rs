//! The fetcher against a real HTTP server on loopback (allowed by configuration, as a deployment
//! would allow a private mirror) and the real S3 server of the test services.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use fleet_core::config::{LoraFetchConfig, S3Config};

use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fleet-engine/tests/fixtures/extras");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}.safetensors")).unwrap()
}

/// An HTTP server on 127.0.0.1 serving `files` by name (`/<name>`), counting requests per name;
/// `/slow/<name>` answers after 5 s, `/busy/<name>` with 503, `/cut/<name>` sends half the file
/// and drops the connection, anything unknown is 404. Every answer waits 200 ms first, so
/// concurrent requests overlap.
struct Server {
    base: String,
    hits: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    requests: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Files {
    files: Arc<HashMap<String, Vec<u8>>>,
    hits: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    requests: Arc<AtomicUsize>,
}

async fn serve(State(state): State<Files>, UrlPath(path): UrlPath<String>) -> axum::response::Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    *state.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mode, name) = path.split_once('/').unwrap_or(("", path.as_str()));
    match (mode, state.files.get(name)) {
        ("slow", Some(_)) => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::OK.into_response()
        }
        ("busy", _) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        ("cut", Some(body)) => {
            let half = axum::body::Bytes::copy_from_slice(&body[..body.len() / 2]);
            let chunks: [Result<axum::body::Bytes, std::io::Error>; 2] =
                [Ok(half), Err(std::io::Error::other("connection cut"))];
            axum::body::Body::from_stream(futures::stream::iter(chunks)).into_response()
        }
        ("", Some(body)) => body.clone().into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

impl Server {
    async fn start(files: &[(&str, Vec<u8>)]) -> Server {
        let state = Files {
            files: Arc::new(files.iter().map(|(n, b)| ((*n).to_owned(), b.clone())).collect()),
            hits: Arc::default(),
            requests: Arc::default(),
        };
        let (hits, requests) = (state.hits.clone(), state.requests.clone());
        let app = axum::Router::new().route("/{*path}", axum::routing::get(serve)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server { base, hits, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn config(dir: &std::path::Path, cache_max_bytes: u64) -> LoraFetchConfig {
    LoraFetchConfig {
        cache_dir: dir.to_owned(),
        cache_max_bytes,
        max_file_bytes: cache_max_bytes,
        timeout_secs: 2,
        allowed_hosts: vec!["127.0.0.1".into()],
        allow_http: true,
        allowed_private: vec!["127.0.0.0/8".into()],
        ..LoraFetchConfig::default()
    }
}

fn local_s3() -> S3Config {
    S3Config { local_dir: Some("unused".into()), ..S3Config::default() }
}

fn cached_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_cached_lora_is_not_downloaded_again() {
    let style = fixture("lora_kohya");
    let digest = fleet_storage::sha256_hex(&style);
    let server = Server::start(&[("style.safetensors", style.clone())]).await;
    let dir = tempfile::tempdir().unwrap();
    let fetcher = LoraFetcher::new(&config(dir.path(), 1 << 20), &local_s3()).await.unwrap();
    let url = server.url("style.safetensors");
    let (file, outcome) = fetcher.fetch(&url, &digest).await.unwrap();
    assert_eq!(outcome, CacheOutcome::Fetched);
    assert_eq!(std::fs::read(file.path()).unwrap(), style);
    assert_eq!(file.path(), dir.path().join(format!("{digest}.safetensors")));
    drop(file);
    let (_, outcome) = fetcher.fetch(&url, &digest).await.unwrap();
    assert_eq!(outcome, CacheOutcome::Hit);
    assert_eq!(server.hits("style.safetensors"), 1, "the second job is served from the cache");
    // A restarted worker finds the file on disk.
    let reopened = LoraFetcher::new(&config(dir.path(), 1 << 20), &local_s3()).await.unwrap();
    assert_eq!(reopened.fetch(&url, &digest).await.unwrap().1, CacheOutcome::Hit);
    assert_eq!(server.hits("style.safetensors"), 1);
    assert_eq!(cached_files(dir.path()), [format!("{digest}.safetensors")], "no temporary files left");
}

#[tokio::test]
async fn the_least_recently_used_file_is_evicted_but_never_one_in_use() {
    let (a, b) = (fixture("lora_kohya"), fixture("lora_peft"));
    let (da, db) = (fleet_storage::sha256_hex(&a), fleet_storage::sha256_hex(&b));
    let server = Server::start(&[("a.safetensors", a.clone()), ("b.safetensors", b.clone())]).await;
    let dir = tempfile::tempdir().unwrap();
    // Room for either file, not both.
    let limit = a.len().max(b.len()) as u64 + 1000;
    let fetcher = LoraFetcher::new(&config(dir.path(), limit), &local_s3()).await.unwrap();
    let (ua, ub) = (server.url("a.safetensors"), server.url("b.safetensors"));
    let pinned_a = fetcher.fetch(&ua, &da).await.unwrap().0;
    // `a` is in use: `b` does not fit beside it, and `a` stays.
    let err = fetcher.fetch(&ub, &db).await.unwrap_err();
    assert!(matches!(err, FetchError::Cache(CacheError::Full { .. })), "{err}");
    let job_error = err.job_error(&ub);
    assert_eq!((job_error.code, job_error.retryable), (ErrorCode::LoraFetchFailed, true), "{job_error:?}");
    assert!(fetcher.cache().contains(&da) && !fetcher.cache().contains(&db));
    drop(pinned_a);
    // Now `a` is the least recently used and goes.
    fetcher.fetch(&ub, &db).await.unwrap();
    assert!(!fetcher.cache().contains(&da) && fetcher.cache().contains(&db));
    assert_eq!(cached_files(dir.path()), [format!("{db}.safetensors")]);
    assert!(fetcher.cache().total_bytes() <= limit);
    fetcher.fetch(&ua, &da).await.unwrap();
    assert_eq!((server.hits("a.safetensors"), server.hits("b.safetensors")), (2, 2));
    assert_eq!(cached_files(dir.path()), [format!("{da}.safetensors")]);
}

#[tokio::test]
async fn a_file_with_another_digest_is_refused_and_not_kept() {
    let style = fixture("lora_kohya");
    let server = Server::start(&[("style.safetensors", style)]).await;
    let dir = tempfile::tempdir().unwrap();
    let fetcher = LoraFetcher::new(&config(dir.path(), 1 << 20), &local_s3()).await.unwrap();
    let url = format!("{}?token=secret", server.url("style.safetensors"));
    let wrong = "0".repeat(64);
    let err = fetcher.fetch(&url, &wrong).await.unwrap_err();
    let job_error = err.job_error(&url);
    assert_eq!((job_error.code, job_error.retryable), (ErrorCode::LoraDigestMismatch, false));
    assert!(job_error.message.contains(&server.url("style.safetensors")), "names the URL: {}", job_error.message);
    assert!(!job_error.message.contains("secret"), "the query is masked: {}", job_error.message);
    assert!(
        cached_files(dir.path()).is_empty(),
        "neither the file nor a partial one stays: {:?}",
        cached_files(dir.path())
    );
}

#[tokio::test]
async fn oversize_missing_slow_and_failing_hosts_fail_with_their_retryability() {
    let style = fixture("lora_kohya");
    let digest = fleet_storage::sha256_hex(&style);
    let server = Server::start(&[("style.safetensors", style.clone())]).await;
    let dir = tempfile::tempdir().unwrap();
    let small = LoraFetchConfig { max_file_bytes: 1000, ..config(dir.path(), 1 << 20) };
    let fetcher = LoraFetcher::new(&small, &local_s3()).await.unwrap();
    let cases = [
        ("style.safetensors", "larger than the limit of 1000 bytes", false),
        ("missing.safetensors", "answered HTTP 404", false),
        ("slow/style.safetensors", "timed out", true),
        ("busy/style.safetensors", "answered HTTP 503", true),
    ];
    for (path, reason, retryable) in cases {
        let url = server.url(path);
        let err = fetcher.fetch(&url, &digest).await.unwrap_err();
        let e = err.job_error(&url);
        assert_eq!((e.code, e.retryable), (ErrorCode::LoraFetchFailed, retryable), "{path}: {e:?}");
        assert!(e.message.contains(&url) && e.message.contains(reason), "{path}: {}", e.message);
    }
    assert!(cached_files(dir.path()).is_empty(), "{:?}", cached_files(dir.path()));
}

#[tokio::test]
async fn a_download_cut_short_is_never_used_nor_kept() {
    let style = fixture("lora_kohya");
    let digest = fleet_storage::sha256_hex(&style);
    let server = Server::start(&[("style.safetensors", style.clone())]).await;
    let dir = tempfile::tempdir().unwrap();
    // A temporary file a crashed worker left behind, and a whole file it had checked.
    std::fs::write(dir.path().join(format!("{digest}.safetensors.part")), &style[..100]).unwrap();
    let fetcher = LoraFetcher::new(&config(dir.path(), 1 << 20), &local_s3()).await.unwrap();
    assert!(cached_files(dir.path()).is_empty(), "leftovers removed at start: {:?}", cached_files(dir.path()));
    let cut = server.url("cut/style.safetensors");
    let err = fetcher.fetch(&cut, &digest).await.unwrap_err();
    let e = err.job_error(&cut);
    assert_eq!((e.code, e.retryable), (ErrorCode::LoraFetchFailed, true), "a cut connection may work later: {e:?}");
    assert!(e.message.contains(&cut), "{}", e.message);
    assert!(!fetcher.cache().contains(&digest));
    assert!(cached_files(dir.path()).is_empty(), "no partial file stays: {:?}", cached_files(dir.path()));
    // The whole file, fetched next, is the one used.
    let (file, outcome) = fetcher.fetch(&server.url("style.safetensors"), &digest).await.unwrap();
    assert_eq!((outcome, std::fs::read(file.path()).unwrap()), (CacheOutcome::Fetched, style));
}

#[tokio::test]
async fn the_policy_refuses_hosts_and_addresses_not_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&[]).await;
    let digest = "ab".repeat(32);
    let strict = LoraFetchConfig { allowed_private: Vec::new(), ..config(dir.path(), 1 << 20) };
    let fetcher = LoraFetcher::new(&strict, &local_s3()).await.unwrap();
    let e = fetcher.fetch(&server.url("x.safetensors"), &digest).await.unwrap_err().job_error("u");
    assert!(e.message.contains("not a public address"), "{}", e.message);
    let other_host = LoraFetchConfig { allowed_hosts: vec!["cdn.example.com".into()], ..config(dir.path(), 1 << 20) };
    let fetcher = LoraFetcher::new(&other_host, &local_s3()).await.unwrap();
    let e = fetcher.fetch(&server.url("x.safetensors"), &digest).await.unwrap_err().job_error("u");
    assert!(e.message.contains("not in worker.lora_fetch.allowed_hosts"), "{}", e.message);
    let https_only = LoraFetchConfig { allow_http: false, ..config(dir.path(), 1 << 20) };
    let fetcher = LoraFetcher::new(&https_only, &local_s3()).await.unwrap();
    let e = fetcher.fetch(&server.url("x.safetensors"), &digest).await.unwrap_err().job_error("u");
    assert!(e.message.contains("scheme `http` is not allowed"), "{}", e.message);
    let e = fetcher.fetch("s3://elsewhere/x.safetensors", &digest).await.unwrap_err().job_error("u");
    assert!(e.message.contains("not in worker.lora_fetch.allowed_buckets"), "{}", e.message);
    assert_eq!(server.requests.load(Ordering::SeqCst), 0, "nothing refused reached the server");
}

#[tokio::test]
async fn jobs_racing_for_one_file_download_it_once() {
    let style = fixture("lora_kohya");
    let digest = fleet_storage::sha256_hex(&style);
    let server = Server::start(&[("style.safetensors", style.clone())]).await;
    let dir = tempfile::tempdir().unwrap();
    let fetcher = LoraFetcher::new(&config(dir.path(), 1 << 20), &local_s3()).await.unwrap();
    let url = server.url("style.safetensors");
    let results = futures::future::join_all((0..4).map(|_| fetcher.fetch(&url, &digest))).await;
    let outcomes: Vec<CacheOutcome> = results.into_iter().map(|r| r.unwrap().1).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == CacheOutcome::Fetched).count(), 1, "{outcomes:?}");
    assert_eq!(server.hits("style.safetensors"), 1);
}

#[tokio::test]
async fn s3_loras_come_from_an_allowed_bucket() {
    let style = fixture("lora_peft");
    let digest = fleet_storage::sha256_hex(&style);
    // The test server's configuration (same variables and defaults as `tests/src/lib.rs`).
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let s3 = S3Config {
        endpoint: format!("http://127.0.0.1:{}", var("FLEET_TEST_S3_PORT", "8333")),
        bucket: var("FLEET_TEST_S3_BUCKET", "fleet-test"),
        access_key_id: var("FLEET_TEST_S3_ACCESS_KEY", "fleet-test-access"),
        secret_access_key: var("FLEET_TEST_S3_SECRET_KEY", "fleet-test-secret"),
        ..S3Config::default()
    };
    let store = fleet_storage::ImageStore::from_config(&s3).await.unwrap();
    let key = format!("lora-fetch-test/{}.safetensors", uuid::Uuid::new_v4());
    let meta = fleet_storage::ObjectMeta::example(uuid::Uuid::new_v4(), "x", 1);
    store.put(&key, style.clone(), "application/octet-stream", &meta).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fetch = LoraFetchConfig { allowed_buckets: vec![s3.bucket.clone()], ..config(dir.path(), 1 << 20) };
    let fetcher = LoraFetcher::new(&fetch, &s3).await.unwrap();
    let url = format!("s3://{}/{key}", s3.bucket);
    let result = fetcher.fetch(&url, &digest).await;
    let missing = fetcher.fetch(&format!("s3://{}/lora-fetch-test/absent", s3.bucket), &"cd".repeat(32)).await;
    store.delete(&key).await.unwrap();
    let (file, outcome) = result.unwrap();
    assert_eq!((outcome, std::fs::read(file.path()).unwrap()), (CacheOutcome::Fetched, style));
    let e = missing.unwrap_err().job_error("s3://b/k");
    assert_eq!((e.code, e.retryable), (ErrorCode::LoraFetchFailed, false), "{e:?}");
    assert!(e.message.contains("no such object"), "{}", e.message);
}

#[test]
fn urls_are_masked_in_errors() {
    assert_eq!(
        masked_url("https://u:p@cdn.example.com/a.safetensors?sig=1"),
        "https://***@cdn.example.com/a.safetensors?…"
    );
    assert_eq!(masked_url("https://cdn.example.com/a.safetensors"), "https://cdn.example.com/a.safetensors");
    assert_eq!(masked_url("s3://bucket/key"), "s3://bucket/key");
}
