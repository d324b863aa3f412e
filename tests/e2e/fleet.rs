//! The whole fleet: HTTP dispatcher → RabbitMQ → tiny-model workers → SeaweedFS, status in Redis.

use std::time::{Duration, Instant};

use fleet_core::{FleetConfig, JobStatus};
use fleet_e2e::fleet::Fleet;
use fleet_e2e::{E2E_KEY, fleet_binary, isolated_config};
use serde_json::{Value, json};

pub(crate) fn tiny_job(i: usize) -> Value {
    json!({"prompt": format!("tiny test image {i}"), "model": "tiny", "width": 64, "height": 64 + 8 * (i % 2),
           "steps": 2, "seed": 1000 + i as u64 * 7, "num_images": 1 + (i % 3), "priority": if i.is_multiple_of(4) { "bulk" } else { "interactive" }})
}

/// Every job succeeds, every image is in S3 with the right size, format and parameters, and its
/// pixels equal what the engine gives for the same job on its own (what `fleet generate` runs).
async fn check_results(config: &FleetConfig, statuses: &[JobStatus], jobs: &[Value]) {
    let store = fleet_storage::ImageStore::from_config(&config.s3).await.unwrap();
    let cpu = fleet_engine::candle_core::Device::Cpu;
    let engine =
        fleet_engine::Pipeline::load(&fleet_engine::ModelSource::Tiny, &cpu, fleet_engine::candle_core::DType::F32)
            .unwrap();
    for (status, job) in statuses.iter().zip(jobs) {
        assert_eq!(status.state, fleet_core::JobState::Succeeded, "{status:?}");
        let spec = fleet_core::parse_job(&job.to_string()).unwrap();
        assert_eq!(status.result.len() as u32, spec.num_images);
        assert!(status.attempts >= 1 && status.worker.is_some() && status.finished_at.is_some());
        let expected = engine.generate(&fleet_render::job_request(&spec), &mut |_| {}).unwrap().images;
        for (i, r) in status.result.iter().enumerate() {
            assert_eq!(r.seed, spec.seed.unwrap() + i as u64);
            let namespace = format!("{}/{}/{}/", config.s3.prefix, status.tenant, status.id);
            assert!(r.key.starts_with(&namespace), "S3 keys are namespaced by tenant and job: {}", r.key);
            let object = store.get(&r.key).await.unwrap().expect("object stored");
            assert_eq!(object.body.len() as u64, r.bytes);
            assert!(String::from_utf8_lossy(&object.body).contains(&spec.prompt), "parameters embedded in the PNG");
            let decoded = image::load_from_memory_with_format(&object.body, image::ImageFormat::Png).unwrap().to_rgb8();
            assert_eq!((decoded.width(), decoded.height()), (spec.width, spec.height));
            assert!(decoded == expected[i], "job {} image {i}: pixels differ from a direct engine run", status.id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_flow_through_one_then_two_workers_and_match_direct_generation() {
    let config = isolated_config();
    let mut fleet = Fleet::start(config.clone(), 1).await;
    let n = std::env::var("FLEET_E2E_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(50usize);
    let jobs: Vec<Value> = (0..n).map(tiny_job).collect();
    let mut ids = Vec::new();
    for job in &jobs[..n / 2] {
        ids.push(fleet.submit(job.clone()).await.id);
    }
    let first = fleet.wait_all(&ids, Duration::from_secs(240)).await;
    check_results(&config, &first, &jobs[..n / 2]).await;
    let images: usize = first.iter().map(|s| s.result.len()).sum();
    let metrics = fleet.worker_metrics(0).await;
    assert!(metrics.contains(&format!("fleet_worker_jobs_total{{outcome=\"succeeded\"}} {}\n", n / 2)), "{metrics}");
    assert!(metrics.contains(&format!("fleet_worker_images_total {images}\n")), "{metrics}");
    // Every stored image was encoded once and uploaded once (a job's images side by side).
    assert!(metrics.contains(&format!("fleet_worker_encode_seconds_count {images}\n")), "{metrics}");
    assert!(metrics.contains(&format!("fleet_worker_upload_seconds_count {images}\n")), "{metrics}");
    fleet.add_worker().await;
    let mut more = Vec::new();
    for job in &jobs[n / 2..] {
        more.push(fleet.submit(job.clone()).await.id);
    }
    let second = fleet.wait_all(&more, Duration::from_secs(240)).await;
    check_results(&config, &second, &jobs[n / 2..]).await;
    // The images endpoint redirects to a presigned URL serving the stored bytes.
    let store = fleet_storage::ImageStore::from_config(&config.s3).await.unwrap();
    let r = &second[0].result[0];
    let url = format!("{}/v1/jobs/{}/images/0", fleet.base, second[0].id);
    let via_api = fleet.http.get(&url).bearer_auth(E2E_KEY).send().await.unwrap();
    assert!(via_api.status().is_success(), "{}", via_api.status());
    let stored = store.get(&r.key).await.unwrap().unwrap().body;
    assert_eq!(via_api.bytes().await.unwrap().as_ref(), stored.as_slice());
    let workers: std::collections::BTreeSet<_> = second.iter().filter_map(|s| s.worker.clone()).collect();
    eprintln!("second half served by {} worker(s)", workers.len());
    fleet.stop().await;
}

/// Four compatible jobs queued before a worker starts: it takes them in one batch and runs one
/// forward pass over all of them (mixed prompts, seeds, image counts and guidance), and each job's
/// images are still exactly those it gets alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_runs_four_compatible_jobs_in_one_forward_pass_with_each_jobs_own_pixels() {
    let config = isolated_config();
    let mut fleet = Fleet::start(config.clone(), 0).await;
    let jobs: Vec<Value> = (0..4)
        .map(|i| {
            json!({"prompt": format!("batched image {i}"), "model": "tiny", "width": 64, "height": 64, "steps": 2,
                   "seed": 500 + i, "num_images": if i == 1 { 2 } else { 1 }, "guidance": if i == 2 { 3.0 } else { 0.0 },
                   "negative_prompt": "blurry"})
        })
        .collect();
    let mut ids = Vec::new();
    for job in &jobs {
        ids.push(fleet.submit(job.clone()).await.id);
    }
    fleet.add_worker().await;
    let statuses = fleet.wait_all(&ids, Duration::from_secs(120)).await;
    check_results(&config, &statuses, &jobs).await;
    let metrics = fleet.worker_metrics(0).await;
    assert!(metrics.contains("fleet_worker_forward_images_count 1\n"), "one forward pass: {metrics}");
    assert!(metrics.contains("fleet_worker_forward_images_sum 5.0\n"), "of all five images: {metrics}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_queued_job_stops_it_and_not_its_neighbours() {
    let config = isolated_config();
    let fleet = Fleet::start(config.clone(), 0).await;
    let a = fleet.submit(tiny_job(1)).await.id;
    let b = fleet.submit(tiny_job(2)).await.id;
    let c = fleet.submit(tiny_job(3)).await.id;
    fleet.cancel(b).await;
    let mut fleet = fleet;
    fleet.add_worker().await;
    let statuses = fleet.wait_all(&[a, b, c], Duration::from_secs(120)).await;
    let states: Vec<_> = statuses.iter().map(|s| s.state).collect();
    use fleet_core::JobState::*;
    assert_eq!(states, [Succeeded, Cancelled, Succeeded]);
    let store = fleet_storage::ImageStore::from_config(&config.s3).await.unwrap();
    let keys = store.list(&format!("{}/e2e/{b}/", config.s3.prefix)).await.unwrap();
    assert!(keys.is_empty(), "a cancelled job stores nothing: {keys:?}");
    fleet.stop().await;
}

/// A worker process killed with SIGKILL mid-run: another worker completes every job, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_loses_nothing_and_duplicates_nothing() {
    let bin = fleet_binary();
    assert!(
        bin.exists(),
        "{} missing: run the whole workspace's tests (scripts/test.sh) so cargo builds it",
        bin.display()
    );
    let mut config = isolated_config();
    config.worker.max_batch_images = 2;
    let dir = std::env::temp_dir().join(format!("fleet-e2e-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("fleet.toml");
    let mut file_config = config.clone();
    file_config.http.listen = "127.0.0.1:0".into();
    std::fs::write(&config_file, toml_of(&file_config)).unwrap();

    let mut fleet = Fleet::start(config.clone(), 0).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        // 512², 8 steps: ≈ 0.25 s each on a 2-core CPU, so the kill finds one running.
        let mut job = tiny_job(i);
        job["width"] = json!(512);
        job["height"] = json!(512);
        job["steps"] = json!(8);
        ids.push(fleet.submit(job).await.id);
    }
    let spawn = || {
        std::process::Command::new(&bin)
            .args(["--config", config_file.to_str().unwrap(), "worker", "--model", "tiny"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start fleet worker")
    };
    let mut victim = spawn();
    // Kill it once it is working on something.
    let started = Instant::now();
    loop {
        let statuses: Vec<JobStatus> = futures::future::join_all(ids.iter().map(|id| fleet.status(*id))).await;
        if statuses.iter().any(|s| s.state == fleet_core::JobState::Running) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the worker process never started a job");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    victim.kill().unwrap();
    victim.wait().unwrap();

    fleet.add_worker().await;
    let statuses = fleet.wait_all(&ids, Duration::from_secs(300)).await;
    let store = fleet_storage::ImageStore::from_config(&config.s3).await.unwrap();
    for s in &statuses {
        assert_eq!(s.state, fleet_core::JobState::Succeeded, "{s:?}");
        let keys = store.list(&format!("{}/e2e/{}/", config.s3.prefix, s.id)).await.unwrap();
        assert_eq!(keys.len() as u32, s.progress.images_total, "exactly one result set for {}: {keys:?}", s.id);
    }
    let retried = statuses.iter().filter(|s| s.attempts > 1).count();
    eprintln!("{retried} job(s) were taken over after the kill");
    fleet.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGTERM: the worker stops taking work, finishes or hands back its batch and exits 0. Its
/// default log (no `FLEET_LOG`, not a terminal) has one `job finished` line per job it finished,
/// from the worker's own component, no colour codes, and no error on the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_cleanly() {
    let bin = fleet_binary();
    assert!(bin.exists(), "{} missing: run scripts/test.sh", bin.display());
    let config = isolated_config();
    let dir = std::env::temp_dir().join(format!("fleet-e2e-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("fleet.toml");
    std::fs::write(&config_file, toml_of(&config)).unwrap();
    let fleet = Fleet::start(config.clone(), 0).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(fleet.submit(tiny_job(i)).await.id);
    }
    let log_path = dir.join("worker.log");
    let mut worker = std::process::Command::new(&bin)
        .args(["--config", config_file.to_str().unwrap(), "worker", "--model", "tiny"])
        .env_remove("FLEET_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut done = 0;
    while done == 0 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for id in &ids {
            done += usize::from(fleet.status(*id).await.state == fleet_core::JobState::Succeeded);
        }
    }
    assert!(done > 0, "the worker finished no job in 60 s");
    let pid = worker.id().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let exit = tokio::task::spawn_blocking(move || worker.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "worker exit after SIGTERM: {exit:?}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    let finished: Vec<&str> = log.lines().filter(|l| l.contains("job finished")).collect();
    assert!(!finished.is_empty() && finished.len() <= ids.len(), "{log}");
    for line in &finished {
        assert!(line.contains("INFO") && line.contains("fleet_worker::") && line.contains("succeeded"), "{line}");
        assert!(line.contains("model") && line.contains("seconds") && line.contains("images"), "{line}");
    }
    assert!(!log.contains('\u{1b}'), "colour codes in a log that is not a terminal:\n{log}");
    assert!(!log.contains("ERROR"), "an error on a clean shutdown:\n{log}");
    // Whatever it did not finish is back on the queue: another worker completes everything.
    let mut fleet = fleet;
    fleet.add_worker().await;
    let statuses = fleet.wait_all(&ids, Duration::from_secs(240)).await;
    assert!(statuses.iter().all(|s| s.state == fleet_core::JobState::Succeeded));
    // Handed back cleanly: published afresh, so the broker counted no failed delivery.
    let counted: Vec<_> = statuses.iter().filter(|s| s.deliveries > 0).map(|s| (s.id, s.deliveries)).collect();
    assert!(counted.is_empty(), "a clean stop counted as failed deliveries: {counted:?}");
    let handed_back = statuses.iter().filter(|s| s.handbacks > 0).count();
    eprintln!("{handed_back} job(s) were handed back by the stopping worker");
    fleet.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

fn toml_of(config: &FleetConfig) -> String {
    toml::to_string(config).expect("configuration serialises to TOML")
}

/// A message that is not a job (not even JSON), published straight onto a job queue: the worker
/// dead-letters it with the broker's reason `rejected` and goes on serving real jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_that_is_not_a_job_is_dead_lettered_and_the_worker_keeps_going() {
    use lapin::options::{BasicGetOptions, BasicPublishOptions};
    let config = isolated_config();
    let fleet = Fleet::start(config.clone(), 1).await;
    let topology = fleet_queue::Topology::new(&config.rabbitmq, ["tiny"]);
    let broker = fleet_queue::Broker::connect(&config.rabbitmq.url, topology).await.unwrap();
    let channel = broker.channel().await.unwrap();
    let routing = fleet_queue::topology::routing_key("tiny", fleet_core::Priority::Interactive);
    let props = lapin::BasicProperties::default().with_delivery_mode(2);
    let confirm = channel
        .basic_publish(&config.rabbitmq.exchange, &routing, BasicPublishOptions::default(), b"{not json", props)
        .await
        .unwrap();
    confirm.await.unwrap();

    let started = Instant::now();
    let dead = loop {
        if let Some(msg) =
            channel.basic_get(&config.rabbitmq.dead_letter_queue, BasicGetOptions { no_ack: true }).await.unwrap()
        {
            break msg.delivery;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the malformed message never reached the dead-letter queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.data, b"{not json");
    // The worker dead-letters it itself, saying why.
    let why = fleet_queue::message::dead_letter_reason(&dead.properties).expect("a dead-letter reason");
    assert_eq!(why.code, "invalid_spec", "{why:?}");
    assert!(why.detail.contains("unreadable"), "{why:?}");

    let ok = fleet.submit(tiny_job(1)).await.id;
    let statuses = fleet.wait_all(&[ok], Duration::from_secs(60)).await;
    assert_eq!(statuses[0].state, fleet_core::JobState::Succeeded, "the worker kept serving: {:?}", statuses[0]);

    // A real job published straight onto the queue (no dispatcher, no record): the worker's
    // intake writes its record, which keeps the request as one submitted over HTTP does.
    let mut spec = fleet_core::JobSpec::new("published straight onto the queue");
    spec.negative_prompt = Some("blur".into());
    (spec.model, spec.width, spec.height, spec.steps, spec.seed) = ("tiny".into(), 64, 64, 1, Some(77));
    let job = spec.validate(&config.limits_for("tiny")).unwrap().assign("e2e", fleet_core::validate::new_job_id);
    let id = job.spec().id.expect("an id");
    let (body, props) = fleet_queue::message::encode(&job, "e2e-straight").unwrap();
    let confirm =
        channel.basic_publish(&config.rabbitmq.exchange, &routing, BasicPublishOptions::default(), &body, props);
    confirm.await.unwrap().await.unwrap();
    let done = fleet.wait_all(&[id], Duration::from_secs(60)).await.remove(0);
    assert_eq!(done.state, fleet_core::JobState::Succeeded, "{done:?}");
    let request = done.request.expect("the intake's record keeps the request");
    assert_eq!(
        (request.prompt.as_str(), request.negative_prompt.as_deref()),
        ("published straight onto the queue", Some("blur"))
    );
    assert_eq!((request.seed, request.width, request.steps), (77, 64, 1));
    fleet.stop().await;
}

/// A job cancelled while it runs stops at its next denoising step, stores nothing, and the job
/// queued behind it still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_running_job_stops_it_between_steps_and_not_its_neighbours() {
    let config = isolated_config();
    let fleet = Fleet::start(config.clone(), 1).await;
    // Long enough (≈ 2–3 s on a 2-core CPU) that the cancel lands between steps: at 512² the
    // faster engine finished all 8 steps in 0.4 s, before the test saw step 1.
    let long = json!({"prompt": "a long one", "model": "tiny", "width": 1024, "height": 1024, "steps": 8, "seed": 1});
    let long = fleet.submit(long).await.id;
    let after = fleet.submit(tiny_job(3)).await.id;
    let started = Instant::now();
    loop {
        let s = fleet.status(long).await;
        if s.state == fleet_core::JobState::Running && s.progress.step >= 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the long job never got going: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fleet.cancel(long).await;
    let cancelled = fleet.wait_all(&[long], Duration::from_secs(120)).await.remove(0);
    assert_eq!(cancelled.state, fleet_core::JobState::Cancelled, "{cancelled:?}");
    assert!(cancelled.progress.step < 8, "it stopped between steps, not at the end: {cancelled:?}");
    assert!(cancelled.result.is_empty());
    let store = fleet_storage::ImageStore::from_config(&config.s3).await.unwrap();
    let keys = store.list(&format!("{}/e2e/{long}/", config.s3.prefix)).await.unwrap();
    assert!(keys.is_empty(), "a job cancelled mid-run stores nothing: {keys:?}");
    let neighbour = fleet.wait_all(&[after], Duration::from_secs(120)).await.remove(0);
    assert_eq!(neighbour.state, fleet_core::JobState::Succeeded, "{neighbour:?}");
    fleet.stop().await;
}
