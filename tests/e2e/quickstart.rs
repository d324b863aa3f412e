//! The README's quick start as written: `fleet up` in an empty directory, then, from that
//! directory and with no flags but the prompt, `fleet submit --prompt … --wait` and
//! `fleet download ID`; Ctrl-C stops the fleet and `fleet up` exits 0.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fleet_e2e::fleet_binary;

/// Queue and key names of this run (what `scripts/clean_test_queues.py` removes), S3 as the
/// test services have it, and an empty Hugging Face cache (so the default model is `tiny`).
fn isolating_env(tag: &str, hf_home: &Path) -> Vec<(String, String)> {
    let c = fleet_e2e::isolated_config();
    [
        ("FLEET__RABBITMQ__EXCHANGE", format!("up-{tag}.jobs")),
        ("FLEET__RABBITMQ__QUEUE_PREFIX", format!("up-{tag}")),
        ("FLEET__RABBITMQ__DEAD_LETTER_EXCHANGE", format!("up-{tag}.dlx")),
        ("FLEET__RABBITMQ__DEAD_LETTER_QUEUE", format!("up-{tag}.dead")),
        ("FLEET__REDIS__KEY_PREFIX", format!("up-{tag}")),
        ("FLEET__S3__ENDPOINT", c.s3.endpoint),
        ("FLEET__S3__BUCKET", c.s3.bucket),
        ("FLEET__S3__PREFIX", format!("up-{tag}")),
        ("FLEET__S3__ACCESS_KEY_ID", c.s3.access_key_id),
        ("FLEET__S3__SECRET_ACCESS_KEY", c.s3.secret_access_key),
        ("HF_HOME", hf_home.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `fleet ARGS` in `dir` as a user in another shell runs it: no configuration but `./fleet.toml`.
fn fleet_in(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(fleet_binary())
        .current_dir(dir)
        .args(args)
        .env_remove("FLEET_CONFIG")
        .env_remove("FLEET_SERVER")
        .env_remove("FLEET_API_KEY")
        .env_remove("FLEET_API_KEYS")
        .output()
        .expect("run fleet")
}

/// `fleet ARGS --server BASE --api-key …` with no configuration file, off the async runtime.
async fn fleet_against(base: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(fleet_binary());
    cmd.args(args).args(["--server", base, "--api-key", fleet_e2e::E2E_KEY]).env("FLEET_CONFIG", "");
    tokio::task::spawn_blocking(move || cmd.output().expect("run fleet")).await.unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

#[test]
fn the_readme_quick_start_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let hf_home = tempfile::tempdir().unwrap();
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let listen = format!("127.0.0.1:{}", free_port());
    let log = dir.path().join("up.stderr");
    let mut up = Command::new(fleet_binary())
        .current_dir(dir.path())
        .args(["up", "--listen", &listen])
        .envs(isolating_env(&tag, hf_home.path()))
        .env_remove("FLEET_CONFIG")
        .env_remove("FLEET_API_KEYS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start fleet up");
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();

    // `ready:` within two minutes (a cold worker loads the tiny model in seconds).
    let (tx, rx) = mpsc::channel();
    let stdout = up.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    while !printed.iter().any(|l: &String| l.starts_with("try:")) {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => printed.push(line),
            Err(_) => {
                let _ = up.kill();
                panic!("fleet up printed no `try:` line; stdout {printed:?}\nstderr:\n{}", stderr());
            }
        }
    }
    let ready = printed.iter().find(|l| l.starts_with("ready:")).expect("a ready: line");
    assert!(ready.contains(&format!("http://{listen}/ui/")), "{ready}");
    assert!(printed.iter().any(|l| l.starts_with("api key: ")), "{printed:?}");
    assert!(stderr().contains("serving tiny"), "{}", stderr());

    // The README's next two commands, unchanged.
    let submitted = fleet_in(dir.path(), &["submit", "--prompt", "a red bicycle", "--wait"]);
    let out = String::from_utf8_lossy(&submitted.stdout).into_owned();
    assert!(
        submitted.status.success(),
        "submit: {out}{}\nfleet up:\n{}",
        String::from_utf8_lossy(&submitted.stderr),
        stderr()
    );
    let id = out.split_whitespace().next().expect("a job id").to_owned();
    assert!(out.contains("succeeded"), "{out}");
    let downloaded = fleet_in(dir.path(), &["download", &id]);
    assert!(downloaded.status.success(), "{}", String::from_utf8_lossy(&downloaded.stderr));
    let image = dir.path().join(format!("{id}_0.png"));
    let decoded = image::open(&image).unwrap_or_else(|e| panic!("{}: {e}", image.display()));
    assert!(decoded.width() > 0);

    // Ctrl-C: the workers drain, the dispatcher stops, exit 0, the port is free again.
    let interrupted = Command::new("kill").args(["-INT", &up.id().to_string()]).status().unwrap();
    assert!(interrupted.success());
    let mut exited = None;
    for _ in 0..600 {
        if let Some(status) = up.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(status) = exited else {
        let _ = up.kill();
        panic!("fleet up did not stop within 60 s of SIGINT:\n{}", stderr());
    };
    assert!(status.success(), "fleet up exited {status}:\n{}", stderr());
    assert!(std::net::TcpListener::bind(&listen).is_ok(), "{listen} still in use after fleet up stopped");
}

#[test]
fn fleet_up_names_a_port_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let hf_home = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let out = Command::new(fleet_binary())
        .current_dir(dir.path())
        .args(["up", "--listen", &listen])
        .envs(isolating_env(&tag, hf_home.path()))
        .env_remove("FLEET_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on {listen}")), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A job for a model no live worker serves is accepted, says so in `waiting_for` (202 and
/// status), and `fleet wait --timeout` gives up with that hint and exit 3; once a worker has
/// served the model, the hint says when it was last seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_no_worker_serves_says_what_it_waits_for_and_wait_times_out() {
    let mut fleet = fleet_e2e::fleet::Fleet::start(fleet_e2e::isolated_config(), 0).await;
    let accepted = fleet.submit(serde_json::json!({"prompt": "x", "model": "tiny", "width": 64, "height": 64})).await;
    let hint = accepted.waiting_for.clone().expect("a waiting_for hint in the 202");
    assert_eq!(hint, "no worker serves model tiny; none has been seen");
    assert_eq!(fleet.status(accepted.id).await.waiting_for.as_deref(), Some(hint.as_str()));

    let id = accepted.id.to_string();
    let out = fleet_against(&fleet.base, &["wait", &id, "--timeout", "2"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&format!("{}: still queued after 2 s: {hint}", accepted.id)), "{stderr}");

    // A worker takes it; a later job for the model, once no worker is left, names the last heartbeat.
    fleet.add_worker().await;
    let done = fleet.wait_all(&[accepted.id], Duration::from_secs(60)).await;
    assert_eq!(done[0].state, fleet_core::JobState::Succeeded);
    assert_eq!(done[0].waiting_for, None);
    let config = fleet.config.clone();
    fleet.stop().await;
    let fleet = fleet_e2e::fleet::Fleet::start(config, 0).await;
    let started = std::time::Instant::now();
    loop {
        let job = fleet.submit(serde_json::json!({"prompt": "x", "model": "tiny", "width": 64, "height": 64})).await;
        let hint = job.waiting_for.unwrap_or_default();
        if hint.starts_with("no worker serves model tiny; last seen 20") {
            break;
        }
        // the stopped worker's heartbeat lives until it expires (heartbeat_ttl_secs)
        assert!(started.elapsed() < Duration::from_secs(30), "hint after the worker left: {hint:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    fleet.stop().await;
}

/// `fleet submit --controlnet NAME --control-image FILE …` sends the file inline with the given
/// settings; the job's status keeps them (and the image's SHA-256, not its bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submit_sends_a_controlnet_with_a_local_control_image() {
    let fleet = fleet_e2e::fleet::Fleet::start(fleet_e2e::isolated_config(), 0).await;
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("edges.png");
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 0])).save(&control).unwrap();
    let bytes = std::fs::read(&control).unwrap();
    let path = control.display().to_string();
    let submit = ["submit", "--prompt", "a house", "--model", "tiny", "--width", "64", "--height", "64"];
    let control_flags =
        ["--controlnet", "canny", "--control-image", &path, "--control-scale", "0.5", "--control-end", "0.8"];
    let out = fleet_against(&fleet.base, &[&submit[..], &control_flags[..]].concat()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let id: uuid::Uuid = stdout.split_whitespace().next().unwrap().parse().unwrap();
    let status = fleet.status(id).await;
    let control = status.request.and_then(|r| r.controlnet).expect("the request keeps the ControlNet");
    assert_eq!(control.model, "canny");
    assert_eq!((control.scale, control.start, control.end), (0.5, 0.0, 0.8));
    assert_eq!(control.image, "inline");
    assert_eq!(control.image_bytes, Some(bytes.len() as u64));
    assert!(control.image_sha256.is_some_and(|h| h.len() == 64), "the image's SHA-256 is kept");
    fleet.stop().await;
}
