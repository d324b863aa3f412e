//! Bulk-run records through `BulkRunStore`: what `fleet bulk` writes reads back, as records and as
//! the API's view, under the keys and TTLs of the crate README's table.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use fleet_status::bulk_runs::{
    BulkRunStore, InputFormat, InputSummary, Layout, RUN_TTL_SECS, RunConfig, RunRecord, RunState, Snapshot, Totals,
};
use serde_json::json;
use uuid::Uuid;

use super::{Fixture, config};

fn record(name: &str) -> RunRecord {
    RunRecord {
        config: RunConfig {
            name: name.to_owned(),
            input: "/data/prompts.jsonl".into(),
            input_format: InputFormat::Jsonl,
            out: "s3://bucket/cats".to_owned(),
            layout: Layout::WebDataset,
            shard_size: 2,
            seeds_per_prompt: 1,
            seed: 3,
            defaults: json!({"model": "tiny", "steps": 1}).as_object().unwrap().clone(),
            max_in_flight: 10,
            skip_invalid: false,
            local: false,
            samples: None,
            dedup_hamming: None,
            keep_jobs: false,
        },
        input: InputSummary { sha256: "ab".repeat(32), rows: 5, invalid_rows: 0, samples: 5, shards: 3 },
        state: RunState::Running,
        started_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
        finished_at: None,
        totals: Totals::default(),
        fleet_version: "0.0.0-test".to_owned(),
    }
}

fn snapshot() -> Snapshot {
    Snapshot {
        state: RunState::Running,
        total: 5,
        succeeded: 2,
        failed: 1,
        duplicates: 0,
        failed_by_code: BTreeMap::from([("unknown_lora".to_owned(), 1)]),
        queued: 1,
        running: 0,
        shards_done: 1,
        shards_total: 3,
        images_per_second: 1.5,
        eta_seconds: Some(2.0),
        updated_at: Some(Utc.with_ymd_and_hms(2026, 1, 2, 3, 5, 0).unwrap()),
        stalled_since: None,
    }
}

#[tokio::test]
async fn bulk_run_records_round_trip_under_their_keys() {
    let cfg = config();
    let mut fx = Fixture::with(cfg.clone()).await;
    let store = BulkRunStore::connect(&cfg).await.unwrap();
    let run = record("cats-v1");
    assert_eq!(store.load_run("cats-v1").await.unwrap(), None);
    assert_eq!(store.get("cats-v1").await.unwrap(), None);

    store.save_run(&run).await.unwrap();
    store.save_progress("cats-v1", &snapshot()).await.unwrap();
    assert_eq!(store.load_run("cats-v1").await.unwrap(), Some(run.clone()));
    assert_eq!(store.load_progress("cats-v1").await.unwrap(), Some(snapshot()));

    // The layout other readers (and older `fleet` versions) rely on: the hash's two JSON fields,
    // the index entry, and the 30-day TTLs.
    let (stored_run, stored_progress): (String, String) = redis::cmd("HMGET")
        .arg(fx.key("bulk:cats-v1"))
        .arg("run")
        .arg("progress")
        .query_async(&mut fx.raw)
        .await
        .unwrap();
    assert_eq!(stored_run, serde_json::to_string(&run).unwrap());
    assert_eq!(stored_progress, serde_json::to_string(&snapshot()).unwrap());
    let indexed: Vec<String> =
        redis::cmd("ZRANGE").arg(fx.key("bulk_runs")).arg(0).arg(-1).query_async(&mut fx.raw).await.unwrap();
    assert_eq!(indexed, ["cats-v1"]);
    for key in ["bulk:cats-v1", "bulk_runs"] {
        let ttl = fx.ttl(key).await;
        assert!(ttl > RUN_TTL_SECS - 60 && ttl <= RUN_TTL_SECS, "{key}: {ttl}");
    }

    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    store.add_jobs("cats-v1", &[a, b]).await.unwrap();
    store.add_jobs("cats-v1", &[]).await.unwrap();
    let mut jobs = store.jobs("cats-v1").await.unwrap();
    jobs.sort();
    assert_eq!(jobs, [a, b]);
    assert!(fx.ttl("bulk:cats-v1:jobs").await > RUN_TTL_SECS - 60);
    store.remove_jobs("cats-v1", &[a]).await.unwrap();
    assert_eq!(store.jobs("cats-v1").await.unwrap(), [b]);

    // The API's view: the record's plan and end state win over the snapshot.
    let served = store.get("cats-v1").await.unwrap().unwrap();
    assert_eq!((served.name.as_str(), served.state, served.unfinished_jobs), ("cats-v1", RunState::Running, Some(1)));
    assert_eq!((served.progress.total, served.progress.waiting, served.progress.shards_total), (5, 1, 3));
    assert_eq!(served.config, run.config);
    // Its progress is long past: nothing drives the run, so it is stalled, with no rate or ETA;
    // the job it had queued is still counted, as the job set counts it.
    assert_eq!(served.progress.stalled_since, snapshot().updated_at);
    assert_eq!((served.progress.images_per_second, served.progress.eta_seconds), (0.0, None));
    assert_eq!(served.progress.queued + served.progress.running, served.unfinished_jobs.unwrap());
    let json = serde_json::to_value(&served).unwrap();
    assert_eq!(json["progress"]["stalled_since"], json!("2026-01-02T03:05:00Z"));
    // Fresh progress is not stalled.
    let fresh = Snapshot { updated_at: Some(Utc::now()), ..snapshot() };
    store.save_progress("cats-v1", &fresh).await.unwrap();
    let served = store.get("cats-v1").await.unwrap().unwrap();
    assert_eq!((served.progress.stalled_since, served.progress.eta_seconds), (None, Some(2.0)));
    let ended = RunRecord {
        state: RunState::Cancelled,
        finished_at: Some(Utc::now()),
        input: InputSummary { samples: 7, shards: 4, ..run.input.clone() },
        ..run.clone()
    };
    store.save_run(&ended).await.unwrap();
    let listed = store.list(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    // A cancelled run has nothing in flight: what was queued is waiting again (for a resume).
    let p = &listed[0].progress;
    assert_eq!((p.state, p.total, p.queued, p.running, p.waiting), (RunState::Cancelled, 7, 0, 0, 4));
    assert_eq!((p.stalled_since, p.eta_seconds, p.images_per_second), (None, None, 0.0));
    assert_eq!(listed[0].unfinished_jobs, None, "lists leave the job count out");
    fx.cleanup().await;
}

#[tokio::test]
async fn bulk_runs_list_newest_first_and_skip_expired_and_unreadable_records() {
    let cfg = config();
    let mut fx = Fixture::with(cfg.clone()).await;
    let store = BulkRunStore::connect(&cfg).await.unwrap();
    assert!(store.list(10).await.unwrap().is_empty());
    for name in ["first", "second", "third"] {
        store.save_run(&record(name)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let names = |runs: Vec<fleet_status::bulk_runs::BulkRun>| runs.into_iter().map(|r| r.name).collect::<Vec<_>>();
    assert_eq!(names(store.list(10).await.unwrap()), ["third", "second", "first"]);
    assert_eq!(names(store.list(2).await.unwrap()), ["third", "second"]);

    // A run whose keys expired stays in the index until trimmed, and is left out.
    let _: () = redis::cmd("DEL").arg(fx.key("bulk:second")).query_async(&mut fx.raw).await.unwrap();
    assert_eq!(names(store.list(10).await.unwrap()), ["third", "first"]);
    assert_eq!(store.get("second").await.unwrap(), None);

    // A record this crate did not write is an error that names the run and the field.
    let _: () =
        redis::cmd("HSET").arg(fx.key("bulk:first")).arg("progress").arg("[1]").query_async(&mut fx.raw).await.unwrap();
    let err = store.load_progress("first").await.unwrap_err();
    assert_eq!(err.code(), fleet_core::ErrorCode::Internal);
    assert!(err.to_string().starts_with("bulk run `first`: its progress in Redis is not readable"), "{err}");
    assert!(store.list(10).await.is_err());
    fx.cleanup().await;
}
