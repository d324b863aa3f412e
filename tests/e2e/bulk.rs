//! `fleet bulk` through the real fleet: 1,000 prompts into WebDataset shards, the run dropped
//! mid-way and resumed, and `--local` giving the same pixels for the same keys; a running run
//! cancelled then resumed; failed samples (an unknown LoRA) retried once the library has it; a
//! dataset written to S3, dropped and resumed from there (keeping its jobs); and a run dropped
//! half-way and resumed after its idempotency keys expired, then after its jobs' records and
//! images expired too, making no sample twice. A run deletes each job once its sample is staged,
//! so the fleet's own counters, not its stored images, tell how many jobs were made.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

#[path = "../../crates/fleet-bulk/tests/support/tiny_lora.rs"]
pub(crate) mod tiny_lora;

use fleet_bulk::api::ApiClient;
use fleet_bulk::record::{SampleRecord, SampleState, ShardStats};
use fleet_bulk::{InputFormat, Layout, RunConfig, RunState, Session};
use fleet_e2e::{E2E_KEY, isolated_config, unique};
use serde_json::json;

use fleet_e2e::fleet::Fleet;

fn published(out: &Path) -> BTreeMap<String, (Vec<u8>, SystemTime)> {
    let Ok(dir) = std::fs::read_dir(out) else { return BTreeMap::new() };
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with("_stats.json"))
        .map(|stats| {
            let tar = out.join(stats.replace("_stats.json", ".tar"));
            (stats, (std::fs::read(&tar).unwrap(), std::fs::metadata(&tar).unwrap().modified().unwrap()))
        })
        .collect()
}

/// Every shard read back: exactly `n` samples, three files each, unique keys, complete JSON that
/// equals the manifest row (in both the JSONL and the Parquet manifest). Returns key → (record, image bytes).
fn read_dataset(out: &Path, n: usize) -> BTreeMap<String, (SampleRecord, Vec<u8>)> {
    let mut samples = BTreeMap::new();
    let mut tars: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    tars.sort();
    for tar in tars {
        let entries = fleet_bulk::shard::read_tar(&tar).unwrap();
        let stem = tar.file_stem().unwrap().to_string_lossy().into_owned();
        let manifest = std::fs::read_to_string(out.join(format!("{stem}_manifest.jsonl"))).unwrap();
        let manifest: Vec<SampleRecord> = manifest.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let parquet = fleet_bulk::manifest::read_manifest(&out.join(format!("{stem}_manifest.parquet"))).unwrap();
        assert_eq!(parquet, manifest, "{stem}: the Parquet manifest holds the JSONL manifest's rows");
        assert_eq!(entries.len(), manifest.len() * 3, "{stem}: three files per manifest row");
        for (files, row) in entries.chunks(3).zip(&manifest) {
            let key = &row.key;
            assert_eq!(files[0].0, format!("{key}.png"));
            assert_eq!(files[1], (format!("{key}.txt"), row.prompt.clone().into_bytes()));
            assert_eq!(files[2].0, format!("{key}.json"));
            let json: serde_json::Value = serde_json::from_slice(&files[2].1).unwrap();
            for field in [
                "key", "prompt", "seed", "model", "loras", "steps", "guidance", "width", "height", "sha256", "worker",
                "timings", "status",
            ] {
                assert!(json.get(field).is_some(), "{key}.json lacks `{field}`: {json}");
            }
            assert!(json["timings"]["started_at"].is_string() && json["timings"]["run_seconds"].is_number());
            let record: SampleRecord = serde_json::from_value(json).unwrap();
            assert_eq!(&record, row, "{key}.json equals its manifest row");
            assert_eq!(record.status, SampleState::Succeeded);
            assert_eq!(record.sha256.as_deref(), Some(fleet_storage::sha256_hex(&files[0].1).as_str()));
            assert!(samples.insert(key.clone(), (record, files[0].1.clone())).is_none(), "duplicate key {key}");
        }
    }
    assert_eq!(samples.len(), n);
    samples
}

fn tiny_run(name: &str, input: &Path, out: &Path, local: bool) -> RunConfig {
    RunConfig {
        name: name.to_owned(),
        input: input.to_path_buf(),
        input_format: InputFormat::Jsonl,
        out: out.display().to_string(),
        layout: Layout::WebDataset,
        shard_size: 100,
        seeds_per_prompt: 1,
        seed: 42,
        defaults: json!({"model": "tiny", "width": 64, "height": 64, "steps": 1}).as_object().unwrap().clone(),
        max_in_flight: 200,
        skip_invalid: false,
        local,
        samples: None,
        dedup_hamming: None,
        keep_jobs: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_prompts_survive_a_dropped_run_and_match_local_generation() {
    let n: usize = std::env::var("FLEET_E2E_BULK_SAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let config = isolated_config();
    let fleet = Fleet::start(config.clone(), 2).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("prompts.jsonl");
    let rows: Vec<String> =
        (0..n).map(|i| json!({"prompt": format!("bulk sample {i}"), "metadata": {"row": i}}).to_string()).collect();
    std::fs::write(&input, rows.join("\n")).unwrap();
    let out = dir.path().join("fleet");
    let name = unique("bulk");
    let session =
        Session { config: config.clone(), api: Some(ApiClient::new(&fleet.base, E2E_KEY).unwrap()), on_progress: None };

    // Start, and drop the run (as a killed CLI would stop) once a few shards are out.
    let task = tokio::spawn({
        let (run, session) = (tiny_run(&name, &input, &out, false), session.clone());
        async move { fleet_bulk::start(run, &session).await }
    });
    let started = Instant::now();
    while published(&out).len() < 3 {
        assert!(!task.is_finished(), "the run ended early: {:?}", task.await);
        assert!(started.elapsed() < Duration::from_secs(600), "no three shards in 10 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    let _ = task.await;
    let before = published(&out);
    assert!(before.len() < n.div_ceil(100), "dropped before the end");
    eprintln!("dropped after {} shard(s), {:.1}s", before.len(), started.elapsed().as_secs_f64());

    let (_, snapshot) = fleet_bulk::status(&name, None, &config).await.unwrap();
    assert_eq!(snapshot.total, n as u64);
    let resumed = Instant::now();
    let run = fleet_bulk::resume(&name, None, &session).await.unwrap();
    eprintln!("resume took {:.1}s", resumed.elapsed().as_secs_f64());
    assert_eq!((run.state, run.totals.succeeded, run.totals.failed), (RunState::Finished, n as u64, 0));
    for (stats, (bytes, modified)) in &before {
        let after = &published(&out)[stats];
        assert!(after.0 == *bytes && after.1 == *modified, "{stats}: a finished shard was rewritten");
    }
    let dataset = read_dataset(&out, n);

    // One job per sample: the resume found the dropped run's jobs by idempotency key.
    let made = jobs_made(&config).await;
    assert_eq!((made.accepted, made.succeeded), (n as u64, n as u64), "exactly one job per sample");
    let jobs: BTreeSet<_> = dataset.values().filter_map(|(r, _)| r.job_id).collect();
    assert_eq!(jobs.len(), n);
    // And the fleet forgot every one once its sample was staged: no record, no idempotency key,
    // no image is left of the run; only the short-lived flags that keep a stray message unrun.
    let store = fleet_storage::ImageStore::from_config(&config.s3).await.unwrap();
    assert_eq!(store.list(&format!("{}/e2e/", config.s3.prefix)).await.unwrap(), Vec::<String>::new());
    assert_eq!((count_keys(&config, "job:*").await, count_keys(&config, "idem:*").await), (0, 0));
    assert_eq!(count_keys(&config, "cancel:*").await, n, "one flag per deleted job");

    // --local, same settings, first shard's rows: same keys, same pixels.
    let local_input = dir.path().join("local.jsonl");
    std::fs::write(&local_input, rows[..100.min(n)].join("\n")).unwrap();
    let local_out = dir.path().join("local");
    let local = Session { config: config.clone(), api: None, on_progress: None };
    let local_run = fleet_bulk::start(tiny_run(&unique("bulk-local"), &local_input, &local_out, true), &local).await;
    assert_eq!(local_run.unwrap().totals.succeeded, 100.min(n) as u64);
    for (key, (record, bytes)) in read_dataset(&local_out, 100.min(n)) {
        let (fleet_record, fleet_bytes) = &dataset[&key];
        assert_eq!(record.seed, fleet_record.seed, "{key}: same seed");
        let decode = |b: &[u8]| image::load_from_memory(b).unwrap().to_rgb8();
        assert!(decode(&bytes) == decode(fleet_bytes), "{key}: local pixels differ from the fleet's");
    }
    fleet.stop().await;
}

/// The fleet's counts for the `tiny` model: jobs it created, jobs that succeeded. They outlive
/// the jobs, which a run deletes once their samples are staged.
async fn jobs_made(config: &fleet_core::FleetConfig) -> fleet_status::QueueCounters {
    let store = fleet_status::StatusStore::connect(&config.redis).await.unwrap();
    store.counters().await.unwrap().remove("tiny").unwrap_or_default()
}

/// How many Redis keys of the test's prefix match `{prefix}:<pattern>`.
async fn count_keys(config: &fleet_core::FleetConfig, pattern: &str) -> usize {
    matching_keys(config, pattern).await.1.len()
}

/// A connection and the Redis keys of the test's prefix matching `{prefix}:<pattern>`.
async fn matching_keys(
    config: &fleet_core::FleetConfig,
    pattern: &str,
) -> (redis::aio::MultiplexedConnection, Vec<String>) {
    let client = redis::Client::open(config.redis.url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}:{pattern}", config.redis.key_prefix)).query_async(&mut con).await.unwrap();
    (con, keys)
}

/// A session with the fleet's dispatcher.
fn fleet_session(fleet: &Fleet) -> Session {
    Session {
        config: fleet.config.clone(),
        api: Some(ApiClient::new(&fleet.base, E2E_KEY).unwrap()),
        on_progress: None,
    }
}

/// `n` JSONL rows `{"prompt": "bulk sample i"}`, each with what `extra(i)` adds.
fn write_prompts(dir: &Path, n: usize, extra: impl Fn(usize) -> serde_json::Value) -> std::path::PathBuf {
    let rows: Vec<String> = (0..n)
        .map(|i| {
            let mut row = json!({"prompt": format!("bulk sample {i}")});
            if let (Some(row), Some(extra)) = (row.as_object_mut(), extra(i).as_object()) {
                row.extend(extra.clone());
            }
            row.to_string()
        })
        .collect();
    let path = dir.join("prompts.jsonl");
    std::fs::write(&path, rows.join("\n")).unwrap();
    path
}

/// Waits until `count()` reaches `want`, failing if the run ends first.
async fn wait_for<T: std::fmt::Debug>(
    task: &mut tokio::task::JoinHandle<T>,
    want: usize,
    mut count: impl AsyncFnMut() -> usize,
) {
    let started = Instant::now();
    while count().await < want {
        assert!(!task.is_finished(), "the run ended early: {:?}", task.await);
        assert!(started.elapsed() < Duration::from_secs(300), "no {want} shard(s) in 5 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Removes every object the test's configuration put under its S3 prefix (images, datasets).
async fn remove_objects(config: &fleet_core::FleetConfig) {
    let store = fleet_storage::ImageStore::from_config(&config.s3).await.unwrap();
    for key in store.list(&format!("{}/", config.s3.prefix)).await.unwrap() {
        store.delete(&key).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_fleet_run_keeps_its_shards_and_a_resume_finishes_it() {
    const N: usize = 60;
    let config = isolated_config();
    let fleet = Fleet::start(config.clone(), 2).await;
    let session = fleet_session(&fleet);
    let dir = tempfile::tempdir().unwrap();
    let input = write_prompts(dir.path(), N, |_| json!({}));
    let out = dir.path().join("out");
    let name = unique("bulk-cancel");
    // 256², 4 steps (≈ 50 ms a sample on a 2-core CPU): at 64², 1 step the faster engine had
    // finished every pending job before the cancel reached one.
    let defaults = json!({"model": "tiny", "width": 256, "height": 256, "steps": 4}).as_object().unwrap().clone();
    // Its jobs are kept, so that every job pending at the cancel can be read afterwards (a run
    // deletes the jobs of the samples it stages, some of which finish while the cancel goes on).
    let run = RunConfig {
        shard_size: 10,
        max_in_flight: 20,
        defaults,
        keep_jobs: true,
        ..tiny_run(&name, &input, &out, false)
    };
    let mut task = tokio::spawn({
        let session = session.clone();
        async move { fleet_bulk::start(run, &session).await }
    });
    wait_for(&mut task, 1, async || published(&out).len()).await;

    let registry = fleet_bulk::registry::Registry::connect(&config.redis).await.unwrap();
    let pending = registry.jobs(&name).await.unwrap();
    let cancelled = fleet_bulk::cancel(&name, None, &session).await.unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(60), task).await.expect("the run stops").unwrap().unwrap();
    assert_eq!(stopped.state, RunState::Cancelled);
    assert!(cancelled > 0, "the run had unfinished jobs to cancel");
    let states: Vec<_> = fleet.wait_all(&pending, Duration::from_secs(60)).await.into_iter().map(|s| s.state).collect();
    assert!(states.contains(&fleet_core::JobState::Cancelled), "pending jobs were cancelled: {states:?}");
    assert!(registry.jobs(&name).await.unwrap().is_empty(), "no job of the run is left recorded as unfinished");
    let (record, snapshot) = fleet_bulk::status(&name, None, &config).await.unwrap();
    assert_eq!((record.state, snapshot.state), (RunState::Cancelled, RunState::Cancelled));
    let on_disk: fleet_bulk::RunFile = serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(on_disk.state, RunState::Cancelled);

    // What was published before the cancel is complete and valid: no sample failed as `cancelled`.
    let before = published(&out);
    assert!(before.len() < N / 10, "cancelled before the end");
    read_dataset(&out, before.len() * 10);

    let done = fleet_bulk::resume(&name, None, &session).await.unwrap();
    assert_eq!((done.state, done.totals.succeeded, done.totals.failed), (RunState::Finished, N as u64, 0));
    for (stats, (bytes, modified)) in &before {
        let after = &published(&out)[stats];
        assert!(after.0 == *bytes && after.1 == *modified, "{stats}: a shard finished before the cancel was rewritten");
    }
    read_dataset(&out, N);
    assert!(!out.join("_cancelled").exists(), "the resume removed the cancel marker");
    fleet.stop().await;
    remove_objects(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_failed_resubmits_exactly_the_failed_samples() {
    const N: usize = 30;
    let library = tempfile::tempdir().unwrap();
    let mut config = isolated_config();
    config.library.lora_dir = library.path().to_owned();
    let fleet = Fleet::start(config.clone(), 2).await;
    let session = fleet_session(&fleet);
    let dir = tempfile::tempdir().unwrap();
    // Rows 12, 15, …, 27 (shards 1 and 2) ask for a LoRA the library does not have yet.
    let uses_lora = |i: usize| i >= 10 && i.is_multiple_of(3);
    let input = write_prompts(dir.path(), N, |i| {
        if uses_lora(i) { json!({"loras": [{"name": "ink", "scale": 0.5}]}) } else { json!({}) }
    });
    let out = dir.path().join("out");
    let name = unique("bulk-retry");
    let run = RunConfig { shard_size: 10, ..tiny_run(&name, &input, &out, false) };
    let failing = (0..N).filter(|i| uses_lora(*i)).count() as u64;

    let first = fleet_bulk::start(run, &session).await.unwrap();
    assert_eq!(
        (first.state, first.totals.succeeded, first.totals.failed),
        (RunState::Finished, N as u64 - failing, failing)
    );
    let stats = |shard: &str| -> ShardStats {
        serde_json::from_slice(&std::fs::read(out.join(format!("{shard}_stats.json"))).unwrap()).unwrap()
    };
    assert_eq!(stats("00000").failed, 0);
    assert_eq!(stats("00001").failed_by_code, [("unknown_lora".to_owned(), 3)].into());
    let (_, snapshot) = fleet_bulk::status(&name, None, &config).await.unwrap();
    assert_eq!(snapshot.failed_by_code, [("unknown_lora".to_owned(), failing)].into(), "status counts codes");
    let mut before = BTreeMap::new();
    for shard in ["00000", "00001", "00002"] {
        for line in std::fs::read_to_string(out.join(format!("{shard}_manifest.jsonl"))).unwrap().lines() {
            let record: SampleRecord = serde_json::from_str(line).unwrap();
            let expected = if uses_lora(record.line - 1) { SampleState::Failed } else { SampleState::Succeeded };
            assert_eq!(record.status, expected, "{}", record.key);
            before.insert(record.key.clone(), record);
        }
    }
    let untouched = published(&out)["00000_stats.json"].clone();

    // The library gets the LoRA; only the failed samples run again, their shards are rewritten.
    tiny_lora::write_tiny_lora(&library.path().join("ink.safetensors"));
    let (done, reopened) = fleet_bulk::retry_failed(&name, None, &session).await.unwrap();
    assert_eq!(reopened, 2, "shards 1 and 2 had failures");
    assert_eq!((done.state, done.totals.succeeded, done.totals.failed), (RunState::Finished, N as u64, 0));
    assert!(published(&out)["00000_stats.json"] == untouched, "a shard without failures was rewritten");
    let dataset = read_dataset(&out, N);
    for (key, (record, _)) in &dataset {
        let old = &before[key];
        if old.status == SampleState::Failed {
            assert_ne!(record.job_id, old.job_id, "{key}: a failed sample gets a new job");
            assert_eq!(record.loras.len(), 1, "{key}");
        } else {
            assert_eq!(record.job_id, old.job_id, "{key}: a succeeded sample is not submitted again");
        }
    }
    let made = jobs_made(&config).await;
    assert_eq!(
        made.accepted,
        N as u64 + failing,
        "one job per sample, one more per failed one: the retry ran exactly those"
    );
    fleet.stop().await;
    remove_objects(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dataset_in_s3_is_resumed_from_s3() {
    const N: usize = 40;
    let config = isolated_config();
    let fleet = Fleet::start(config.clone(), 2).await;
    let session = fleet_session(&fleet);
    let dir = tempfile::tempdir().unwrap();
    let input = write_prompts(dir.path(), N, |_| json!({}));
    let prefix = format!("{}/dataset", config.s3.prefix);
    let location = format!("s3://{}/{prefix}", config.s3.bucket);
    let name = unique("bulk-s3");
    // With --keep-jobs: the fleet keeps every job as any other.
    let mut run =
        RunConfig { shard_size: 10, max_in_flight: 10, keep_jobs: true, ..tiny_run(&name, &input, dir.path(), false) };
    run.out = location.clone();
    let store = fleet_storage::ImageStore::from_config(&config.s3).await.unwrap();
    let stats_objects = async || -> BTreeMap<String, Vec<u8>> {
        let mut found = BTreeMap::new();
        for key in store.list(&format!("{prefix}/")).await.unwrap().into_iter().filter(|k| k.ends_with("_stats.json")) {
            found.insert(key.clone(), store.get(&key).await.unwrap().unwrap().body);
        }
        found
    };

    // Dropped (as a killed CLI stops) once a shard is in S3, then resumed from the location alone.
    let mut task = tokio::spawn({
        let session = session.clone();
        async move { fleet_bulk::start(run, &session).await }
    });
    wait_for(&mut task, 1, async || stats_objects().await.len()).await;
    task.abort();
    let _ = task.await;
    let before = stats_objects().await;
    assert!(before.len() < N / 10, "dropped before the end");
    let (_, snapshot) = fleet_bulk::status(&name, Some(&location), &config).await.unwrap();
    assert_eq!(snapshot.total, N as u64);
    let done = fleet_bulk::resume(&name, Some(&location), &session).await.unwrap();
    assert_eq!((done.state, done.totals.succeeded, done.totals.shards), (RunState::Finished, N as u64, 4));
    let after = stats_objects().await;
    for (key, body) in &before {
        assert_eq!(&after[key], body, "{key}: a shard finished before the drop was rewritten");
    }

    // Everything is in S3: the shards, manifests and stats read back as a dataset, and run.json.
    let copy = dir.path().join("copy");
    for key in store.list(&format!("{prefix}/")).await.unwrap() {
        let path = copy.join(key.strip_prefix(&format!("{prefix}/")).unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, store.get(&key).await.unwrap().unwrap().body).unwrap();
    }
    read_dataset(&copy, N);
    let record: fleet_bulk::RunFile = serde_json::from_slice(&std::fs::read(copy.join("run.json")).unwrap()).unwrap();
    assert_eq!((record.state, record.config.out.as_str()), (RunState::Finished, location.as_str()));
    assert!(copy.join("_progress.json").is_file());
    let kept = store.list(&format!("{}/e2e/", config.s3.prefix)).await.unwrap();
    assert_eq!(kept.len(), N, "--keep-jobs: every job's image stays in the fleet");
    assert_eq!((count_keys(&config, "job:*").await, count_keys(&config, "cancel:*").await), (N, 0));
    fleet.stop().await;
    remove_objects(&config).await;
}

/// Deletes every Redis key of the test's prefix matching `{prefix}:<pattern>`; returns how many.
async fn delete_keys(config: &fleet_core::FleetConfig, pattern: &str) -> usize {
    let (mut con, keys) = matching_keys(config, pattern).await;
    for key in &keys {
        let _: () = redis::cmd("DEL").arg(key).query_async(&mut con).await.unwrap();
    }
    keys.len()
}

/// Waits until the e2e tenant has no job queued or running (the dropped run's jobs are done).
async fn wait_idle(config: &fleet_core::FleetConfig) {
    let client = redis::Client::open(config.redis.url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}:tenant:e2e:inflight", config.redis.key_prefix);
    let started = Instant::now();
    loop {
        let n: Option<i64> = redis::cmd("GET").arg(&key).query_async(&mut con).await.unwrap();
        if n.unwrap_or(0) <= 0 {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{n:?} jobs still in flight after 2 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The samples staged in `out` (made, their shard not yet written): key → record.
fn staged(out: &Path) -> BTreeMap<String, SampleRecord> {
    let Ok(shards) = std::fs::read_dir(out.join("_staging")) else { return BTreeMap::new() };
    let mut found = BTreeMap::new();
    for shard in shards.filter_map(|e| Some(e.ok()?.path())) {
        for file in std::fs::read_dir(shard).unwrap().filter_map(|e| Some(e.ok()?.path())) {
            if file.extension().is_some_and(|e| e == "json") {
                let record: SampleRecord = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
                found.insert(record.key.clone(), record);
            }
        }
    }
    found
}

/// A 200-sample run in shards of 50 started, and dropped (as a killed CLI stops) once a shard is
/// written and samples of the next are staged; returns the shards written by then.
async fn start_and_drop(
    name: &str,
    input: &Path,
    out: &Path,
    session: &Session,
) -> BTreeMap<String, (Vec<u8>, SystemTime)> {
    let run = RunConfig { shard_size: 50, max_in_flight: 40, ..tiny_run(name, input, out, false) };
    let mut task = tokio::spawn({
        let session = session.clone();
        async move { fleet_bulk::start(run, &session).await }
    });
    wait_for(&mut task, 1, async || published(out).len()).await;
    wait_for(&mut task, 10, async || staged(out).len()).await;
    task.abort();
    let _ = task.await;
    let before = published(out);
    assert!(before.len() < 4, "dropped before the end");
    before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_after_the_idempotency_keys_expired_makes_no_sample_twice() {
    const N: usize = 200;
    let config = isolated_config();
    let fleet = Fleet::start(config.clone(), 2).await;
    let session = fleet_session(&fleet);
    let dir = tempfile::tempdir().unwrap();
    let input = write_prompts(dir.path(), N, |_| json!({}));
    let out = dir.path().join("out");
    let name = unique("bulk-idem");
    let before = start_and_drop(&name, &input, &out, &session).await;

    // `redis.idempotency_ttl_secs` passes: every key of the run is gone, the jobs' records stay
    // (`redis.status_ttl_secs` is longer). Jobs still in flight from the dropped run go on.
    assert!(delete_keys(&config, "idem:*").await > 0, "the run's jobs had idempotency keys");
    let done = fleet_bulk::resume(&name, None, &session).await.unwrap();
    assert_eq!((done.state, done.totals.succeeded, done.totals.failed), (RunState::Finished, N as u64, 0));
    for (stats, (bytes, modified)) in &before {
        let after = &published(&out)[stats];
        assert!(after.0 == *bytes && after.1 == *modified, "{stats}: a finished shard was rewritten");
    }
    let dataset = read_dataset(&out, N);
    wait_idle(&config).await;
    let made = jobs_made(&config).await;
    assert_eq!(made.accepted, N as u64, "exactly one job per sample: the resume found the jobs by id");
    let jobs: BTreeSet<_> = dataset.values().filter_map(|(r, _)| r.job_id).collect();
    assert_eq!(jobs.len(), N);
    assert!(!out.join("_staging").exists() || staged(&out).is_empty(), "no staging is left behind");
    fleet.stop().await;
    remove_objects(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_after_the_jobs_expired_takes_the_staged_samples() {
    const N: usize = 200;
    let config = isolated_config();
    let fleet = Fleet::start(config.clone(), 2).await;
    let session = fleet_session(&fleet);
    let dir = tempfile::tempdir().unwrap();
    let input = write_prompts(dir.path(), N, |_| json!({}));
    let out = dir.path().join("out");
    let name = unique("bulk-expired");
    let before = start_and_drop(&name, &input, &out, &session).await;
    wait_idle(&config).await;
    let kept = staged(&out);
    let written = before.len() * 50;

    // Everything the fleet knew of the run's jobs expires: idempotency keys, job records and
    // images (retention). Only the output remembers what was made.
    delete_keys(&config, "idem:*").await;
    assert!(delete_keys(&config, "job:*").await > 0);
    remove_objects(&config).await;
    let made_before = jobs_made(&config).await.accepted;

    let done = fleet_bulk::resume(&name, None, &session).await.unwrap();
    assert_eq!((done.state, done.totals.succeeded, done.totals.failed), (RunState::Finished, N as u64, 0));
    for (stats, (bytes, modified)) in &before {
        let after = &published(&out)[stats];
        assert!(after.0 == *bytes && after.1 == *modified, "{stats}: a finished shard was rewritten");
    }
    let dataset = read_dataset(&out, N);
    for (key, record) in &kept {
        let (published, _) = &dataset[key];
        assert_eq!(published.job_id, record.job_id, "{key}: a staged sample was made again");
        assert_eq!(published.sha256, record.sha256, "{key}");
    }
    // The resume made one job for each sample neither written nor staged.
    wait_idle(&config).await;
    let made = jobs_made(&config).await.accepted - made_before;
    assert_eq!(made, (N - written - kept.len()) as u64, "the resume made only the samples not in the output");
    assert!(staged(&out).is_empty(), "no staging is left behind");
    fleet.stop().await;
    remove_objects(&config).await;
}
