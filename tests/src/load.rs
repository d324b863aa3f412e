//! The load run: a steady submission rate against a dispatcher process for a bounded time and
//! job count, with worker processes running, all on loopback. It reports accepted jobs per second,
//! accept latency, queue depth over time and the memory of every process at start and end.
//! A program that prints numbers: nothing here asserts a speed.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::E2E_KEY;
use crate::chaos::submit::{Submitter, chaos_job};
use crate::chaos::{ChaosFleet, Services};
use crate::process::rss_kib;

/// Bounds of a load run.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    /// Jobs per second the clients submit.
    pub rate: f64,
    /// Submission stops after this long …
    pub duration: Duration,
    /// … or after this many jobs.
    pub max_jobs: usize,
    pub workers: usize,
    /// Concurrent HTTP clients.
    pub clients: usize,
    /// Seconds between queue-depth samples.
    pub sample_every: Duration,
}

impl LoadSpec {
    /// `FLEET_LOAD_RATE` (jobs/s, 20), `FLEET_LOAD_SECS` (180), `FLEET_LOAD_MAX_JOBS` (10000),
    /// `FLEET_LOAD_WORKERS` (2), `FLEET_LOAD_CLIENTS` (8), `FLEET_LOAD_SAMPLE_SECS` (10).
    pub fn from_env() -> LoadSpec {
        fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
            std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
        }
        LoadSpec {
            rate: env("FLEET_LOAD_RATE", 20.0),
            duration: Duration::from_secs(env("FLEET_LOAD_SECS", 180)),
            max_jobs: env("FLEET_LOAD_MAX_JOBS", 10_000),
            workers: env("FLEET_LOAD_WORKERS", 2),
            clients: env("FLEET_LOAD_CLIENTS", 8),
            sample_every: Duration::from_secs(env("FLEET_LOAD_SAMPLE_SECS", 10)),
        }
    }
}

/// What a load run measured.
#[derive(Debug)]
pub struct LoadReport {
    pub spec: LoadSpec,
    pub accepted: usize,
    pub refused: usize,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// (seconds since start, ready messages in the job queues, jobs finished so far, RSS in KiB
    /// of each process of [`Self::memory`], in that order).
    pub depth: Vec<(f64, u64, u64, Vec<u64>)>,
    /// (process, RSS KiB at start, RSS KiB at end).
    pub memory: Vec<(String, u64, u64)>,
}

/// Every process of the run with its pid: the fleet's and the private services'.
fn processes(fleet: &ChaosFleet, services: &Services) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    if let Some(d) = &fleet.dispatcher {
        out.push(("fleet dispatcher".to_owned(), d.pid()));
    }
    for w in &fleet.workers {
        out.push((format!("fleet worker {}", w.name), w.pid()));
    }
    out.extend(services.redis.pid().map(|p| ("redis-server".to_owned(), p)));
    out.extend(services.rabbit.beam_pid().map(|p| ("rabbitmq (beam.smp)".to_owned(), p)));
    out
}

/// Ready messages in the job queues and finished jobs, from the admin API.
async fn sample(http: &reqwest::Client, base: &str) -> Option<(u64, u64)> {
    let body: serde_json::Value =
        http.get(format!("{base}/v1/queues")).bearer_auth(E2E_KEY).send().await.ok()?.json().await.ok()?;
    let depth = body["queues"]
        .as_array()?
        .iter()
        .filter(|q| !q["name"].as_str().unwrap_or_default().ends_with(".dead"))
        .filter_map(|q| q["messages"].as_u64())
        .sum();
    let finished = body["counters"]
        .as_object()?
        .values()
        .map(|c| ["succeeded", "failed", "cancelled"].iter().filter_map(|k| c[*k].as_u64()).sum::<u64>())
        .sum();
    Some((depth, finished))
}

/// Runs the load and returns its numbers.
pub async fn run(spec: LoadSpec) -> LoadReport {
    let services = tokio::task::block_in_place(Services::start);
    let mut fleet = ChaosFleet::start(&services, spec.workers, "load").await;
    tokio::time::sleep(Duration::from_secs(2)).await; // let the workers load their model
    let before: Vec<(String, u32, u64)> =
        processes(&fleet, &services).into_iter().map(|(n, p)| (n, p, rss_kib(p).unwrap_or(0))).collect();
    let rss_now = || before.iter().map(|(_, pid, _)| rss_kib(*pid).unwrap_or(0)).collect::<Vec<u64>>();
    let jobs = spec.max_jobs.min((spec.rate * spec.duration.as_secs_f64()).ceil() as usize);
    let tag = crate::unique("load");
    let started = Instant::now();
    let submitter = Submitter::start(&fleet.base, jobs, spec.clients, spec.rate, move |i| chaos_job(&tag, i));
    let http = reqwest::Client::new();
    let mut depth = Vec::new();
    while !submitter.is_finished() {
        if let Some((d, f)) = sample(&http, &fleet.base).await {
            depth.push((started.elapsed().as_secs_f64(), d, f, rss_now()));
        }
        let next = Instant::now() + spec.sample_every;
        while Instant::now() < next && !submitter.is_finished() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let submissions = submitter.finish().await;
    let elapsed = submissions.accepted_at.iter().max().copied().unwrap_or_default();
    if let Some((d, f)) = sample(&http, &fleet.base).await {
        depth.push((started.elapsed().as_secs_f64(), d, f, rss_now()));
    }
    let memory = before.into_iter().map(|(name, pid, start)| (name, start, rss_kib(pid).unwrap_or(0))).collect();
    let mut latencies = submissions.latencies.clone();
    latencies.sort_unstable();
    let at = |p: f64| latencies.get(((latencies.len().max(1) - 1) as f64 * p).round() as usize).copied();
    let report = LoadReport {
        spec,
        accepted: submissions.accepted.len(),
        refused: submissions.refused.len() + submissions.abandoned.len(),
        elapsed,
        p50: at(0.5).unwrap_or_default(),
        p99: at(0.99).unwrap_or_default(),
        max: latencies.last().copied().unwrap_or_default(),
        depth,
        memory,
    };
    fleet.stop();
    remove_images(&fleet.s3_direct).await;
    fleet.clean_up();
    report
}

/// Removes the run's images from the test bucket (its own prefix).
async fn remove_images(s3: &fleet_core::config::S3Config) {
    let Ok(store) = fleet_storage::ImageStore::from_config(s3).await else { return };
    for key in store.list(&format!("{}/", s3.prefix)).await.unwrap_or_default() {
        let _ = store.delete(&key).await;
    }
}

impl LoadReport {
    /// Accepted jobs per second over the submission.
    pub fn accepted_per_sec(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "load: {} jobs/s asked for {:.0} s (≤ {} jobs), {} workers, {} clients\n",
            self.spec.rate,
            self.spec.duration.as_secs_f64(),
            self.spec.max_jobs,
            self.spec.workers,
            self.spec.clients
        );
        let _ = writeln!(s, "| accepted | refused | accepted/s | p50 accept | p99 accept | max accept |");
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} ms | {:.1} ms | {:.1} ms |\n",
            self.accepted,
            self.refused,
            self.accepted_per_sec(),
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        );
        let names: Vec<&str> = self.memory.iter().map(|(n, _, _)| n.as_str()).collect();
        let _ = writeln!(s, "| t (s) | queue depth | jobs finished | RSS MiB: {} |", names.join(" / "));
        let _ = writeln!(s, "|---:|---:|---:|---|");
        for (t, d, f, rss) in &self.depth {
            let mib: Vec<String> = rss.iter().map(|k| format!("{:.1}", *k as f64 / 1024.0)).collect();
            let _ = writeln!(s, "| {t:.0} | {d} | {f} | {} |", mib.join(" / "));
        }
        let _ = writeln!(s, "\n| process | RSS at start | RSS at end |\n|---|---:|---:|");
        for (name, start, end) in &self.memory {
            let _ = writeln!(s, "| {name} | {:.1} MiB | {:.1} MiB |", *start as f64 / 1024.0, *end as f64 / 1024.0);
        }
        s
    }
}
