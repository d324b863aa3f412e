//! The faults and the scenarios built from them: each scenario runs a fresh fleet, submits `n`
//! jobs at a steady rate, injects its fault while they run, waits for every accepted job to be
//! final and audits the result.

use std::time::{Duration, Instant};

use super::audit::{Row, audit, wait_final};
use super::fleet::{AMQP_HEARTBEAT_SECS, ChaosFleet, Services};
use super::submit::{Submitter, chaos_job};

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL of a worker mid-batch; a fresh worker replaces it.
    KillWorker,
    /// The RabbitMQ node stopped and started again (its quorum queues on disk).
    RestartRabbit,
    /// Redis stopped and started again (append-only file on).
    RestartRedis,
    /// The network to S3 cut for a while.
    CutS3,
    /// SIGKILL of the dispatcher, started again a second later; clients keep retrying.
    KillDispatcher,
    /// SIGSTOP of a worker mid-batch for longer than the AMQP heartbeat, then SIGCONT.
    StallWorker,
    /// SIGKILL of the Redis primary mid-batch; Sentinel promotes the replica (only with
    /// [`Services::with_sentinel`], so not among [`FAULTS`]; see `sentinel.rs`).
    KillRedisPrimary,
}

pub const FAULTS: [Fault; 6] = [
    Fault::KillWorker,
    Fault::RestartRabbit,
    Fault::RestartRedis,
    Fault::CutS3,
    Fault::KillDispatcher,
    Fault::StallWorker,
];

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillWorker => "1 worker SIGKILL mid-batch",
            Fault::RestartRabbit => "2 RabbitMQ restart",
            Fault::RestartRedis => "3 Redis restart",
            Fault::CutS3 => "4 S3 unavailable",
            Fault::KillDispatcher => "5 dispatcher SIGKILL + restart",
            Fault::StallWorker => "6 worker SIGSTOP > heartbeat",
            Fault::KillRedisPrimary => "Redis primary SIGKILL (Sentinel failover)",
        }
    }

    /// How often the scenario of this fault injects it.
    fn repeats(self, n: usize) -> usize {
        match self {
            Fault::KillWorker => (n / 50).clamp(3, 10),
            Fault::KillDispatcher => (n / 100).clamp(2, 5),
            Fault::StallWorker => 2,
            Fault::KillRedisPrimary => (n / 100).clamp(1, 5),
            _ => 1,
        }
    }

    /// Injects the fault once.
    async fn inject(self, fleet: &mut ChaosFleet, services: &mut Services) {
        match self {
            Fault::KillWorker => {
                let i = fleet.victim(Duration::from_secs(10)).await;
                let mut victim = fleet.workers.remove(i);
                victim.kill();
                fleet.add_worker();
            }
            Fault::RestartRabbit => {
                tokio::task::block_in_place(|| services.rabbit.restart(Duration::from_secs(3)));
            }
            Fault::RestartRedis => {
                let _ = fleet.victim(Duration::from_secs(10)).await;
                tokio::task::block_in_place(|| services.redis.restart(Duration::from_secs(2)));
            }
            Fault::CutS3 => {
                let _ = fleet.victim(Duration::from_secs(10)).await;
                fleet.s3_link.cut();
                tokio::time::sleep(Duration::from_secs(6)).await;
                fleet.s3_link.restore();
            }
            Fault::KillDispatcher => {
                fleet.kill_dispatcher();
                tokio::time::sleep(Duration::from_secs(1)).await;
                fleet.start_dispatcher().await;
            }
            Fault::StallWorker => {
                let i = fleet.victim(Duration::from_secs(10)).await;
                fleet.workers[i].signal("STOP");
                // The broker gives up on a connection after two missed heartbeats.
                tokio::time::sleep(Duration::from_secs(AMQP_HEARTBEAT_SECS * 4 + 2)).await;
                fleet.workers[i].signal("CONT");
            }
            Fault::KillRedisPrimary => super::sentinel::kill_primary(fleet, services).await,
        }
    }
}

/// A scenario: one fault repeated, or a random mix.
#[derive(Debug, Clone, Copy)]
pub enum Scenario {
    One(Fault),
    /// `faults` faults drawn at random (with this seed) from all six.
    Mixed {
        seed: u64,
        faults: usize,
    },
}

impl Scenario {
    pub fn name(&self) -> String {
        match self {
            Scenario::One(f) => f.name().to_owned(),
            Scenario::Mixed { seed, faults } => format!("7 mixed ({faults} faults, seed {seed})"),
        }
    }

    fn faults(&self, n: usize) -> Vec<Fault> {
        match *self {
            Scenario::One(f) => vec![f; f.repeats(n)],
            Scenario::Mixed { seed, faults } => {
                let mut state = seed | 1;
                (0..faults)
                    .map(|_| {
                        // xorshift64: reproducible from the printed seed.
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        FAULTS[(state % FAULTS.len() as u64) as usize]
                    })
                    .collect()
            }
        }
    }
}

/// Sizes of a run.
#[derive(Debug, Clone, Copy)]
pub struct RunSize {
    /// Jobs per scenario.
    pub jobs: usize,
    /// New jobs per second the clients submit.
    pub rate: f64,
    /// Worker processes.
    pub workers: usize,
    /// How long every accepted job has to become final after the last fault.
    pub drain_limit: Duration,
}

/// Runs one scenario on a fresh fleet and audits it.
pub async fn run(scenario: Scenario, services: &mut Services, size: RunSize) -> Row {
    let name = scenario.name();
    let mut fleet = ChaosFleet::start(services, size.workers, &name.replace(' ', "_")).await;
    let submitter = submit(&fleet, size);
    let faults = scenario.faults(size.jobs);
    let count = faults.len();
    for (k, fault) in faults.into_iter().enumerate() {
        before_fault(&submitter, &name, k, count, size, fault.name()).await;
        fault.inject(&mut fleet, services).await;
    }
    settle(&name, fleet, submitter, size).await
}

/// Starts the scenario's clients: `size.jobs` jobs at `size.rate` from four clients.
pub fn submit(fleet: &ChaosFleet, size: RunSize) -> Submitter {
    let tag = crate::unique("chaos");
    Submitter::start(&fleet.base, size.jobs, 4, size.rate, move |i| chaos_job(&tag, i))
}

/// Waits until fault `k` of `count` is due (the faults are spread over the submission, each while
/// work is in flight) and says which it is.
pub async fn before_fault(submitter: &Submitter, name: &str, k: usize, count: usize, size: RunSize, fault: &str) {
    submitter.until_answered((k + 1) * size.jobs / (count + 1)).await;
    eprintln!("[{name}] fault {}/{count}: {fault}", k + 1);
}

/// After the last fault: waits until every accepted job is final, audits, checks that every
/// worker consumes again and none exited, stops the fleet.
pub async fn settle(name: &str, mut fleet: ChaosFleet, submitter: Submitter, size: RunSize) -> Row {
    let faults_end = Instant::now();
    let submissions = submitter.finish().await;
    let ids: Vec<uuid::Uuid> = submissions.accepted.values().filter_map(|v| v.first().copied()).collect();
    let done = wait_final(&fleet.status, &ids, size.drain_limit).await;
    let mut row =
        audit(name, &submissions, &fleet.status, &fleet.s3_direct, done.saturating_duration_since(faults_end), true)
            .await;
    if let Err(e) = fleet.until_every_worker_consumes(Duration::from_secs(30)).await {
        row.problems.push(e);
    }
    for gone in fleet.exited_workers() {
        row.problems.push(format!("worker {gone} exited by itself (it should reconnect)"));
    }
    for (n, code) in &submissions.refused {
        row.problems.push(format!("job {n} refused at submission: {code}"));
    }
    for n in &submissions.abandoned {
        row.problems.push(format!("job {n}: no answer from the dispatcher within the clients' patience"));
    }
    eprintln!("[{name}] retried submissions: {:?}; redone deliveries: {}", submissions.retries, row.extra_attempts);
    fleet.stop();
    if !row.problems.is_empty() {
        eprintln!("[{name}] problems (logs in {}):\n  {}", fleet.log_dir().display(), row.problems.join("\n  "));
    } else if std::env::var_os("FLEET_CHAOS_KEEP_LOGS").is_some() {
        eprintln!("[{name}] logs in {}", fleet.log_dir().display());
    } else {
        fleet.clean_up();
    }
    row
}
