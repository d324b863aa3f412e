//! Clients that submit numbered jobs at a steady rate and keep retrying each one with its
//! idempotency key until the dispatcher gives a definite answer, as a careful client would
//! through dispatcher restarts and broker or Redis outages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::E2E_KEY;

/// How long one job may take to be accepted (through every outage) before the client gives up.
const SUBMIT_PATIENCE: Duration = Duration::from_secs(300);

/// Job number `i` of run `run`: the tiny model at 64×64, 1 or 2 steps, 1 or 2 images, its number
/// in `metadata.chaos` so every record and object can be traced back to it.
pub fn chaos_job(run: &str, i: usize) -> Value {
    json!({
        "prompt": format!("chaos {i}"), "model": "tiny", "width": 64, "height": 64,
        "steps": 1 + i % 2, "seed": i as u64, "num_images": 1 + usize::from(i.is_multiple_of(5)),
        "priority": if i.is_multiple_of(4) { "bulk" } else { "interactive" },
        "idempotency_key": format!("{run}-{i}"), "metadata": {"chaos": i},
    })
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct Submissions {
    /// Job number → every job id the dispatcher answered 2xx with for it (one, unless the
    /// idempotency key failed to hold).
    pub accepted: BTreeMap<usize, Vec<uuid::Uuid>>,
    /// Job number → the error code of a definite refusal (4xx other than 429).
    pub refused: BTreeMap<usize, String>,
    /// Job numbers the clients gave up on after [`SUBMIT_PATIENCE`].
    pub abandoned: Vec<usize>,
    /// Attempts that got no definite answer and were retried, by reason.
    pub retries: BTreeMap<String, usize>,
    /// Latency of each accepting request.
    pub latencies: Vec<Duration>,
    /// When each job was accepted, from the start of submission.
    pub accepted_at: Vec<Duration>,
}

/// A running submission; [`Submitter::accepted`] counts progress while it runs.
pub struct Submitter {
    done: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Submissions>,
}

impl Submitter {
    /// Submits jobs `0..n` (each built by `job`) from `clients` concurrent clients, at most `rate`
    /// new jobs per second in all.
    pub fn start<F>(base: &str, n: usize, clients: usize, rate: f64, job: F) -> Submitter
    where
        F: Fn(usize) -> Value + Send + Sync + 'static,
    {
        let done = Arc::new(AtomicUsize::new(0));
        let base = base.to_owned();
        let job = Arc::new(job);
        let counter = done.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("HTTP client");
            let next = Arc::new(AtomicUsize::new(0));
            let out = Arc::new(Mutex::new(Submissions::default()));
            let pace = Arc::new(Mutex::new(tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.01)))));
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..clients.max(1) {
                let (http, base, job, next, out, pace, counter) =
                    (http.clone(), base.clone(), job.clone(), next.clone(), out.clone(), pace.clone(), counter.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= n {
                            return;
                        }
                        pace.lock().await.tick().await;
                        submit_one(&http, &base, i, job(i), &out, started).await;
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            std::mem::take(&mut *out.lock().await)
        });
        Submitter { done, task }
    }

    /// Jobs with a final answer so far.
    pub fn answered(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until at least `k` jobs have a final answer (or the submission ended).
    pub async fn until_answered(&self, k: usize) {
        while self.answered() < k && !self.task.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    pub async fn finish(self) -> Submissions {
        self.task.await.expect("submission task")
    }
}

/// One job until a definite answer: 2xx (accepted), 4xx other than 429 (refused), or patience
/// runs out. Connection errors, 429 and 5xx are retried with the same body and idempotency key.
async fn submit_one(http: &reqwest::Client, base: &str, i: usize, job: Value, out: &Mutex<Submissions>, t0: Instant) {
    let first = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let sent = Instant::now();
        let reply = http.post(format!("{base}/v1/jobs")).bearer_auth(E2E_KEY).json(&job).send().await;
        let reason = match reply {
            Ok(resp) if resp.status().is_success() => {
                let latency = sent.elapsed();
                let body: Value = resp.json().await.unwrap_or_default();
                let mut out = out.lock().await;
                match body["id"].as_str().and_then(|id| uuid::Uuid::parse_str(id).ok()) {
                    Some(id) => {
                        out.accepted.entry(i).or_default().push(id);
                        out.latencies.push(latency);
                        out.accepted_at.push(t0.elapsed());
                    }
                    None => {
                        out.refused.insert(i, format!("2xx without an id: {body}"));
                    }
                }
                return;
            }
            Ok(resp) if resp.status().is_client_error() && resp.status().as_u16() != 429 => {
                let code = resp.status();
                let body: Value = resp.json().await.unwrap_or_default();
                let name = body["error"]["code"].as_str().or(body["code"].as_str()).unwrap_or("?").to_owned();
                out.lock().await.refused.insert(i, format!("{code} {name}"));
                return;
            }
            Ok(resp) => {
                // The code and the message's first words tell a queue refusal from a lost node.
                let code = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap_or_default();
                let words: Vec<&str> = body["error"]["message"].as_str().unwrap_or("").split(' ').take(3).collect();
                format!("HTTP {code} {} ({} …)", body["error"]["code"].as_str().unwrap_or("?"), words.join(" "))
            }
            Err(e) if e.is_connect() => "connection refused".to_owned(),
            Err(e) if e.is_timeout() => "timeout".to_owned(),
            Err(_) => "connection lost".to_owned(),
        };
        let mut guard = out.lock().await;
        *guard.retries.entry(reason).or_default() += 1;
        if first.elapsed() > SUBMIT_PATIENCE {
            guard.abandoned.push(i);
            return;
        }
        drop(guard);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
