//! `fleet bulk` through the real fleet: 1,000 prompts into WebDataset shards, the run dropped
//! mid-way and resumed, and `--local` giving the same pixels for the same keys.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use fleet_bulk::api::ApiClient;
use fleet_bulk::record::{SampleRecord, SampleState};
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
/// equals the manifest row. Returns key → (record, image bytes).
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
    let store = fleet_storage::ImageStore::from_config(&config.s3).await.unwrap();
    let images = store.list(&format!("{}/e2e/", config.s3.prefix)).await.unwrap();
    assert_eq!(images.len(), n, "exactly one job (one image) per sample");
    let jobs: BTreeSet<_> = dataset.values().filter_map(|(r, _)| r.job_id).collect();
    assert_eq!(jobs.len(), n);

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
