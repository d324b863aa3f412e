//! Prompt programs (`--template`, `template` rows, `--samples`) and near-duplicate control
//! (`--dedup-hamming`), through `--local` runs with the tiny model.

use std::path::Path;

use fleet_bulk::input::read_rows;
use fleet_bulk::plan::ShardPlan;
use fleet_bulk::record::{SampleState, ShardStats};
use fleet_bulk::sample::{SampleFactory, SampleSettings};
use fleet_bulk::{InputFormat, RunConfig, RunState};

use super::{local_run, manifest, read_shards, session, tiny_defaults, write};

/// (key, prompt, seed) of every sample `path` gives with `--samples samples` and run seed `seed`.
fn plan(path: &Path, format: InputFormat, samples: Option<u64>, seed: u64) -> Vec<(String, String, u64)> {
    let settings = SampleSettings {
        run: "plan".into(),
        seed,
        seeds_per_prompt: 1,
        defaults: tiny_defaults(),
        plan: ShardPlan { shard_size: 100 },
        models: None,
        samples,
        list_dir: path.parent().unwrap().to_path_buf(),
    };
    let mut factory = SampleFactory::new(settings, fleet_core::FleetConfig::default());
    let mut out = Vec::new();
    for row in read_rows(path, format).unwrap() {
        for sample in factory.samples(row) {
            let job = sample.job.unwrap();
            out.push((sample.key, job.prompt, job.seed.unwrap()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_run_makes_every_expansion_with_keys_from_the_expansion() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "animals.txt", "# one per line\ncat\n\n3::dog\n");
    let template = write(dir.path(), "prompts.tmpl", "# a comment\na {red|blue} {__animals__}\nplain {x|x}\n");
    let out = dir.path().join("out");
    let mut run = local_run("template-run", template.clone(), &out, 4);
    run.input_format = InputFormat::Template;

    // What --dry-run shows: counts, exact duplicate prompts, the first expansions.
    let scan = fleet_bulk::check_input(&run, &fleet_core::FleetConfig::default()).unwrap();
    assert_eq!((scan.summary.rows, scan.summary.samples, scan.summary.shards), (2, 6, 2));
    assert_eq!(scan.duplicate_prompts, 1, "`plain x` twice");
    assert_eq!(scan.preview, ["a red cat", "a red dog", "a blue cat", "a blue dog", "plain x"]);
    assert!(!out.exists(), "a scan writes nothing");

    let done = fleet_bulk::start(run.clone(), &session()).await.unwrap();
    assert_eq!((done.state, done.totals.succeeded, done.totals.shards), (RunState::Finished, 6, 2));
    let rows: Vec<_> = ["00000", "00001"].iter().flat_map(|s| manifest(&out, s)).collect();
    let prompts: Vec<&str> = rows.iter().map(|r| r.prompt.as_str()).collect();
    assert_eq!(prompts, ["a red cat", "a red dog", "a blue cat", "a blue dog", "plain x", "plain x"]);
    let keys: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys.len(), 6, "repeats of an expansion get keys of their own");
    assert!(rows.iter().all(|r| r.key.len() == 17 && r.key.starts_with('t')), "{keys:?}");
    assert!(rows.iter().all(|r| r.phash.as_deref().is_some_and(|h| h.len() == 16)), "every sample has a phash");
    // Keys and seeds are what the plan says, so a rerun or a resume lines up with them.
    let planned = plan(&template, InputFormat::Template, None, run.seed);
    let made: Vec<_> = rows.iter().map(|r| (r.key.clone(), r.prompt.clone(), r.seed.unwrap())).collect();
    assert_eq!(made, planned);

    // A JSONL row's `template` is expanded the same way, beside plain rows, with its own key.
    let jsonl = write(
        dir.path(),
        "rows.jsonl",
        "{\"prompt\": \"plain\"}\n{\"template\": \"{__animals__} {1|2}\", \"key\": \"zoo\", \"steps\": 2}\n",
    );
    let rows = plan(&jsonl, InputFormat::Jsonl, None, 7);
    assert_eq!(rows.len(), 5);
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str()), ("0000000", "plain"));
    assert!(rows[1..].iter().all(|(key, _, _)| key.starts_with("zoo_") && key.len() == 16), "{rows:?}");
    assert_eq!(rows[4].1, "dog 2");
}

#[test]
fn drawn_prompts_repeat_with_the_seed_and_bad_templates_name_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "styles.txt", "oil\nink\nwatercolour\n9::photo\n");
    let template = write(dir.path(), "p.tmpl", "a {cat|dog|fox|owl} in {__styles__}, {day|night}\nsecond {a|b}\n");
    let first = plan(&template, InputFormat::Template, Some(50), 1);
    assert_eq!(first.len(), 100, "--samples N per program");
    assert_eq!(first, plan(&template, InputFormat::Template, Some(50), 1), "same seed, same prompts in the same order");
    assert_ne!(first, plan(&template, InputFormat::Template, Some(50), 2));
    let photos = first[..50].iter().filter(|(_, p, _)| p.contains("photo")).count();
    assert!(photos > 25, "the weight-9 option is drawn most: {photos} of 50");
    let keys: std::collections::BTreeSet<_> = first.iter().map(|(k, _, _)| k).collect();
    assert_eq!(keys.len(), 100, "repeated draws get keys of their own");
    // A drawn expansion has the key the full product gives it.
    let product = plan(&template, InputFormat::Template, None, 1);
    assert_eq!(product.len(), 4 * 4 * 2 + 2);
    assert!(product.contains(&first[0]), "{:?}", first[0]);

    let bad = write(dir.path(), "bad.tmpl", "fine {a|b}\n\nbroken {a|b\n{x||y}\n{__nowhere__}\n{0::a|b}\n");
    let mut run = local_run("bad-template", bad, &dir.path().join("out"), 10);
    run.input_format = InputFormat::Template;
    let scan = fleet_bulk::check_input(&run, &fleet_core::FleetConfig::default()).unwrap();
    let found: Vec<_> = scan.errors.iter().map(|e| (e.line, e.field.as_str(), e.message.as_str())).collect();
    assert_eq!(found.len(), 4, "{found:?}");
    assert_eq!((found[0].0, found[0].1), (3, "template"));
    assert!(found[0].2.starts_with("column 8: unclosed"), "{found:?}");
    assert!(found[1].2.starts_with("column 4: empty option"), "{found:?}");
    assert!(found[2].2.contains("nowhere.txt"), "{found:?}");
    assert!(found[3].2.starts_with("column 2: bad weight"), "{found:?}");
    let zero = RunConfig { samples: Some(0), ..run.clone() };
    assert!(fleet_bulk::check_input(&zero, &fleet_core::FleetConfig::default()).is_err());
    let wide = RunConfig { dedup_hamming: Some(40), ..run };
    assert!(
        fleet_bulk::check_input(&wide, &fleet_core::FleetConfig::default()).unwrap_err().to_string().contains("24")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_duplicates_are_listed_not_written_and_a_resume_decides_alike() {
    let dir = tempfile::tempdir().unwrap();
    // Rows 1 and 3 are the same prompt and seed: the same image, 0 bits apart, in two shards.
    let input = write(
        dir.path(),
        "p.jsonl",
        concat!(
            "{\"prompt\": \"a red cube\", \"seed\": 5}\n",
            "{\"prompt\": \"a blue sphere\", \"seed\": 91}\n",
            "{\"prompt\": \"a red cube\", \"seed\": 5}\n",
            "{\"prompt\": \"a green cone\", \"seed\": 1234}\n",
            "{\"prompt\": \"a red cube\", \"seed\": 5}\n",
        ),
    );
    let out = dir.path().join("out");
    let run = RunConfig { dedup_hamming: Some(0), ..local_run("dedup", input, &out, 2) };
    let done = fleet_bulk::start(run, &session()).await.unwrap();
    assert_eq!(
        (done.state, done.totals.succeeded, done.totals.failed, done.totals.duplicates),
        (RunState::Finished, 3, 0, 2)
    );
    let stats = |shard: &str| -> ShardStats {
        serde_json::from_slice(&std::fs::read(out.join(format!("{shard}_stats.json"))).unwrap()).unwrap()
    };
    let second = stats("00001");
    assert_eq!((second.count, second.succeeded, second.duplicate), (2, 1, 1));
    assert_eq!(
        (second.duplicates[0].key.as_str(), second.duplicates[0].duplicate_of.as_str(), second.duplicates[0].distance),
        ("000010", "000000", 0)
    );
    let rows = manifest(&out, "00001");
    assert_eq!((rows[0].status, rows[0].duplicate_of.as_deref()), (SampleState::Duplicate, Some("000000")));
    assert_eq!(rows[0].phash, manifest(&out, "00000")[0].phash);
    let shards = read_shards(&out);
    let names: Vec<&str> = shards["00001.tar"].iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["000011.png", "000011.txt", "000011.json"], "a duplicate's image is not in the shard");
    let json: serde_json::Value = serde_json::from_slice(&shards["00001.tar"][2].1).unwrap();
    assert_eq!(json["phash"], serde_json::Value::from(rows[1].phash.clone()), "KEY.json carries the phash");
    assert_eq!(stats("00002").duplicates[0].duplicate_of, "000000", "the earliest kept sample is named");

    // Shards 1 and 2 are lost; the resume rebuilds the index from shard 0's manifest.
    let before: Vec<_> = ["00001", "00002"].iter().flat_map(|s| manifest(&out, s)).collect();
    for shard in ["00001", "00002"] {
        std::fs::remove_file(out.join(format!("{shard}_stats.json"))).unwrap();
        std::fs::remove_file(out.join(format!("{shard}.tar"))).unwrap();
    }
    let again = fleet_bulk::resume("dedup", Some(&out.display().to_string()), &session()).await.unwrap();
    assert_eq!((again.totals.succeeded, again.totals.duplicates), (3, 2));
    let after: Vec<_> = ["00001", "00002"].iter().flat_map(|s| manifest(&out, s)).collect();
    let decisions = |rows: &[fleet_bulk::record::SampleRecord]| -> Vec<_> {
        rows.iter().map(|r| (r.key.clone(), r.status, r.duplicate_of.clone(), r.phash.clone())).collect()
    };
    assert_eq!(decisions(&after), decisions(&before));
}
