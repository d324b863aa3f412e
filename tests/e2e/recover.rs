//! Records rebuilt from S3 alone after Redis lost them (a Redis without persistence restarted):
//! `fleet recover`, and a worker that gets a finished job again; and the start-up refusal of a
//! Redis that keeps nothing.

use std::process::Command;
use std::time::{Duration, Instant};

use fleet_core::{FleetConfig, JobState, JobStatus};
use fleet_e2e::fleet::Fleet;
use fleet_e2e::{E2E_KEY, fleet_binary, isolated_config};
use fleet_status::{CreateOutcome, StatusStore};
use serde_json::{Value, json};

/// Every key of the configuration's prefix gone, as after a restart of a Redis that keeps nothing.
async fn forget_everything(config: &FleetConfig) {
    let client = redis::Client::open(config.redis.url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}:*", config.redis.key_prefix)).query_async(&mut con).await.unwrap();
    assert!(!keys.is_empty(), "the fleet wrote keys under its prefix");
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut con).await.unwrap();
}

/// `config` written as the `fleet.toml` the `fleet` binary reads, in a directory that lives as
/// long as the returned guard.
fn write_config(config: &FleetConfig) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(&file, toml::to_string(config).unwrap()).unwrap();
    (dir, file)
}

/// `fleet --config FILE recover ARGS…`: exit code and stdout.
fn recover(config_file: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(fleet_binary())
        .arg("--config")
        .arg(config_file)
        .arg("recover")
        .args(args)
        .output()
        .expect("the fleet binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "fleet recover {args:?}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code(), stdout)
}

fn job(n: u64, extra: Value) -> Value {
    let mut job = json!({"prompt": format!("recover me {n}"), "model": "tiny", "width": 64, "height": 64, "steps": 1, "seed": n * 11});
    job.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    job
}

/// A result as the record stores it: the presigned URLs an API answer adds are drawn on each read.
fn stored(result: &[fleet_core::ImageResult]) -> Vec<fleet_core::ImageResult> {
    result.iter().cloned().map(|image| fleet_core::ImageResult { url: None, url_expires_at: None, ..image }).collect()
}

/// What must come back: the state, the result image for image (key, seed, size, SHA-256, bytes),
/// model, priority and the request.
fn assert_rebuilt(before: &JobStatus, after: &JobStatus) {
    assert_eq!(after.state, JobState::Succeeded, "{after:?}");
    assert_eq!(stored(&after.result), stored(&before.result), "{}: the result as it was", before.id);
    assert_eq!((&after.model, after.priority, &after.tenant), (&before.model, before.priority, &before.tenant));
    let (a, b) = (after.request.as_ref().unwrap(), before.request.as_ref().unwrap());
    assert_eq!(
        (&a.prompt, a.seed, a.num_images, a.width, a.height, a.steps, a.output.format),
        (&b.prompt, b.seed, b.num_images, b.width, b.height, b.steps, b.output.format)
    );
    assert_eq!(after.progress.images_done, before.result.len() as u32);
}

/// Jobs run, then Redis forgets everything. `fleet recover --dry-run` says what it would do and
/// writes nothing; `fleet recover` writes every job's `succeeded` record back from its images,
/// with its idempotency key (a retry with the key gets the job, not a second one); a second run
/// finds nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_recover_rebuilds_records_and_idempotency_keys_from_s3_alone() {
    let config = isolated_config();
    let (_dir, config_file) = write_config(&config);
    let fleet = Fleet::start(config.clone(), 1).await;
    let jobs = [
        job(1, json!({"idempotency_key": "recover-1"})),
        job(
            2,
            json!({"idempotency_key": "recover 2: ü", "num_images": 3, "output": {"format": "webp"}, "priority": "bulk"}),
        ),
        job(3, json!({})),
    ];
    let mut ids = Vec::new();
    for j in &jobs {
        ids.push(fleet.submit(j.clone()).await.id);
    }
    let before = fleet.wait_all(&ids, Duration::from_secs(180)).await;
    assert!(before.iter().all(|s| s.state == JobState::Succeeded), "{before:?}");

    forget_everything(&config).await;
    let store = StatusStore::connect(&config.redis).await.unwrap();
    let tenant = ["--tenant", "e2e"];

    let (_, dry) = recover(&config_file, &[&tenant[..], &["--dry-run"]].concat());
    assert_eq!(dry.matches("would rebuild e2e/").count(), 3, "{dry}");
    assert!(dry.contains("3 job(s) with images: 0 had a record, 3 would rebuild (2 idempotency key(s))"), "{dry}");
    for id in &ids {
        assert_eq!(store.get(*id).await.unwrap(), None, "a dry run writes nothing");
    }

    let (_, real) = recover(&config_file, &tenant);
    assert!(real.contains("3 job(s) with images: 0 had a record, 3 rebuilt (2 idempotency key(s))"), "{real}");
    for b in &before {
        let after = store.get(b.id).await.unwrap().expect("the record is back");
        assert_rebuilt(b, &after);
    }

    // The keys map to the jobs again: a client's retry gets its job back, not a second one.
    for (j, id) in jobs.iter().zip(&ids).take(2) {
        let retried = fleet.submit(j.clone()).await;
        assert_eq!(retried.id, *id, "a retry with the idempotency key gets the recovered job");
    }
    // The rebuilt key keeps the request it stood for: another request under it is a conflict.
    let other = job(1, json!({"idempotency_key": "recover-1", "prompt": "another request"}));
    let resp =
        fleet.http.post(format!("{}/v1/jobs", fleet.base)).bearer_auth(E2E_KEY).json(&other).send().await.unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, reqwest::StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "conflict", "{body}");
    assert_eq!(body["error"]["job_id"].as_str(), Some(ids[0].to_string().as_str()), "{body}");
    let (_, again) = recover(&config_file, &tenant);
    assert!(again.contains("3 job(s) with images: 3 had a record, 0 rebuilt"), "{again}");
    fleet.stop().await;
}

/// Redis kept the records but lost their last writes (a restore from an older snapshot, a
/// failover while writes were not waiting for the replica): finished jobs' records say `queued` or
/// `running`, and no message will finish them. `fleet recover` marks each `succeeded` with its
/// stored set and removes what other executions left, but leaves a `running` record of a worker
/// that is alive to that worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_recover_finishes_records_a_lost_write_left_unfinished() {
    let config = isolated_config();
    let (_dir, config_file) = write_config(&config);
    let fleet = Fleet::start(config.clone(), 1).await;
    let mut ids = Vec::new();
    for n in 5..8 {
        ids.push(fleet.submit(job(n, json!({"num_images": 2}))).await.id);
    }
    let before = fleet.wait_all(&ids, Duration::from_secs(180)).await;
    assert!(before.iter().all(|s| s.state == JobState::Succeeded), "{before:?}");
    let store = StatusStore::connect(&config.redis).await.unwrap();
    let live = store.workers().await.unwrap().first().expect("the fleet's worker is alive").id.clone();

    // The records as they were before their last writes: queued; running on a worker that is
    // gone; running on the live worker.
    let client = redis::Client::open(config.redis.url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let unfinished =
        [(JobState::Queued, None), (JobState::Running, Some("gone-worker")), (JobState::Running, Some(live.as_str()))];
    for (done, (state, worker)) in before.iter().zip(unfinished) {
        let rolled_back = JobStatus {
            state,
            worker: worker.map(str::to_owned),
            result: Vec::new(),
            finished_at: None,
            ..done.clone()
        };
        let key = format!("{}:job:{}", config.redis.key_prefix, done.id);
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg("data")
            .arg(serde_json::to_string(&rolled_back).unwrap())
            .query_async(&mut con)
            .await
            .unwrap();
    }
    // An execution that died after storing one of its two images left it under the second job.
    let images = fleet_storage::ImageStore::from_config(&config.s3).await.unwrap();
    let stray_execution = fleet_storage::new_execution_id();
    let stray = fleet_storage::object_key(
        &config.s3.prefix,
        "e2e",
        before[1].id,
        &stray_execution,
        0,
        fleet_core::ImageFormat::Png,
    );
    let meta = fleet_storage::ObjectMeta::example(before[1].id, &stray_execution, 1);
    images.put(&stray, b"half a result set".to_vec(), "image/png", &meta).await.unwrap();

    let (_, dry) = recover(&config_file, &["--tenant", "e2e", "--dry-run"]);
    assert!(dry.contains(&format!("would finish e2e/{}: was queued", before[0].id)), "{dry}");
    assert!(dry.contains(&format!("would finish e2e/{}: was running", before[1].id)), "{dry}");
    assert!(dry.contains("3 job(s) with images: 1 had a record, 0 would rebuild"), "{dry}");
    assert!(dry.contains("2 unfinished record(s) would finish"), "{dry}");
    assert_eq!(store.get(before[0].id).await.unwrap().unwrap().state, JobState::Queued, "a dry run writes nothing");

    let (_, real) = recover(&config_file, &["--tenant", "e2e"]);
    assert!(real.contains("2 unfinished record(s) finished"), "{real}");
    for done in &before[..2] {
        let after = store.get(done.id).await.unwrap().unwrap();
        assert_eq!(after.state, JobState::Succeeded, "{after:?}");
        assert_eq!(stored(&after.result), stored(&done.result), "{}: the stored set is the result", done.id);
    }
    assert_eq!(
        store.get(before[0].id).await.unwrap().unwrap().worker.as_deref(),
        Some(fleet_worker::recover::RECOVERER)
    );
    assert_eq!(images.get(&stray).await.unwrap().map(|_| ()), None, "the other execution's object is removed");
    for image in &before[1].result {
        assert!(images.get(&image.key).await.unwrap().is_some(), "the recorded set stays: {}", image.key);
    }
    let left = store.get(before[2].id).await.unwrap().unwrap();
    assert_eq!((left.state, left.worker.as_deref()), (JobState::Running, Some(live.as_str())), "left to its worker");

    let (_, again) = recover(&config_file, &["--tenant", "e2e"]);
    assert!(again.contains("3 job(s) with images: 3 had a record, 0 rebuilt"), "{again}");
    assert!(again.contains("0 unfinished record(s) finished"), "{again}");
    fleet.stop().await;
}

/// A finished job comes to a worker again (a redelivery after its record was lost): the worker
/// finds its images stored and rebuilds the record from them, with the idempotency key, instead
/// of running the job a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_rebuilds_a_lost_record_from_the_stored_images_instead_of_running_again() {
    use lapin::options::BasicPublishOptions;
    let config = isolated_config();
    let fleet = Fleet::start(config.clone(), 1).await;
    let spec = job(4, json!({"idempotency_key": "redelivered", "num_images": 2}));
    let before = fleet.submit(spec.clone()).await;
    let before = fleet.wait_all(&[before.id], Duration::from_secs(120)).await.remove(0);
    assert_eq!(before.state, JobState::Succeeded, "{before:?}");
    let store = StatusStore::connect(&config.redis).await.unwrap();
    let done_before = jobs_done_since(&store, before.finished_at.unwrap()).await;

    forget_everything(&config).await;
    // The same job again on its queue, as the broker redelivers it.
    let valid = fleet_core::parse_job(&spec.to_string())
        .unwrap()
        .validate(&config.limits_for("tiny"))
        .unwrap()
        .assign("e2e", || before.id);
    let topology = fleet_queue::Topology::new(&config.rabbitmq, ["tiny"]);
    let broker = fleet_queue::Broker::connect(&config.rabbitmq.url, topology).await.unwrap();
    let channel = broker.channel().await.unwrap();
    let routing = fleet_queue::topology::routing_key("tiny", fleet_core::Priority::Interactive);
    let (body, props) = fleet_queue::message::encode(&valid, "e2e-redelivered").unwrap();
    let confirm =
        channel.basic_publish(&config.rabbitmq.exchange, &routing, BasicPublishOptions::default(), &body, props);
    confirm.await.unwrap().await.unwrap();

    let started = Instant::now();
    let after = loop {
        if let Some(s) = store.get(before.id).await.unwrap().filter(|s| s.state.is_terminal()) {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no final record for the redelivered job");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_rebuilt(&before, &after);
    assert_eq!(after.attempts, 1, "{after:?}");
    // The worker's next heartbeat counts no job run since: it only rebuilt the record.
    let rebuilt_at = chrono::Utc::now();
    let beat = loop {
        let beats = store.workers().await.unwrap();
        if let Some(b) = beats.into_iter().find(|b| b.last_seen > rebuilt_at) {
            break b;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "no heartbeat after the rebuild");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(beat.jobs_done, done_before, "the job did not run again");
    let other = JobStatus { id: uuid::Uuid::now_v7(), ..after.clone() };
    let taken = store.create(&other, Some("redelivered")).await.unwrap();
    assert!(matches!(&taken, CreateOutcome::Existing(s) if s.id == before.id), "key restored: {taken:?}");
    fleet.stop().await;
}

/// The dispatcher and a worker read Redis's persistence settings at start and refuse one that
/// keeps nothing across a restart, naming the setting to change on each side; neither starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_and_a_worker_refuse_a_redis_that_keeps_nothing() {
    let volatile = fleet_e2e::redis_server::PrivateRedis::start_volatile();
    let mut config = isolated_config();
    config.redis.url = volatile.url();
    config.redis.allow_volatile = false;
    let (dir, config_file) = write_config(&config);

    for role in ["dispatcher", "worker"] {
        let mut child = Command::new(fleet_binary())
            .arg("--config")
            .arg(&config_file)
            .arg(role)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(format!("{role}.log"))).unwrap())
            .spawn()
            .expect("the fleet binary runs");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("fleet {role} kept running on a Redis that keeps nothing");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stderr = std::fs::read_to_string(dir.path().join(format!("{role}.log"))).unwrap();
        assert!(!status.success(), "fleet {role} must not start: {stderr}");
        for part in ["appendonly yes", "redis.allow_volatile"] {
            assert!(stderr.contains(part), "fleet {role}: {part:?} missing from: {stderr}");
        }
    }
    drop(volatile);
}

/// Jobs the fleet's one worker has finished, from its first heartbeat after `time`.
async fn jobs_done_since(store: &StatusStore, time: chrono::DateTime<chrono::Utc>) -> u64 {
    let started = Instant::now();
    loop {
        if let Some(b) = store.workers().await.unwrap().into_iter().find(|b| b.last_seen > time) {
            return b.jobs_done;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no worker heartbeat");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
