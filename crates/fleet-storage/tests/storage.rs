//! fleet-storage against the real test S3 server (SeaweedFS from `scripts/services.sh`) and a
//! temporary directory. No mocks: the S3 tests need the server at `FLEET_TEST_S3_PORT`.

use std::time::{Duration, Instant};

use fleet_core::config::S3Config;
use fleet_core::{ErrorCode, ImageFormat};
use fleet_storage::{ImageStore, LocalStore, ObjectMeta, S3Options, S3Store, StorageError, object_key, sha256_hex};
use uuid::Uuid;

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The test server's configuration (same variables and defaults as `tests/src/lib.rs`).
fn s3_config() -> S3Config {
    S3Config {
        endpoint: format!("http://127.0.0.1:{}", var("FLEET_TEST_S3_PORT", "8333")),
        region: "us-east-1".into(),
        bucket: var("FLEET_TEST_S3_BUCKET", "fleet-test"),
        prefix: format!("storage-test-{}", Uuid::now_v7().simple()),
        path_style: true,
        access_key_id: var("FLEET_TEST_S3_ACCESS_KEY", "fleet-test-access"),
        secret_access_key: var("FLEET_TEST_S3_SECRET_KEY", "fleet-test-secret"),
        presign_ttl_secs: 60,
        local_dir: None,
    }
}

async fn s3_store(cfg: &S3Config) -> ImageStore {
    ImageStore::from_config(cfg).await.unwrap()
}

/// The execution id every object of these tests is stored under.
const EXEC: &str = "0a1b2c3d4e5f";

fn meta(job_id: Uuid, index: u32) -> ObjectMeta {
    let mut meta = ObjectMeta::example(job_id, EXEC, 12_345_678_901);
    (meta.model, meta.index) = ("sdxl-lightning".into(), index);
    meta
}

/// Deterministic pseudo-random bytes (so a part boundary mix-up cannot go unnoticed).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn cleanup(store: &ImageStore, prefix: &str) {
    for key in store.list(prefix).await.unwrap_or_default() {
        let _ = store.delete(&key).await;
    }
}

#[test]
fn object_keys_name_the_job_and_the_execution() {
    let job = Uuid::parse_str("0190f1c2-3b4d-7e8f-9a0b-1c2d3e4f5a6b").unwrap();
    let a = object_key("images", "acme", job, EXEC, 2, ImageFormat::Png);
    assert_eq!(a, "images/acme/0190f1c2-3b4d-7e8f-9a0b-1c2d3e4f5a6b/0a1b2c3d4e5f/2.png");
    assert_eq!(a, object_key("images", "acme", job, EXEC, 2, ImageFormat::Png));
    assert_eq!(
        object_key("/images/", "acme", job, EXEC, 0, ImageFormat::Jpeg),
        "images/acme/0190f1c2-3b4d-7e8f-9a0b-1c2d3e4f5a6b/0a1b2c3d4e5f/0.jpg"
    );
    assert_eq!(
        object_key("", "acme", job, EXEC, 1, ImageFormat::Webp),
        "acme/0190f1c2-3b4d-7e8f-9a0b-1c2d3e4f5a6b/0a1b2c3d4e5f/1.webp"
    );
    assert_ne!(a, object_key("images", "acme", job, EXEC, 3, ImageFormat::Png));
    assert_ne!(a, object_key("images", "other", job, EXEC, 2, ImageFormat::Png));
    assert_ne!(a, object_key("images", "acme", job, "ffffffffffff", 2, ImageFormat::Png));
}

/// The behaviours both stores share: round trip with content type and metadata, missing keys,
/// idempotent overwrite, listing, delete, invalid keys.
async fn common_behaviour(store: &ImageStore, prefix: &str) {
    let job = Uuid::now_v7();
    let key = object_key(prefix, "acme", job, EXEC, 0, ImageFormat::Png);
    let body = noise(70_000, 1);
    let stored = store.put(&key, body.clone(), ImageFormat::Png.content_type(), &meta(job, 0)).await.unwrap();
    assert_eq!(stored.key, key);
    assert_eq!(stored.bytes, body.len() as u64);
    assert_eq!(stored.sha256, sha256_hex(&body));

    let got = store.get(&key).await.unwrap().expect("object just stored");
    assert_eq!(got.body, body);
    assert_eq!(got.content_type, "image/png");
    assert_eq!(got.sha256(), Some(stored.sha256.as_str()));
    assert_eq!(got.metadata["seed"], "12345678901");
    assert_eq!(got.metadata["model"], "sdxl-lightning");
    assert_eq!(got.metadata["job-id"], job.to_string());
    assert_eq!(got.metadata["index"], "0");
    assert_eq!(got.metadata["execution"], EXEC);
    assert_eq!((got.metadata["tenant"].as_str(), got.metadata["images"].as_str()), ("acme", "1"));
    assert_eq!(got.meta(), Some(meta(job, 0)));
    assert!(store.exists(&key).await.unwrap());

    let missing = object_key(prefix, "acme", job, EXEC, 9, ImageFormat::Png);
    assert!(store.get(&missing).await.unwrap().is_none());
    assert!(!store.exists(&missing).await.unwrap());

    // A retried upload stores the same key again: still one object, now the latest bytes.
    store.put(&key, body.clone(), "image/png", &meta(job, 0)).await.unwrap();
    let again = noise(70_000, 2);
    let stored2 = store.put(&key, again.clone(), "image/png", &meta(job, 0)).await.unwrap();
    let job_prefix = format!("{prefix}/acme/{job}/");
    assert_eq!(store.list(&job_prefix).await.unwrap(), vec![key.clone()]);
    let got = store.get(&key).await.unwrap().unwrap();
    assert_eq!(got.body, again);
    assert_eq!(got.sha256(), Some(stored2.sha256.as_str()));

    let second = object_key(prefix, "acme", job, EXEC, 1, ImageFormat::Webp);
    store.put(&second, b"webp".to_vec(), "image/webp", &meta(job, 1)).await.unwrap();
    assert_eq!(store.list(&job_prefix).await.unwrap(), vec![key.clone(), second.clone()]);
    assert_eq!(store.list(&format!("{prefix}/nobody/")).await.unwrap(), Vec::<String>::new());

    store.delete(&second).await.unwrap();
    store.delete(&second).await.unwrap(); // deleting a missing object is fine
    assert!(!store.exists(&second).await.unwrap());

    for bad in ["", "a//b", "../escape", "a/./b"] {
        let err = store.put(bad, vec![1], "image/png", &meta(job, 0)).await.unwrap_err();
        assert!(matches!(err, StorageError::InvalidKey { .. }), "{bad:?}: {err}");
        assert_eq!(err.code(), ErrorCode::Internal);
        assert!(!err.is_transient());
    }
    store.check().await.unwrap();
}

#[tokio::test]
async fn s3_store_round_trip_overwrite_list() {
    let cfg = s3_config();
    let store = s3_store(&cfg).await;
    assert!(matches!(store, ImageStore::S3(_)));
    common_behaviour(&store, &cfg.prefix).await;
    cleanup(&store, &cfg.prefix).await;
    assert!(store.list(&cfg.prefix).await.unwrap().is_empty());
}

#[tokio::test]
async fn s3_multipart_upload_gives_identical_bytes() {
    let cfg = s3_config();
    let options = S3Options { multipart_threshold: 1024 * 1024, part_size: 5 * 1024 * 1024, ..S3Options::default() };
    let store = ImageStore::S3(S3Store::new(&cfg, options).await.unwrap());
    let job = Uuid::now_v7();
    let key = object_key(&cfg.prefix, "acme", job, EXEC, 0, ImageFormat::Png);
    let body = noise(12 * 1024 * 1024 + 123, 3); // parts of 5 MiB, 5 MiB and 2 MiB + 123 bytes
    let started = Instant::now();
    let stored = store.put(&key, body.clone(), "image/png", &meta(job, 0)).await.unwrap();
    eprintln!("multipart put of {} bytes: {:?}", body.len(), started.elapsed());
    assert_eq!(stored.sha256, sha256_hex(&body));

    let ImageStore::S3(s3) = &store else { unreachable!() };
    let head = s3.client().head_object().bucket(&cfg.bucket).key(&key).send().await.unwrap();
    // A multipart object's ETag is `<md5 of part md5s>-<number of parts>`.
    let etag = head.e_tag().unwrap_or_default();
    assert!(etag.trim_matches('"').ends_with("-3"), "ETag {etag} is not a 3-part upload");
    assert_eq!(head.content_length(), Some(body.len() as i64));

    let got = store.get(&key).await.unwrap().unwrap();
    assert!(got.body == body, "multipart bytes differ");
    assert_eq!(got.content_type, "image/png");
    assert_eq!(got.sha256(), Some(stored.sha256.as_str()));
    assert_eq!(got.meta(), Some(meta(job, 0)));

    // Below the threshold the same store makes a plain PutObject.
    let small = object_key(&cfg.prefix, "acme", job, EXEC, 1, ImageFormat::Png);
    store.put(&small, vec![7; 1000], "image/png", &meta(job, 1)).await.unwrap();
    let head = s3.client().head_object().bucket(&cfg.bucket).key(&small).send().await.unwrap();
    assert!(!head.e_tag().unwrap_or_default().contains('-'), "{:?}", head.e_tag());
    cleanup(&store, &cfg.prefix).await;
}

#[tokio::test]
async fn s3_presigned_urls_fetch_the_bytes_and_expire() {
    let cfg = s3_config();
    let store = s3_store(&cfg).await;
    let job = Uuid::now_v7();
    let key = object_key(&cfg.prefix, "acme", job, EXEC, 0, ImageFormat::Jpeg);
    let body = noise(50_000, 4);
    store.put(&key, body.clone(), "image/jpeg", &meta(job, 0)).await.unwrap();

    let url = store.presign_get(&key, Duration::from_secs(90)).await.unwrap().expect("S3 presigns");
    assert!(url.starts_with(&format!("{}/{}/", cfg.endpoint, cfg.bucket)), "{url}");
    assert!(url.contains("X-Amz-Expires=90"), "{url}");
    assert!(!url.contains(&cfg.secret_access_key), "secret leaked into {url}");
    let http = reqwest::Client::new();
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/jpeg");
    assert!(response.bytes().await.unwrap().as_ref() == body.as_slice());

    // A tampered signature is refused: the URL is what grants access.
    let tampered = url.replace("X-Amz-Expires=90", "X-Amz-Expires=91");
    assert_eq!(http.get(&tampered).send().await.unwrap().status(), 403);

    let short = store.presign_get(&key, Duration::from_secs(1)).await.unwrap().unwrap();
    assert!(short.contains("X-Amz-Expires=1&") || short.ends_with("X-Amz-Expires=1"), "{short}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let status = http.get(&short).send().await.unwrap().status();
    assert_eq!(status, 403, "expired URL answered {status}");

    let err = store.presign_get(&key, Duration::from_secs(8 * 24 * 3600)).await.unwrap_err();
    assert!(matches!(err, StorageError::InvalidConfig(_)), "{err}");
    cleanup(&store, &cfg.prefix).await;
}

#[tokio::test]
async fn s3_missing_bucket_and_bad_credentials_are_not_transient() {
    let mut cfg = s3_config();
    cfg.bucket = format!("fleet-missing-{}", Uuid::now_v7().simple());
    let store = s3_store(&cfg).await;
    let err = store.check().await.unwrap_err();
    assert!(matches!(err, StorageError::NoSuchBucket { .. }), "{err}");
    assert!(err.to_string().contains(&cfg.bucket), "{err}");
    assert!(!err.is_transient());
    assert_eq!(err.code(), ErrorCode::StorageUnavailable);

    let mut cfg = s3_config();
    cfg.secret_access_key = "definitely-wrong-secret".into();
    let store = s3_store(&cfg).await;
    let key = object_key(&cfg.prefix, "acme", Uuid::now_v7(), EXEC, 0, ImageFormat::Png);
    let err = store.put(&key, vec![1, 2, 3], "image/png", &meta(Uuid::now_v7(), 0)).await.unwrap_err();
    assert!(matches!(err, StorageError::Denied { .. }), "{err}");
    assert!(!err.is_transient());
    let message = err.to_string();
    assert!(message.contains(&key) && message.contains(&cfg.bucket), "{message}");
    assert!(!message.contains("definitely-wrong-secret"), "{message}");
    assert!(!format!("{err:?}{store:?}").contains("definitely-wrong-secret"));
}

/// The start-up check passes on the test bucket and fails on a missing bucket, a wrong secret and a
/// closed port, each within seconds, naming endpoint, bucket, the store's answer and the keys to change.
#[tokio::test]
async fn connect_checks_bucket_and_credentials_at_start() {
    let cfg = s3_config();
    ImageStore::connect(&cfg).await.unwrap();

    let started = Instant::now();
    let mut missing = s3_config();
    missing.bucket = format!("fleet-missing-{}", Uuid::now_v7().simple());
    let err = ImageStore::connect(&missing).await.unwrap_err();
    assert!(matches!(err.error, StorageError::NoSuchBucket { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains(&missing.bucket) && message.contains(&missing.endpoint), "{message}");
    assert!(message.contains("s3.bucket"), "{message}");

    let mut denied = s3_config();
    denied.secret_access_key = "definitely-wrong-secret".into();
    let err = ImageStore::connect(&denied).await.unwrap_err();
    assert!(matches!(err.error, StorageError::Denied { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains(&denied.bucket) && message.contains(&denied.endpoint), "{message}");
    assert!(message.contains("HTTP 403") && message.contains("s3.secret_access_key"), "{message}");
    assert!(!message.contains("definitely-wrong-secret"), "{message}");

    let mut closed = s3_config();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    closed.endpoint = format!("http://127.0.0.1:{port}");
    let err = ImageStore::connect(&closed).await.unwrap_err();
    assert!(matches!(err.error, StorageError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains(&closed.endpoint), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "the checks took {:?}", started.elapsed());
}

/// Asserts `err` is the transient "store unavailable" error naming endpoint, bucket and key.
fn assert_unavailable(err: &StorageError, cfg: &S3Config, key: &str) {
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err}");
    assert!(err.is_transient());
    assert_eq!(err.code(), ErrorCode::StorageUnavailable);
    let message = err.to_string();
    assert!(message.contains(&cfg.endpoint) && message.contains(&cfg.bucket) && message.contains(key), "{message}");
    assert!(!message.contains(&cfg.secret_access_key), "{message}");
}

#[tokio::test]
async fn dead_endpoint_is_transient_unavailable_promptly() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg = s3_config();
    cfg.endpoint = format!("http://127.0.0.1:{port}");
    let store = s3_store(&cfg).await;
    let key = object_key(&cfg.prefix, "acme", Uuid::now_v7(), EXEC, 0, ImageFormat::Png);

    let started = Instant::now();
    let err = store.put(&key, vec![0; 1000], "image/png", &meta(Uuid::now_v7(), 0)).await.unwrap_err();
    let took = started.elapsed();
    eprintln!("closed port: {took:?}: {err}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert_unavailable(&err, &cfg, &key);
    let err = store.check().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(store.get(&key).await.unwrap_err().is_transient());
}

#[tokio::test]
async fn silent_endpoint_times_out_instead_of_hanging() {
    // A server that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut cfg = s3_config();
    cfg.endpoint = format!("http://127.0.0.1:{port}");
    let options = S3Options {
        attempt_timeout: Duration::from_millis(700),
        operation_timeout: Duration::from_secs(2),
        ..S3Options::default()
    };
    let store = ImageStore::S3(S3Store::new(&cfg, options).await.unwrap());
    let key = object_key(&cfg.prefix, "acme", Uuid::now_v7(), EXEC, 0, ImageFormat::Png);
    let started = Instant::now();
    let err = store.put(&key, vec![0; 1000], "image/png", &meta(Uuid::now_v7(), 0)).await.unwrap_err();
    let took = started.elapsed();
    eprintln!("silent server: {took:?}: {err}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_unavailable(&err, &cfg, &key);
    holder.abort();
}

#[tokio::test]
async fn local_store_same_behaviour() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = S3Config { local_dir: Some(dir.path().join("images")), ..S3Config::default() };
    let store = ImageStore::from_config(&cfg).await.unwrap();
    assert!(matches!(store, ImageStore::Local(_)), "{store}");
    common_behaviour(&store, "images").await;

    // Files on disk: the image and its sidecar, nothing temporary left behind.
    let ImageStore::Local(local) = &store else { unreachable!() };
    let keys = store.list("").await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let path = local.path_of(&keys[0]).unwrap();
    assert!(path.starts_with(local.root()));
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}.json", path.display())).unwrap()).unwrap();
    assert_eq!(sidecar["content_type"], "image/png");
    assert_eq!(sidecar["metadata"]["model"], "sdxl-lightning");
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // "Presigning" gives a file:// URL of the stored bytes.
    let url = store.presign_get(&keys[0], Duration::from_secs(60)).await.unwrap().unwrap();
    assert_eq!(url, format!("file://{}", path.display()));
    assert_eq!(
        std::fs::read(url.trim_start_matches("file://")).unwrap(),
        store.get(&keys[0]).await.unwrap().unwrap().body
    );

    // Listing never leaves the root.
    for outside in ["/", "/etc/", "../", "images/../../", "./images/"] {
        assert!(store.list(outside).await.unwrap().is_empty(), "{outside}");
    }

    // Names the store keeps for itself are refused as keys.
    for reserved in ["images/a/.hidden.png", "images/a/0.png.json"] {
        let err = store.put(reserved, vec![1], "image/png", &meta(Uuid::now_v7(), 0)).await.unwrap_err();
        assert!(matches!(err, StorageError::InvalidKey { .. }), "{err}");
    }
}

#[tokio::test]
async fn local_store_writes_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalStore::new(dir.path()).await.unwrap();
    let store = ImageStore::Local(local.clone());
    let job = Uuid::now_v7();
    let key = object_key("images", "acme", job, EXEC, 0, ImageFormat::Png);
    let path = local.path_of(&key).unwrap();
    let sizes = [24 * 1024 * 1024, 16 * 1024 * 1024];

    // While large bodies are written (and overwritten), a reader polling the final path must only
    // ever see a complete file of one of the written sizes, and its sidecar with it.
    let watcher = {
        let path = path.clone();
        std::thread::spawn(move || {
            let mut seen = 0u32;
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(m) = std::fs::metadata(&path) {
                    assert!(sizes.contains(&(m.len() as usize)), "partial file of {} bytes visible", m.len());
                    assert!(
                        std::path::Path::new(&format!("{}.json", path.display())).exists(),
                        "image without sidecar"
                    );
                    seen += 1;
                    if m.len() as usize == sizes[1] {
                        break;
                    }
                }
            }
            seen
        })
    };
    for (i, size) in sizes.into_iter().enumerate() {
        store.put(&key, noise(size, i as u64), "image/png", &meta(job, 0)).await.unwrap();
    }
    let seen = watcher.join().expect("no partial file");
    assert!(seen > 0);
    assert_eq!(store.get(&key).await.unwrap().unwrap().body.len(), sizes[1]);

    // A failed write leaves the old object intact and no temporary file.
    let parent = path.parent().unwrap().to_owned();
    let mut perms = std::fs::metadata(&parent).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&parent, perms.clone()).unwrap();
    let result = store.put(&key, vec![1, 2, 3], "image/png", &meta(job, 0)).await;
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&parent, perms).unwrap();
    if let Err(err) = result {
        // (Root ignores directory permissions; then the write simply succeeds.)
        assert!(matches!(err, StorageError::Io { .. }), "{err}");
        assert!(err.to_string().contains(&parent.display().to_string()), "{err}");
        assert_eq!(store.get(&key).await.unwrap().unwrap().body.len(), sizes[1]);
    }
    let hidden = std::fs::read_dir(&parent)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(hidden, 0);
}

#[tokio::test]
async fn local_store_check_fails_on_unusable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = LocalStore::new(&file).await.unwrap_err();
    assert!(matches!(err, StorageError::Io { .. }), "{err}");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
    assert_eq!(err.code(), ErrorCode::StorageUnavailable);
}

#[tokio::test]
async fn local_dir_from_fleet_config_selects_the_local_store() {
    use fleet_core::config::{ConfigSources, FleetConfig};
    let dir = tempfile::tempdir().unwrap();
    let sources = ConfigSources {
        overrides: vec![format!("s3.local_dir={}", dir.path().join("imgs").display())],
        ..ConfigSources::default()
    };
    let cfg = FleetConfig::load(&sources).unwrap();
    assert_eq!(cfg.s3.local_dir.as_deref(), Some(dir.path().join("imgs").as_path()));
    let store = ImageStore::from_config(&cfg.s3).await.unwrap();
    assert!(matches!(store, ImageStore::Local(_)), "{store}");
    store.check().await.unwrap();
    assert!(dir.path().join("imgs").is_dir());
    // Without it, the default configuration is an S3 store.
    assert!(FleetConfig::default().s3.local_dir.is_none());
}

/// Input images may name another bucket of the same endpoint (`limits.allowed_image_buckets`):
/// `get_from` reads it with the store's credentials, and its errors name that bucket, not the
/// configured one.
#[tokio::test]
async fn s3_reads_objects_of_another_bucket_and_names_it_in_errors() {
    let cfg = s3_config();
    let store = S3Store::new(&cfg, S3Options::default()).await.unwrap();
    let other = format!("fleet-other-{}", Uuid::now_v7().simple());
    store.client().create_bucket().bucket(&other).send().await.unwrap();
    let body = noise(1000, 7);
    store.client().put_object().bucket(&other).key("in/a.png").body(body.clone().into()).send().await.unwrap();
    let store = ImageStore::S3(store);

    let object = store.get_from(&other, "in/a.png").await.unwrap().expect("the object in the other bucket");
    assert_eq!(object.body, body);
    assert!(store.get_from(&other, "in/missing.png").await.unwrap().is_none());
    // Not in the configured bucket.
    assert!(store.get("in/a.png").await.unwrap().is_none());
    assert!(store.get_from(&cfg.bucket, "in/a.png").await.unwrap().is_none());

    let missing = format!("fleet-missing-{}", Uuid::now_v7().simple());
    let err = store.get_from(&missing, "in/a.png").await.unwrap_err();
    assert!(matches!(&err, StorageError::NoSuchBucket { bucket, .. } if *bucket == missing), "{err}");
    assert!(err.to_string().contains(&missing) && !err.to_string().contains(&cfg.bucket), "{err}");

    let mut bad = cfg.clone();
    bad.secret_access_key = "definitely-wrong-secret".into();
    let err = s3_store(&bad).await.get_from(&other, "in/a.png").await.unwrap_err();
    assert!(matches!(err, StorageError::Denied { .. }), "{err}");
    assert!(err.to_string().contains(&other) && err.to_string().contains("in/a.png"), "{err}");

    let ImageStore::S3(s3) = &store else { unreachable!() };
    s3.client().delete_object().bucket(&other).key("in/a.png").send().await.unwrap();
    s3.client().delete_bucket().bucket(&other).send().await.unwrap();
}

/// A local store stands in for its configured bucket only: another bucket is an error naming it.
#[tokio::test]
async fn local_store_reads_only_its_own_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = S3Config { local_dir: Some(dir.path().to_owned()), bucket: "own".into(), ..s3_config() };
    let store = ImageStore::from_config(&cfg).await.unwrap();
    let key = "in/a.png";
    store.put(key, vec![1, 2, 3], "image/png", &meta(Uuid::now_v7(), 0)).await.unwrap();
    assert_eq!(store.get_from("own", key).await.unwrap().unwrap().body, vec![1, 2, 3]);
    let err = store.get_from("other", key).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("`other`") && message.contains("`own`") && message.contains("s3.local_dir"), "{message}");
    assert!(!err.is_transient());
    // Made without a configuration, it names no bucket and reads none.
    let bare = LocalStore::new(dir.path()).await.unwrap();
    assert!(bare.get_from("own", key).await.is_err());
}
