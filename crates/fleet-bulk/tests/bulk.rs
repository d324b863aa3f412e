//! fleet-bulk without services: input reading and row errors with line numbers, `--local` runs
//! into WebDataset shards and image folders, and a resume after the run is dropped mid-way.
//! Module `programs`: prompt programs and near-duplicate control.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[path = "bulk/programs.rs"]
mod programs;
#[path = "support/tiny_lora.rs"]
mod tiny_lora;

use fleet_bulk::record::{SampleRecord, SampleState, ShardStats};
use fleet_bulk::{BulkError, InputFormat, Layout, RunConfig, RunState, Session};
use serde_json::{Value, json};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn tiny_defaults() -> serde_json::Map<String, Value> {
    json!({"model": "tiny", "width": 64, "height": 64, "steps": 1}).as_object().unwrap().clone()
}

fn local_run(name: &str, input: PathBuf, out: &Path, shard_size: u32) -> RunConfig {
    RunConfig {
        name: name.to_owned(),
        input_format: InputFormat::from_path(&input),
        input,
        out: out.display().to_string(),
        layout: Layout::WebDataset,
        shard_size,
        seeds_per_prompt: 1,
        seed: 7,
        defaults: tiny_defaults(),
        max_in_flight: 4,
        skip_invalid: false,
        local: true,
        samples: None,
        dedup_hamming: None,
        keep_jobs: false,
    }
}

fn session() -> Session {
    Session { config: fleet_core::FleetConfig::default(), api: None, on_progress: None }
}

/// Every entry of every `NNNNN.tar` under `dir`: shard file → [(name, bytes)].
fn read_shards(dir: &Path) -> BTreeMap<String, Vec<(String, Vec<u8>)>> {
    let mut shards = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("tar") {
            continue;
        }
        let files = fleet_bulk::shard::read_tar(&path).unwrap();
        shards.insert(path.file_name().unwrap().to_string_lossy().into_owned(), files);
    }
    shards
}

/// A shard's manifest rows; the Parquet manifest (read with the parquet crate) must hold the same.
fn manifest(dir: &Path, shard: &str) -> Vec<SampleRecord> {
    let text = std::fs::read_to_string(dir.join(format!("{shard}_manifest.jsonl"))).unwrap();
    let records: Vec<SampleRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let parquet = fleet_bulk::manifest::read_manifest(&dir.join(format!("{shard}_manifest.parquet"))).unwrap();
    assert_eq!(parquet, records, "{shard}: the Parquet manifest holds the JSONL manifest's rows");
    records
}

#[test]
fn csv_and_text_inputs_become_rows_with_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(
        dir.path(),
        "p.csv",
        "prompt,steps,loras,seed\n\"a cat, sitting\",2,style:0.5;ink,\n\"multi\nline\",x,,9\n",
    );
    let rows: Vec<_> = fleet_bulk::input::read_rows(&csv, InputFormat::Csv).unwrap().collect();
    let first = rows[0].as_ref().unwrap();
    assert_eq!(first.line, 2);
    assert_eq!(first.fields["prompt"], "a cat, sitting");
    assert_eq!(first.fields["steps"], 2);
    assert_eq!(first.fields["loras"], json!([{"name": "style", "scale": 0.5}, {"name": "ink"}]));
    assert!(!first.fields.contains_key("seed"), "empty cells fall back to defaults");
    let second = rows[1].as_ref().unwrap_err();
    assert_eq!((second[0].line, second[0].field.as_str()), (3, "steps"));

    let text = write(dir.path(), "p.txt", "a red fox\n\n  # not a comment, a prompt\n");
    let rows: Vec<_> = fleet_bulk::input::read_rows(&text, InputFormat::Text).unwrap().map(Result::unwrap).collect();
    assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(rows[1].fields["prompt"], "# not a comment, a prompt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rows_are_reported_with_line_numbers_and_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "bad.jsonl",
        concat!(
            "{\"prompt\": \"fine\"}\n",
            "{\"prompt\": \"broken\"\n",
            "{\"prompt\": \"x\", \"widht\": 64}\n",
            "{\"prompt\": \"\"}\n",
            "# a comment\n",
            "{\"prompt\": \"y\", \"key\": \"has.dot\", \"num_images\": 2}\n",
            "{\"prompt\": \"also fine\"}\n",
        ),
    );
    let out = dir.path().join("out");
    let run = local_run("bad-rows", input.clone(), &out, 10);
    let scanned = fleet_bulk::check_input(&run, &fleet_core::FleetConfig::default()).unwrap();
    let found: Vec<(usize, &str)> = scanned.errors.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(found, [(2, "."), (3, "widht"), (4, "prompt"), (6, "key"), (6, "num_images")], "{:?}", scanned.errors);
    assert!(scanned.errors[0].message.contains("bad JSON"));
    assert!(scanned.errors[1].message.contains("unknown field"));
    assert_eq!((scanned.summary.rows, scanned.summary.invalid_rows, scanned.summary.samples), (6, 4, 6));

    match fleet_bulk::start(run.clone(), &session()).await {
        Err(BulkError::InvalidRows { rows, total }) => assert_eq!((rows.len(), total), (5, 4)),
        other => panic!("the run must refuse to start: {other:?}"),
    }
    assert!(!out.join("run.json").exists(), "nothing is written for a refused run");

    // --skip-invalid: the invalid rows become failed samples, listed in the stats.
    let run = RunConfig { skip_invalid: true, ..run };
    let done = fleet_bulk::start(run, &session()).await.unwrap();
    assert_eq!((done.state, done.totals.succeeded, done.totals.failed), (RunState::Finished, 2, 4));
    let stats: ShardStats = serde_json::from_slice(&std::fs::read(out.join("00000_stats.json")).unwrap()).unwrap();
    assert_eq!(stats.failed_by_code.get("invalid_spec"), Some(&4));
    assert_eq!(stats.failures.iter().map(|f| f.line).collect::<Vec<_>>(), [2, 3, 4, 6]);
    let shards = read_shards(&out);
    assert_eq!(shards["00000.tar"].len(), 6, "two samples, three files each");
    let rows = manifest(&out, "00000");
    let failed: Vec<_> = rows.iter().filter(|r| r.status == SampleState::Failed).map(|r| r.line).collect();
    assert_eq!((rows.len(), failed), (6, vec![2, 3, 4, 6]), "failed samples are manifest rows too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_run_writes_complete_shards_and_a_dropped_run_resumes_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = String::new();
    for i in 0..23 {
        let row = match i {
            3 => json!({"prompt": format!("sample {i}"), "key": "custom-key", "metadata": {"source": "test"}}),
            _ => json!({"prompt": format!("sample {i}")}),
        };
        lines.push_str(&format!("{row}\n"));
    }
    let input = write(dir.path(), "prompts.jsonl", &lines);
    let out = dir.path().join("out");
    let run = local_run("local-resume", input, &out, 5);

    // Drop the run once two shards are published, as a killed CLI would leave it.
    let task = tokio::spawn({
        let run = run.clone();
        async move { fleet_bulk::start(run, &session()).await }
    });
    let stats_files = |out: &Path| -> BTreeSet<String> {
        std::fs::read_dir(out)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.ends_with("_stats.json"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while stats_files(&out).len() < 2 {
        assert!(std::time::Instant::now() < deadline && !task.is_finished(), "no two shards in time");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    task.abort();
    let _ = task.await;
    let before: BTreeMap<String, (Vec<u8>, std::time::SystemTime)> = stats_files(&out)
        .into_iter()
        .map(|stats| {
            let tar = out.join(stats.replace("_stats.json", ".tar"));
            (stats, (std::fs::read(&tar).unwrap(), std::fs::metadata(&tar).unwrap().modified().unwrap()))
        })
        .collect();
    assert!(before.len() < 5, "the run was dropped before the end");

    // Nothing drives the run now: once its last progress is older than the stall limit, its
    // status says since when instead of a rate and an ETA.
    let location = out.display().to_string();
    let fleet = fleet_core::FleetConfig::default();
    let (record, snapshot) = fleet_bulk::status("local-resume", Some(&location), &fleet).await.unwrap();
    assert_eq!((record.state, snapshot.state), (RunState::Running, RunState::Running));
    let last = snapshot.updated_at.unwrap_or(record.started_at);
    let stalled_at = last + chrono::Duration::seconds(fleet_status::bulk_runs::STALL_AFTER_SECS + 1);
    if let Ok(wait) = (stalled_at - chrono::Utc::now()).to_std() {
        tokio::time::sleep(wait).await;
    }
    let (_, snapshot) = fleet_bulk::status("local-resume", Some(&location), &fleet).await.unwrap();
    assert_eq!(snapshot.stalled_since, Some(last));
    assert_eq!((snapshot.state, snapshot.eta_seconds, snapshot.images_per_second), (RunState::Running, None, 0.0));

    let done = fleet_bulk::resume("local-resume", Some(&out.display().to_string()), &session()).await.unwrap();
    assert_eq!(
        (done.state, done.totals.succeeded, done.totals.failed, done.totals.shards),
        (RunState::Finished, 23, 0, 5)
    );
    for (stats, (bytes, modified)) in &before {
        let tar = out.join(stats.replace("_stats.json", ".tar"));
        assert_eq!(&std::fs::read(&tar).unwrap(), bytes, "{tar:?} rewritten");
        assert_eq!(&std::fs::metadata(&tar).unwrap().modified().unwrap(), modified);
    }

    let shards = read_shards(&out);
    assert_eq!(shards.len(), 5);
    let mut keys = BTreeSet::new();
    for (shard, files) in &shards {
        assert_eq!(files.len() % 3, 0);
        let stem = shard.trim_end_matches(".tar");
        let records = manifest(&out, stem);
        assert_eq!(records.len() * 3, files.len(), "manifest of {shard} lists its samples");
        for (triple, record) in files.chunks(3).zip(&records) {
            assert_eq!(triple[0].0, format!("{}.png", record.key));
            assert_eq!(triple[1], (format!("{}.txt", record.key), record.prompt.clone().into_bytes()));
            let json: SampleRecord = serde_json::from_slice(&triple[2].1).unwrap();
            assert_eq!(&json, record);
            assert_eq!(record.status, SampleState::Succeeded);
            assert_eq!(record.sha256.as_deref(), Some(fleet_storage::sha256_hex(&triple[0].1).as_str()));
            assert!(keys.insert(record.key.clone()), "duplicate key {}", record.key);
        }
    }
    assert_eq!(keys.len(), 23);
    assert!(keys.contains("custom-key") && keys.contains("000000") && keys.contains("000042"));
    assert!(!out.join("_staging").join("00000").exists(), "staging of published shards is removed");

    // The same run again reproduces every image: keys and seeds depend only on the run settings.
    let again_out = dir.path().join("again");
    let again =
        RunConfig { name: "local-again".into(), out: again_out.display().to_string(), layout: Layout::Files, ..run };
    fleet_bulk::start(again, &session()).await.unwrap();
    let metadata = std::fs::read_to_string(again_out.join("00000/metadata.jsonl")).unwrap();
    let first: Value = serde_json::from_str(metadata.lines().next().unwrap()).unwrap();
    assert_eq!(first["file_name"], "000000.png");
    let original = &shards["00000.tar"][0].1;
    assert_eq!(&std::fs::read(again_out.join("00000/000000.png")).unwrap(), original, "same key, same bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_local_run_stops_then_resumes_to_the_end() {
    // Enough work that the run is still going a second in, when it first looks for the marker:
    // 200 samples at 128², 2 steps (≈ 5 s on a 2-core CPU, so a CPU several times faster still
    // leaves a margin; 40 at 64², 1 step, finished in 0.5 s once the engine's kernels got faster).
    const PROMPTS: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let prompts: String = (0..PROMPTS).map(|i| format!("prompt number {i}\n")).collect();
    let input = write(dir.path(), "prompts.txt", &prompts);
    let out = dir.path().join("out");
    let location = out.display().to_string();
    let mut run = local_run("local-cancel", input, &out, 4);
    run.defaults = json!({"model": "tiny", "width": 128, "height": 128, "steps": 2}).as_object().unwrap().clone();
    let task = tokio::spawn(async move { fleet_bulk::start(run, &session()).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !out.join("run.json").exists() {
        assert!(std::time::Instant::now() < deadline && !task.is_finished(), "the run did not start in time");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(fleet_bulk::cancel("local-cancel", Some(&location), &session()).await.unwrap(), 0);
    let stopped = task.await.unwrap().unwrap();
    assert_eq!(stopped.state, RunState::Cancelled);
    let (record, snapshot) =
        fleet_bulk::status("local-cancel", Some(&location), &fleet_core::FleetConfig::default()).await.unwrap();
    assert_eq!((record.state, snapshot.state, snapshot.total), (RunState::Cancelled, RunState::Cancelled, PROMPTS));
    // Nothing is in flight after a cancel: every sample not made waits for a resume.
    assert_eq!((snapshot.queued, snapshot.running, snapshot.stalled_since, snapshot.eta_seconds), (0, 0, None, None));
    assert_eq!(snapshot.waiting(), PROMPTS - snapshot.succeeded - snapshot.failed);

    let done = fleet_bulk::resume("local-cancel", Some(&location), &session()).await.unwrap();
    assert_eq!(
        (done.state, done.totals.succeeded, done.totals.shards),
        (RunState::Finished, PROMPTS, PROMPTS.div_ceil(4))
    );
    assert!(!out.join("_cancelled").exists());
}

/// `--local` runs take LoRAs and ControlNets from the library, with a control image named by a file
/// beside the input (sent inline, as a fleet run would) or an object of an allowed bucket other than
/// `s3.bucket` (read from the test S3 server at `FLEET_TEST_S3_PORT`, the same pixels), and init
/// images likewise; unknown LoRAs and a bucket not in `limits.allowed_image_buckets` fail their
/// samples, naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_runs_take_loras_and_controlnets_from_the_library_and_fail_unknown_ones() {
    let dir = tempfile::tempdir().unwrap();
    let library = dir.path().join("loras");
    std::fs::create_dir(&library).unwrap();
    tiny_lora::write_tiny_lora(&library.join("ink.safetensors"));
    let controlnets = dir.path().join("controlnet");
    let canny = controlnets.join("canny");
    std::fs::create_dir_all(&canny).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fleet-engine/tests/fixtures/extras/tiny-controlnet");
    for file in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(fixture.join(file), canny.join(file)).unwrap();
    }
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([if (x / 8 + y / 8) % 2 == 0 { 255 } else { 0 }; 3]))
        .save(dir.path().join("edges.png"))
        .unwrap();
    // The same control image in a second bucket of the test server, made for this run.
    let mut config = fleet_core::FleetConfig::default();
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    config.s3.endpoint = format!("http://127.0.0.1:{}", var("FLEET_TEST_S3_PORT", "8333"));
    config.s3.access_key_id = var("FLEET_TEST_S3_ACCESS_KEY", "fleet-test-access");
    config.s3.secret_access_key = var("FLEET_TEST_S3_SECRET_KEY", "fleet-test-secret");
    let other = format!("bulk-controls-{}", uuid::Uuid::now_v7().simple());
    let s3 = fleet_storage::S3Store::new(&config.s3, fleet_storage::S3Options::default()).await.unwrap();
    s3.client().create_bucket().bucket(&other).send().await.unwrap();
    let edges = std::fs::read(dir.path().join("edges.png")).unwrap();
    s3.client().put_object().bucket(&other).key("c.png").body(edges.into()).send().await.unwrap();
    let input = write(
        dir.path(),
        "p.jsonl",
        &[
            "{\"prompt\": \"a cat\", \"seed\": 5}\n",
            "{\"prompt\": \"a cat\", \"seed\": 5, \"loras\": [{\"name\": \"ink\", \"scale\": 2.0}]}\n",
            "{\"prompt\": \"a cat\", \"seed\": 5, \"loras\": [{\"name\": \"missing\"}]}\n",
            "{\"prompt\": \"a cat\", \"seed\": 5, \"controlnet\": {\"model\": \"canny\", \"image\": \"edges.png\", \"scale\": 2.0}}\n",
            &format!("{{\"prompt\": \"a cat\", \"seed\": 5, \"controlnet\": {{\"model\": \"canny\", \"image\": \"s3://{other}/c.png\", \"scale\": 2.0}}}}\n"),
            "{\"prompt\": \"a cat\", \"seed\": 5, \"init_image\": \"edges.png\", \"steps\": 2, \"strength\": 0.5}\n",
            "{\"prompt\": \"a cat\", \"seed\": 5, \"steps\": 2}\n",
        ]
        .concat(),
    );
    let out = dir.path().join("out");
    config.library.lora_dir = library;
    config.library.controlnet_dir = controlnets;
    config.limits.allowed_image_buckets = vec![config.s3.bucket.clone(), other.clone()];
    let session = Session { config, api: None, on_progress: None };
    // A bucket not in the list is refused with the rows, before the run starts.
    let elsewhere =
        "{\"prompt\": \"a cat\", \"controlnet\": {\"model\": \"canny\", \"image\": \"s3://elsewhere/c.png\"}}\n";
    let refused = write(dir.path(), "elsewhere.jsonl", elsewhere);
    match fleet_bulk::start(local_run("local-elsewhere", refused, &dir.path().join("refused"), 10), &session).await {
        Err(BulkError::InvalidRows { rows, .. }) => {
            assert_eq!((rows.len(), rows[0].field.as_str()), (1, "controlnet.image"), "{rows:?}");
            assert!(rows[0].message.contains("`elsewhere` is not an allowed"), "{rows:?}");
        }
        Err(e) => panic!("expected the row refused, got {e}"),
        Ok(_) => panic!("expected the row refused, the run started"),
    }
    let done = fleet_bulk::start(local_run("local-lora", input, &out, 10), &session).await.unwrap();
    let rows = manifest(&out, "00000");
    let codes: Vec<_> = rows.iter().map(|r| r.error.as_ref().map(|e| e.code.name())).collect();
    assert_eq!(codes, [None, None, Some("unknown_lora"), None, None, None, None], "{rows:#?}");
    assert_eq!((done.totals.succeeded, done.totals.failed), (6, 1));
    // The files differ in the control image reference they record, not in their pixels.
    let shards = read_shards(&out);
    let pixels = |key: &str| {
        let (_, png) = shards["00000.tar"].iter().find(|(name, _)| *name == format!("{key}.png")).unwrap();
        image::load_from_memory(png).unwrap().to_rgb8().into_raw()
    };
    assert_eq!(pixels(&rows[4].key), pixels(&rows[3].key), "the control image from the second bucket");
    assert_eq!((rows[1].loras.len(), rows[0].seed), (1, rows[1].seed));
    assert_ne!(rows[0].sha256, rows[1].sha256, "same prompt and seed: the LoRA changed the image");
    assert_eq!(rows[3].controlnet.as_ref().map(|c| (c.model.as_str(), c.scale)), Some(("canny", 2.0)));
    assert_ne!(rows[0].sha256, rows[3].sha256, "same prompt and seed: the ControlNet changed the image");
    assert_ne!(rows[6].sha256, rows[5].sha256, "same prompt, seed and steps: the init image changed the image");

    // The library gets the missing LoRA: retry-failed makes that sample and takes the six made
    // ones back from the shard as they were (same record and finish time: not made again).
    tiny_lora::write_tiny_lora(&session.config.library.lora_dir.join("missing.safetensors"));
    let location = out.display().to_string();
    let (retried, reopened) = fleet_bulk::retry_failed("local-lora", Some(&location), &session).await.unwrap();
    assert_eq!((reopened, retried.totals.succeeded, retried.totals.failed), (1, 7, 0));
    let again = manifest(&out, "00000");
    for (before, after) in rows.iter().zip(&again) {
        if before.error.is_none() {
            assert_eq!(after, before, "{}: a made sample was made again", before.key);
        } else {
            assert_eq!((after.status, after.loras.len()), (SampleState::Succeeded, 1), "{}", after.key);
        }
    }
    assert!(!out.join("_staging").exists() || std::fs::read_dir(out.join("_staging/00000")).is_err());
    s3.client().delete_object().bucket(&other).key("c.png").send().await.unwrap();
    s3.client().delete_bucket().bucket(&other).send().await.unwrap();
}
