//! The `fleet` binary as users call it. Modules: `bad_input` (hostile jobs: a non-zero exit
//! naming line and field), `secrets` (no secret in output, logs or errors), `from_image`
//! (`fleet generate --from-image`), `img2img` (`--init-image`, `--strength`, `--mask-image` on
//! `fleet generate` and `fleet submit`).

#[path = "cli/bad_input.rs"]
mod bad_input;
#[path = "cli/from_image.rs"]
mod from_image;
#[path = "cli/img2img.rs"]
mod img2img;
#[path = "cli/secrets.rs"]
mod secrets;

use std::process::Command;

fn fleet() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleet"));
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    // No configuration file, not even a `./fleet.toml` that `fleet up` may have left in the checkout.
    cmd.env("FLEET_CONFIG", "").env_remove("FLEET_API_KEYS");
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run fleet");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_accepts_the_example_jobs() {
    let (code, stdout, _) = run(fleet().args(["validate", "examples/jobs.jsonl"]));
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("4 job(s), all valid"), "{stdout}");
}

#[test]
fn validate_reports_every_error_with_line_and_field() {
    let (code, stdout, stderr) = run(fleet().args(["validate", "examples/bad-jobs.jsonl"]));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("examples/bad-jobs.jsonl:2: prompt: must not be empty"), "{stdout}");
    assert!(stdout.contains("examples/bad-jobs.jsonl:2: steps: must be 1, 2, 4 or 8"), "{stdout}");
    assert!(stdout.contains("examples/bad-jobs.jsonl:2: loras[2].scale: must be between -4 and 4"), "{stdout}");
    assert!(stdout.contains("examples/bad-jobs.jsonl:3: widht: unknown field `widht`"), "{stdout}");
    assert!(stdout.contains("examples/bad-jobs.jsonl:4: .: expected ident"), "{stdout}");
    assert!(stdout.contains("3 of 4 job(s) invalid"), "{stdout}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn validate_single_json_document_reports_the_file_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job.json");
    std::fs::write(&file, "{\n  \"prompt\": \"x\",\n  \"guidance\": \"high\"\n}\n").unwrap();
    let (code, stdout, _) = run(fleet().arg("validate").arg(&file));
    assert_eq!(code, 1);
    assert!(stdout.contains("job.json:3: guidance: invalid type"), "{stdout}");
}

#[test]
fn validate_missing_file_is_a_clear_error() {
    let (code, _, stderr) = run(fleet().args(["validate", "no/such/file.jsonl"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot read no/such/file.jsonl"), "{stderr}");
}

#[test]
fn config_prints_layers_and_masks_secrets() {
    let (code, stdout, stderr) = run(fleet()
        .args(["--config", "fleet.example.toml", "config", "--set", "redis.key_prefix=from-flag"])
        .env("FLEET__WORKER__MAX_BATCH_IMAGES", "3")
        .env("FLEET_API_KEYS", "supersecretkey=ops:admin"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("key_prefix = \"from-flag\""), "{stdout}");
    assert!(stdout.contains("max_batch_images = 3"), "{stdout}");
    assert!(stdout.contains("amqp://guest:***@127.0.0.1"), "{stdout}");
    assert!(stdout.contains("supe***") && !stdout.contains("supersecretkey"), "{stdout}");
    assert!(!stdout.contains("dev-key-change-me"), "{stdout}");
}

#[test]
fn config_rejects_invalid_values_with_the_key_name() {
    let (code, _, stderr) = run(fleet().args(["config", "--set", "http.listen=not-an-address"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("http.listen"), "{stderr}");
}

/// A dispatcher on a free port with isolated queue and key names, for the client commands.
fn start_dispatcher() -> (String, tokio::runtime::Runtime) {
    use fleet_core::config::{ApiKeyConfig, FleetConfig, ModelConfig};
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let mut cfg = FleetConfig::default();
    if let Ok(url) = std::env::var("FLEET_TEST_AMQP_URL") {
        cfg.rabbitmq.url = url;
    }
    if let Ok(url) = std::env::var("FLEET_TEST_REDIS_URL") {
        cfg.redis.url = url;
    }
    cfg.rabbitmq.exchange = format!("cli-{tag}.jobs");
    cfg.rabbitmq.queue_prefix = format!("cli-{tag}");
    cfg.rabbitmq.dead_letter_exchange = format!("cli-{tag}.dlx");
    cfg.rabbitmq.dead_letter_queue = format!("cli-{tag}.dead");
    cfg.redis.key_prefix = format!("cli-{tag}");
    // The machine's Redis may keep nothing across a restart; the tests never restart it.
    cfg.redis.allow_volatile = true;
    cfg.models = [("tiny".to_owned(), ModelConfig::default())].into_iter().collect();
    cfg.http.api_keys = vec![ApiKeyConfig { key: "cli-test-key".into(), tenant: "cli".into(), admin: true }];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let base = runtime.block_on(async {
        let app = fleet_dispatcher::App::connect(cfg).await.expect("dispatcher connects (scripts/services.sh)");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(fleet_dispatcher::serve(app, listener, tokio_util::sync::CancellationToken::new()));
        base
    });
    (base, runtime)
}

/// Runs a client command against the dispatcher at `base` with its key.
fn client(base: &str, args: &[&str]) -> (i32, String, String) {
    run(fleet().args(args).env("FLEET_SERVER", base).env("FLEET_API_KEY", "cli-test-key"))
}

#[test]
fn submit_status_jobs_cancel_and_delete_through_the_api() {
    let (base, _runtime) = start_dispatcher();
    let client = |args: &[&str]| client(&base, args);
    let (code, stdout, stderr) =
        client(&["submit", "--prompt", "a cli cat", "--model", "tiny", "--width", "64", "--height", "64"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let id = stdout.split_whitespace().next().unwrap().to_owned();
    assert!(stdout.contains("queued"), "{stdout}");

    let (code, stdout, _) = client(&["status", &id]);
    assert_eq!(code, 0);
    assert!(stdout.contains(&id) && stdout.contains("queued"), "{stdout}");
    assert!(stdout.contains("  prompt: a cli cat\n") && stdout.contains("  64×64, 4 steps"), "the request: {stdout}");
    let (code, stdout, _) = client(&["jobs", "--json"]);
    assert_eq!(code, 0);
    let page: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(page["jobs"][0]["id"], id.as_str());
    let (code, stdout, _) = client(&["cancel", &id]);
    assert_eq!(code, 0);
    assert!(stdout.contains("cancelled"), "{stdout}");
    let (_, stdout, _) = client(&["status", &id]);
    assert!(
        stdout.contains("cancelled by its owner before it started") && stdout.contains("  cancelled: "),
        "{stdout}"
    );
    let (code, stdout, _) = client(&["wait", &id]);
    assert_eq!(code, 1, "wait exits 1 for a job that did not succeed: {stdout}");
    // Deleting: the finished job at once, then it is gone; a queued one is cancelled to go later.
    let (code, stdout, stderr) = client(&["delete", &id]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("{id}  deleted")), "{stdout}");
    let (code, _, stderr) = client(&["delete", &id]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&id) && stderr.contains("not_found"), "{stderr}");
    let (code, stdout, stderr) = client(&["submit", "--prompt", "kept", "--model", "tiny", "--retention", "90"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let kept = stdout.split_whitespace().next().unwrap().to_owned();
    let (_, stdout, _) = client(&["status", &kept]);
    assert!(stdout.contains("  kept 90 s after it finishes"), "{stdout}");
    let (code, stdout, _) = client(&["delete", &kept]);
    assert_eq!(code, 0);
    assert!(stdout.contains("cancelled; its images and record are removed once it is final"), "{stdout}");
    let (code, stdout, _) = client(&["queues"]);
    assert_eq!(code, 0);
    assert!(stdout.contains(".tiny.interactive"), "{stdout}");

    let (code, _, stderr) = client(&["submit", "--prompt", "", "--steps", "3", "--model", "tiny"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("invalid_spec") && stderr.contains("[0].steps: must be 1, 2, 4 or 8"), "{stderr}");
}

#[test]
fn client_commands_without_a_key_say_how_to_give_one() {
    let (code, _, stderr) = run(fleet().args(["status", "x"]).env_remove("FLEET_API_KEY"));
    assert_eq!(code, 2);
    assert!(stderr.contains("no API key"), "{stderr}");
}

#[test]
fn generate_with_the_tiny_model_writes_numbered_images_with_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cat.png");
    let (code, stdout, stderr) = run(fleet()
        .args([
            "generate",
            "--model",
            "tiny",
            "--prompt",
            "a cli cat",
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "2",
            "--num-images",
            "2",
            "--seed",
            "5",
            "--out",
        ])
        .arg(&out));
    assert_eq!(code, 0, "{stdout}{stderr}");
    for i in 0..2 {
        let path = dir.path().join(format!("cat_{i}.png"));
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("a cli cat") && text.contains(&format!("Seed: {}", 5 + i)), "{}", path.display());
    }
}

#[test]
fn generate_offline_from_the_hub_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(fleet()
        .args(["generate", "--prompt", "x", "--out", "x.png"])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", dir.path()));
    assert_eq!(code, 2);
    assert!(stderr.contains("--model DIR"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn generate_with_a_lora_file_and_a_controlnet() {
    let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fleet-engine/tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cn.png");
    let lora = format!("{}:0.5", fx.join("extras/lora_kohya.safetensors").display());
    let base = |extra: &[&str]| {
        let mut c = fleet();
        c.args(["generate", "--model"]).arg(fx.join("tiny-sdxl"));
        c.args(["--prompt", "a cat", "--width", "64", "--height", "64", "--steps", "2", "--lora", &lora]);
        c.arg("--controlnet").arg(fx.join("extras/tiny-controlnet"));
        c.arg("--control-image").arg(fx.join("extras/control_a.png"));
        c.args(extra).arg("--out").arg(&out);
        c
    };
    let (code, stdout, stderr) =
        run(&mut base(&["--control-scale", "0.5", "--control-end", "0.5", "--control-preprocess", "canny"]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(std::fs::read(&out).unwrap().starts_with(b"\x89PNG"));
    let (code, _, stderr) = run(&mut base(&["--control-preprocess", "sobel"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("expected none, canny"), "{stderr}");
}

/// `fleet wait` against an events stream that drops after its first event: the CLI reconnects
/// with `Last-Event-ID`, reads multi-line `data:` and `retry:`, and ends at the final state.
#[test]
fn wait_reconnects_with_the_last_event_id_when_the_stream_drops() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let status = |state: &str, step: u32| {
        format!(
            r#"{{"id":"j1","state":"{state}","model":"tiny","progress":{{"step":{step},"steps":4,"images_done":0,"images_total":1}}}}"#
        )
    };
    let bodies = [
        // The status split over two `data:` lines, which the reader joins with a newline.
        format!(
            ": keep-alive\n\nretry: 50\nid: 7\nevent: running\ndata: {{\"status\":\ndata: {}}}\n\n",
            status("running", 1)
        ),
        format!("id: 8\nevent: succeeded\ndata: {{\"status\":{}}}\n\n", status("succeeded", 4)),
    ];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (base, requests) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Duration)>::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            let mut dropped = Instant::now();
            for body in bodies {
                let (mut socket, _) = listener.accept().await.unwrap();
                let reopened_after = dropped.elapsed();
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0];
                    if socket.read(&mut byte).await.unwrap() == 0 {
                        break;
                    }
                    head.push(byte[0]);
                }
                seen.lock().unwrap().push((String::from_utf8_lossy(&head).to_lowercase(), reopened_after));
                let answer =
                    format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{body}");
                socket.write_all(answer.as_bytes()).await.unwrap();
                // Dropping the socket ends the stream: after `running` a drop, after `succeeded` the end.
                drop(socket);
                dropped = Instant::now();
            }
        });
        (base, requests)
    });
    let (code, stdout, stderr) = client(&base, &["wait", "j1"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("j1") && stdout.contains("succeeded") && stdout.contains("step 4/4"), "{stdout}");
    let requests = requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let (first, (second, reopened_after)) = (&requests[0].0, &requests[1]);
    // `retry: 50` (ms) instead of the default second.
    assert!(*reopened_after < Duration::from_millis(900), "reopened after {reopened_after:?}");
    assert!(first.starts_with("get /v1/jobs/j1/events") && !first.contains("last-event-id"), "{requests:?}");
    assert!(second.contains("\r\nlast-event-id: 7\r\n"), "{requests:?}");
}

/// `fleet generate --jobs`: the job file through the batcher, one forward pass per batch, and the
/// same bytes whether jobs share passes or run one per pass.
#[test]
fn generate_jobs_batches_a_job_file_and_each_jobs_images_do_not_depend_on_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.jsonl");
    let jobs = [
        r#"{"prompt": "a red bicycle", "model": "tiny", "width": 64, "height": 64, "steps": 2, "seed": 3}"#,
        r#"{"prompt": "a lighthouse", "model": "tiny", "width": 64, "height": 64, "steps": 2, "seed": 9, "num_images": 2}"#,
        "",
        r#"{"prompt": "a cat", "negative_prompt": "blur", "guidance": 3, "model": "tiny", "width": 64, "height": 64, "steps": 2, "seed": 5}"#,
        r#"{"prompt": "a mountain", "model": "tiny", "width": 64, "height": 64, "steps": 2, "seed": 7, "output": {"format": "jpeg"}}"#,
    ];
    std::fs::write(&file, jobs.join("\n")).unwrap();
    let generate = |out: &std::path::Path, max: &str| {
        let (code, stdout, stderr) = run(fleet()
            .args(["generate", "--jobs"])
            .arg(&file)
            .arg("--out")
            .arg(out)
            .args(["--max-batch-images", max]));
        assert_eq!(code, 0, "{stderr}");
        (stdout, stderr)
    };
    let (joint, single) = (dir.path().join("joint"), dir.path().join("single"));
    let (stdout, stderr) = generate(&joint, "8");
    assert!(stderr.contains("5 image(s) in 1 forward pass(es)"), "{stderr}");
    let names = ["1_0.png", "2_0.png", "2_1.png", "4_0.png", "5_0.jpg"];
    for name in names {
        assert!(stdout.contains(&joint.join(name).display().to_string()), "{name}: {stdout}");
    }
    let (_, stderr) = generate(&single, "1");
    assert!(stderr.contains("5 image(s) in 4 forward pass(es)"), "{stderr}");
    for name in names {
        let (a, b) = (std::fs::read(joint.join(name)).unwrap(), std::fs::read(single.join(name)).unwrap());
        assert!(a == b, "{name}: a shared pass changed the file");
    }
    // The file's own job: what `fleet generate` writes for the same values.
    let alone = dir.path().join("alone.png");
    let (code, _, stderr) = run(fleet()
        .args(["generate", "--model", "tiny", "--prompt", "a red bicycle", "--width", "64", "--height", "64"])
        .args(["--steps", "2", "--seed", "3", "--out"])
        .arg(&alone));
    assert_eq!(code, 0, "{stderr}");
    let decode = |p: &std::path::Path| image::open(p).unwrap().to_rgb8();
    assert!(decode(&alone) == decode(&joint.join("1_0.png")), "fleet generate and --jobs give the same pixels");

    // An invalid job stops the run before anything is generated, naming line and field.
    std::fs::write(&file, format!("{}\n{}", jobs[0], r#"{"prompt": "x", "model": "tiny", "steps": 3}"#)).unwrap();
    let bad = dir.path().join("bad");
    let (code, _, stderr) = run(fleet().args(["generate", "--jobs"]).arg(&file).arg("--out").arg(&bad));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(":2: steps:"), "{stderr}");
    assert!(!bad.exists(), "nothing generated");
}

#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    // `fleet config | head -0`: the reader is gone before the first write.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = fleet()
        .args(["config", "--format", "json"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn an_error_is_printed_once_not_with_its_cause_repeated() {
    let (code, _, stderr) = run(fleet().args(["--config", "no/such/fleet.toml", "config"]));
    assert_eq!(code, 2);
    let line = stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_default();
    assert_eq!(line.matches("no/such/fleet.toml").count(), 1, "{stderr}");
}

#[test]
fn bulk_dry_run_prints_the_plan_of_a_template_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("styles.txt"), "oil\nink\n").unwrap();
    let template = dir.path().join("p.tmpl");
    std::fs::write(&template, "a {cat|dog} in {__styles__}\nthe same {x|x}\n").unwrap();
    let out = dir.path().join("out");
    let (template, out_arg) = (template.display().to_string(), out.display().to_string());
    let args = ["bulk", "run", "--template", &template, "--name", "dry", "--local", "--model", "tiny"];
    let (code, stdout, stderr) = run(fleet().args(args).args(["--out", &out_arg, "--dry-run"]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("2 row(s), 6 sample(s) in 1 shard(s), 1 exact duplicate prompt(s)"), "{stdout}");
    assert!(stdout.contains("  1: a cat in oil\n  2: a cat in ink\n  3: a dog in oil"), "{stdout}");
    assert!(!out.exists(), "a dry run writes nothing");

    std::fs::write(dir.path().join("bad.tmpl"), "ok\nbroken {a|b\n").unwrap();
    let bad = dir.path().join("bad.tmpl").display().to_string();
    let (code, _, stderr) = run(fleet().args(["bulk", "run", "--template", &bad, "--name", "dry", "--dry-run"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("bad.tmpl:2: template: column 8: unclosed"), "{stderr}");
}
